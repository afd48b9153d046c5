//! Two voices through the real binary: transcripts of two presidents with distinct
//! vocabularies are imported, trained on with each speaker's header before their blocks, and
//! the trained model then scores each president's held-out words better in their own voice.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{json, model_dir, stderr};
use serde_json::Value;

/// Each president's words: a generation in their voice should prefer them.
const AMLO_WORDS: &[&str] = &[
    "petróleo",
    "refinería",
    "Pemex",
    "soberanía",
    "gasolina",
    "Dos",
    "Bocas",
    "conservadores",
    "corrupción",
    "pueblo",
    "bienestar",
    "transformación",
];
const SHEINBAUM_WORDS: &[&str] = &[
    "agua",
    "ciencia",
    "mujeres",
    "innovación",
    "universidades",
    "becas",
    "vivienda",
    "salud",
    "energías",
    "renovables",
    "Olinia",
    "humanismo",
];

/// `count` sentences of `words`, from a seeded generator.
fn sentences(words: &[&str], count: usize, seed: u64) -> Vec<String> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n
    };
    (0..count)
        .map(|_| {
            let len = 6 + next(5);
            let line: Vec<&str> = (0..len).map(|_| words[next(words.len())]).collect();
            format!("{}.", line.join(" "))
        })
        .collect()
}

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mananera"));
        let set = |key: &str, value: String| ["--set".to_string(), format!("{key}={value}")];
        cmd.args(set(
            "corpus.dir",
            format!("{:?}", self.path("corpus").display().to_string()),
        ))
        .args(set(
            "training.dir",
            format!("{:?}", self.path("versions").display().to_string()),
        ))
        .args(set("training.method", "\"full\"".into()))
        .args(set("training.block_size", "64".into()))
        .args(set("training.batch_size", "2".into()))
        .args(set("training.grad_accumulation", "1".into()))
        .args(set("training.epochs", "4".into()))
        .args(set("training.learning_rate", "0.003".into()))
        .args(set("training.warmup_steps", "2".into()))
        .args(set("training.tolerance", "0.5".into()))
        .args(args)
        .env_remove("MANANERA_CONFIG")
        .env("XDG_DATA_HOME", self.path("data"))
        .env("MANANERA_LOG", "info")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run mananera")
    }

    /// Writes `days` transcripts of each president in the dataset's plain-text layout.
    fn import(&self, days: usize) {
        let source = self.path("incoming");
        let presidents = [
            (
                "2023",
                "del presidente Andrés Manuel López Obrador",
                "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
                AMLO_WORDS,
            ),
            (
                "2025",
                "de la presidenta Claudia Sheinbaum Pardo",
                "PRESIDENTA CLAUDIA SHEINBAUM PARDO",
                SHEINBAUM_WORDS,
            ),
        ];
        for (p, (year, title, label, words)) in presidents.into_iter().enumerate() {
            let month = source.join("articulos").join(year).join("marzo");
            std::fs::create_dir_all(&month).unwrap();
            for day in 0..days {
                let body = sentences(words, 30, (p * 100 + day) as u64).join("\n");
                let text = format!(
                    "Versión estenográfica de la conferencia de prensa matutina {title}\n\
                     Presidencia de la República\n{:02} de marzo de {year}\n---\n{label}\n{body}\n",
                    day + 1
                );
                let name = format!("{:02}--version-estenografica-{day}.txt", day + 1);
                std::fs::write(month.join(name), text).unwrap();
            }
        }
        let out = self.run(&["corpus", "import", source.to_str().unwrap()]);
        assert!(out.status.success(), "import: {}", stderr(&out));
    }

    /// Perplexity of `file` in `voice` under the current version.
    fn perplexity(&self, file: &Path, voice: &str) -> f64 {
        let model = model_dir("tiny-bloom-4h");
        let out = self.run(&[
            "--format",
            "json",
            "eval",
            file.to_str().unwrap(),
            "--voice",
            voice,
            "--model",
            model.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "eval: {}", stderr(&out));
        json(&out)["perplexity"].as_f64().unwrap()
    }
}

#[test]
fn each_voice_scores_its_own_presidents_words_better() {
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
    };
    ws.import(5);
    let model = model_dir("tiny-bloom-4h");
    let out = ws.run(&[
        "--format",
        "json",
        "train",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "train: {}", stderr(&out));
    let summary = json(&out);
    let version = &summary["version"];
    assert_eq!(summary["outcome"], "accepted", "{summary}");
    // Both voices trained and validated, each with its perplexity before and after.
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(
            ws.path("versions")
                .join(version["id"].as_str().unwrap())
                .join("version.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for voice in ["amlo", "sheinbaum"] {
        let m = &record["metrics"]["voices"][voice];
        assert!(m["train_blocks"].as_u64().unwrap() > 0, "{voice}: {m}");
        assert!(m["validation_blocks"].as_u64().unwrap() > 0, "{voice}: {m}");
        assert!(
            m["perplexity_after"].as_f64().unwrap() < m["perplexity_before"].as_f64().unwrap(),
            "{voice}: {m}"
        );
    }

    let held_out = |name: &str, words: &[&str]| {
        let path = ws.path(name);
        std::fs::write(&path, sentences(words, 1, 9_999).join(" ")).unwrap();
        path
    };
    let amlo_text = held_out("amlo.txt", AMLO_WORDS);
    let sheinbaum_text = held_out("sheinbaum.txt", SHEINBAUM_WORDS);
    let (a_a, a_s) = (
        ws.perplexity(&amlo_text, "amlo"),
        ws.perplexity(&amlo_text, "sheinbaum"),
    );
    let (s_s, s_a) = (
        ws.perplexity(&sheinbaum_text, "sheinbaum"),
        ws.perplexity(&sheinbaum_text, "amlo"),
    );
    eprintln!("AMLO's words: {a_a:.3} in his voice, {a_s:.3} in hers");
    eprintln!("Sheinbaum's words: {s_s:.3} in her voice, {s_a:.3} in his");
    // A log-likelihood margin: at least 20 % lower perplexity in the speaker's own voice.
    assert!(a_a < a_s * 0.8, "AMLO's words: {a_a} (his voice) vs {a_s}");
    assert!(
        s_s < s_a * 0.8,
        "Sheinbaum's words: {s_s} (her voice) vs {s_a}"
    );

    // An unknown voice is refused with the list.
    let out = ws.run(&[
        "eval",
        amlo_text.to_str().unwrap(),
        "--voice",
        "fox",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("amlo, sheinbaum"), "{}", stderr(&out));

    // `generate --voice` writes after the voice's header; an unknown one is refused, naming
    // the flag.
    let generate = |voice: &str| {
        ws.run(&[
            "--format",
            "json",
            "generate",
            "--voice",
            voice,
            "--temperature",
            "0",
            "--max-new-tokens",
            "5",
            "--model",
            model.to_str().unwrap(),
            "petróleo",
        ])
    };
    let (his, hers) = (generate("amlo"), generate("sheinbaum"));
    assert!(
        his.status.success() && hers.status.success(),
        "{}",
        stderr(&hers)
    );
    let prompt_tokens = |out: &Output| json(out)["timings"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens(&his) > 1 && prompt_tokens(&hers) > 1);
    let fox = generate("fox");
    assert_eq!(fox.status.code(), Some(2), "{}", stderr(&fox));
    assert!(
        stderr(&fox).contains("--voice") && stderr(&fox).contains("amlo, sheinbaum"),
        "{}",
        stderr(&fox)
    );
}

#[test]
fn serve_refuses_a_voice_whose_labels_never_matched() {
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
    };
    ws.import(2);
    // A third speaker whose label no transcript has, on every day the corpus holds.
    let config = ws.path("config.toml");
    std::fs::write(
        &config,
        r#"
[[corpus.speakers]]
name = "Andrés Manuel López Obrador"
voice = "amlo"
header = "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR:\n"
until = "2024-09-30"
labels = ["PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR"]

[[corpus.speakers]]
name = "Marcelo Ebrard Casaubón"
voice = "ebrard"
header = "MARCELO EBRARD CASAUBÓN:\n"
labels = ["MARCELO EBRARD CASAUBÓN"]
"#,
    )
    .unwrap();
    let out = ws.run(&[
        "--config",
        config.to_str().unwrap(),
        "--set",
        "serve.listen=\"127.0.0.1:0\"",
        "serve",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("voice \"ebrard\" has no training data") && err.contains("Fix `labels`"),
        "{err}"
    );
}
