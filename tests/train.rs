//! `mananera train`, `versions`, `export --merge` and serving the result, through the real
//! binary: a corpus imported from transcript files, signals and kill -9 mid-run, and bad
//! input that leaves the current version alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, json, model_dir, stderr};
use serde_json::Value;

/// A corpus directory, a versions directory and the settings that point at them.
struct Workspace {
    dir: tempfile::TempDir,
}

const MONTH: &str = "marzo";

impl Workspace {
    /// `days` transcripts (40 corpus lines each) imported into a fresh corpus.
    fn new(days: usize) -> Self {
        let ws = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        ws.add_days(0..days);
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes transcripts for `days` in the "mananeras" plain-text layout and imports them.
    fn add_days(&self, days: std::ops::Range<usize>) {
        let corpus = std::fs::read_to_string(fixtures().join("corpus_es.txt")).unwrap();
        let lines: Vec<&str> = corpus.lines().filter(|l| !l.trim().is_empty()).collect();
        let source = self.path("incoming");
        let _ = std::fs::remove_dir_all(&source);
        let month = source.join("articulos/2023").join(MONTH);
        std::fs::create_dir_all(&month).unwrap();
        for day in days {
            let body = lines[(day * 40) % (lines.len() - 40)..][..40].join("\n");
            let text = format!(
                "Versión estenográfica de la conferencia de prensa matutina del presidente Andrés Manuel López Obrador\n\
                 Presidencia de la República\n{:02} de {MONTH} de 2023\n---\n\
                 PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR\n{body}\n",
                day + 1
            );
            let name = format!(
                "{:02}--version-estenografica-de-la-conferencia-{day}.txt",
                day + 1
            );
            std::fs::write(month.join(name), text).unwrap();
        }
        let out = self.run(&["corpus", "import", source.to_str().unwrap()]);
        assert!(out.status.success(), "import: {}", stderr(&out));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mananera"));
        cmd.args([
            "--set",
            &format!("corpus.dir={:?}", self.path("corpus").display().to_string()),
        ])
        .args([
            "--set",
            &format!(
                "training.dir={:?}",
                self.path("versions").display().to_string()
            ),
        ])
        .args([
            "--set",
            "training.block_size=64",
            "--set",
            "training.batch_size=2",
            "--set",
            "training.grad_accumulation=2",
            "--set",
            "training.learning_rate=0.002",
            "--set",
            "training.tolerance=0.5",
            "--set",
            "training.max_validation_blocks=8",
        ])
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

    fn train(&self, extra: &[&str]) -> Output {
        let model = model_dir("tiny-bloom-4h");
        let mut args = vec![
            "--format",
            "json",
            "train",
            "--model",
            model.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn current(&self) -> Option<String> {
        std::fs::read_to_string(self.path("versions/current"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Perplexity of the eval fixture under `model` with `version` served on top.
    fn perplexity(&self, model: &Path, version: &str) -> f64 {
        let eval = fixtures().join("eval_es.txt");
        let out = self.run(&[
            "--format",
            "json",
            "--set",
            &format!("model.version={version:?}"),
            "eval",
            eval.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "eval: {}", stderr(&out));
        json(&out)["perplexity"].as_f64().unwrap()
    }
}

fn assert_fails(out: &Output, code: i32, phrase: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(phrase), "expected {phrase:?} in: {err}");
}

#[test]
fn a_trained_version_is_served_and_exports_as_a_merged_checkpoint() {
    let ws = Workspace::new(5);
    let out = ws.train(&["--epochs", "2"]);
    assert!(out.status.success(), "train: {}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["outcome"], "accepted", "{summary}");
    let id = summary["version"]["id"].as_str().unwrap().to_string();
    assert_eq!(ws.current().as_deref(), Some(id.as_str()));
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path("versions").join(&id).join("metrics.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "validation_loss_before",
        "validation_loss_after",
        "perplexity_before",
        "perplexity_after",
        "wall_s",
        "tokens_per_s",
    ] {
        assert!(
            metrics[key].as_f64().is_some_and(f64::is_finite),
            "{key} in {metrics}"
        );
    }
    assert!(metrics["steps"].as_u64().unwrap() > 0);

    let listed = json(&ws.run(&["--format", "json", "versions"]));
    assert_eq!(listed["current"], id.as_str());
    assert_eq!(listed["versions"][0]["status"], "accepted");

    // Served: the fine-tuned model scores text differently from the base.
    let base_model = model_dir("tiny-bloom-4h");
    let tuned = ws.perplexity(&base_model, "current");
    let base = ws.perplexity(&base_model, "base");
    assert!(
        (tuned - base).abs() > 1e-6,
        "the version changed nothing: {tuned} vs {base}"
    );

    // Exported merged, loaded as a plain checkpoint: the same model.
    let merged = ws.path("merged");
    let export = || {
        ws.run(&[
            "export",
            "--merge",
            &id,
            merged.to_str().unwrap(),
            "--model",
            base_model.to_str().unwrap(),
        ])
    };
    let out = export();
    assert!(out.status.success(), "export: {}", stderr(&out));
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            merged.join(file).is_file(),
            "{file} missing from the export"
        );
    }
    let header = std::fs::read(merged.join("model.safetensors")).unwrap();
    let size = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let meta: Value = serde_json::from_slice(&header[8..8 + size]).unwrap();
    assert_eq!(meta["__metadata__"]["format"], "pt");
    assert!(
        meta.get("h.0.self_attention.query_key_value.weight")
            .is_some()
    );
    let exported = ws.perplexity(&merged, "base");
    assert!(
        (exported - tuned).abs() / tuned < 1e-4,
        "merged {exported} vs served {tuned}"
    );
    // Exporting over an existing directory is refused.
    let again = export();
    assert_fails(&again, 2, "already exists");

    // The same version as one GGUF file for llama.cpp: its header and every tensor, the
    // fused QKV in llama.cpp's order (unit-tested in mananera-model; the logprobs of a
    // llama-server serving such a file equal mananera's, see README).
    let gguf = ws.path("v.gguf");
    let export_gguf = |model: &Path, version: &str| {
        ws.run(&[
            "export",
            "--gguf",
            "--gguf-type",
            "f32",
            version,
            gguf.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
    };
    let out = export_gguf(&base_model, &id);
    assert!(out.status.success(), "export --gguf: {}", stderr(&out));
    let bytes = std::fs::read(&gguf).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    let tensors = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let layers = 2;
    assert_eq!(tensors, 1 + 2 + 12 * layers + 2);
    assert!(
        bytes.windows(15).any(|w| w == b"blk.1.attn_qkv.")
            && bytes.windows(5).any(|w| w == b"bloom")
    );
    assert_fails(&export_gguf(&base_model, &id), 2, "already exists");
    // A checkpoint llama.cpp cannot run is refused, and nothing is left behind.
    std::fs::remove_file(&gguf).unwrap();
    let post_ln = model_dir("tiny-bloom-6h-postln");
    assert_fails(&export_gguf(&post_ln, "base"), 3, "llama.cpp cannot run it");
    assert!(!gguf.exists());
}

/// Waits until `path`'s text contains `needle`.
fn wait_for_log(path: &Path, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|log| log.contains(needle)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{needle:?} never appeared in {}", path.display());
}

fn spawn_logged(ws: &Workspace, args: &[&str], log: &Path) -> Child {
    let model = model_dir("tiny-bloom-4h");
    let mut all = vec![
        "--format",
        "json",
        "train",
        "--model",
        model.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    ws.command(&all)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn sigint_stops_at_a_step_and_resume_finishes_the_run() {
    let ws = Workspace::new(5);
    let log = ws.path("train.log");
    let child = spawn_logged(&ws, &["--max-steps", "400"], &log);
    wait_for_log(&log, "training started", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(130), "{log_text}");
    let summary = json(&out);
    assert_eq!(summary["outcome"], "stopped", "{summary}");
    let stopped_at = summary["step"].as_u64().unwrap();
    assert!(stopped_at < 400, "{summary}");
    assert!(ws.current().is_none(), "a stopped run makes no version");

    let out = ws.train(&["--resume"]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["version"]["metrics"]["steps"], 400, "{summary}");
    assert!(
        stderr(&out).contains(&format!("resuming a stopped run step={stopped_at}")),
        "{}",
        stderr(&out)
    );
    let nothing = ws.train(&["--resume"]);
    assert_fails(&nothing, 2, "no stopped run to resume");
}

#[test]
fn kill_9_at_any_instant_leaves_a_loadable_current_version() {
    let ws = Workspace::new(5);
    let started = Instant::now();
    let out = ws.train(&[]);
    let whole_run = started.elapsed();
    assert!(out.status.success(), "train: {}", stderr(&out));
    let model = model_dir("tiny-bloom-4h");
    // Kill points spread over a whole run, and dense near its end, where the version is saved.
    let fractions = (0..10)
        .map(|k| k as f64 / 10.0)
        .chain((0..8).map(|k| 0.84 + k as f64 * 0.02));
    for (round, fraction) in fractions.enumerate() {
        let log = ws.path(&format!("kill-{round}.log"));
        let mut child = spawn_logged(&ws, &[], &log);
        std::thread::sleep(whole_run.mul_f64(fraction));
        child.kill().unwrap();
        child.wait().unwrap();
        let current = ws.current().expect("a current version always exists");
        let dir = ws.path("versions").join(&current);
        for file in [
            "version.json",
            "metrics.json",
            "adapter_config.json",
            "adapter_model.safetensors",
        ] {
            assert!(
                dir.join(file).is_file(),
                "round {round}: current {current} lacks {file}"
            );
        }
        // Loadable: the daemon's engine serves it.
        ws.perplexity(&model, "current");
    }
    let listed = json(&ws.run(&["--format", "json", "versions"]));
    assert!(
        listed["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["id"].as_str().unwrap().starts_with('v'))
    );
    let out = ws.train(&[]);
    assert!(
        out.status.success(),
        "a run after the kills: {}",
        stderr(&out)
    );
    let leftovers: Vec<_> = std::fs::read_dir(ws.path("versions"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written versions were left behind: {leftovers:?}"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_touches_nothing() {
    let empty = Workspace::new(0);
    assert_fails(&empty.train(&[]), 2, "the corpus is empty");
    let ws = Workspace::new(4);
    assert_fails(
        &ws.train(&["--set", "training.lora_rank=0"]),
        2,
        "training.lora_rank is 0",
    );
    assert_fails(
        &ws.train(&["--set", "training.block_size=100000"]),
        2,
        "training.block_size",
    );
    assert_fails(&ws.train(&["--method", "adapter"]), 2, "training.method");
    assert_fails(&ws.train(&["--max-minutes", "0"]), 2, "not a time budget");
    assert_fails(&ws.train(&["--max-minutes", "-5"]), 2, "not a time budget");
    assert_fails(&ws.train(&["--max-tokens", "0"]), 2, "--max-tokens");
    assert_fails(
        &ws.train(&["--max-tokens", "100"]),
        2,
        "less than one optimizer step trains",
    );
    assert_fails(
        &ws.train(&["--set", "training.max_minutes=-1"]),
        2,
        "training.max_minutes is -1",
    );
    let out = ws.train(&[]);
    assert!(out.status.success(), "train: {}", stderr(&out));
    let current = ws.current().unwrap();
    // Another base model: the current adapter does not belong to it.
    let other = model_dir("tiny-bloom-6h-postln");
    let out = ws.run(&["train", "--incremental", "--model", other.to_str().unwrap()]);
    assert_fails(&out, 3, "was trained on base");
    let eval = fixtures().join("eval_es.txt");
    let out = ws.run(&[
        "eval",
        eval.to_str().unwrap(),
        "--model",
        other.to_str().unwrap(),
    ]);
    assert_fails(&out, 3, "model.version = \"base\"");
    assert_fails(
        &ws.run(&["export", "--merge", "v0099", ws.path("x").to_str().unwrap()]),
        2,
        "no version `v0099`",
    );
    assert_eq!(ws.current(), Some(current));
}

#[test]
fn a_time_budget_ends_the_run_mid_epoch_with_a_normal_version_and_leaves_a_backlog() {
    let ws = Workspace::new(8);
    // Far more steps than two seconds hold.
    let out = ws.train(&["--epochs", "1000", "--max-minutes", "0.03"]);
    assert!(out.status.success(), "train: {}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["outcome"], "accepted", "{summary:#}");
    let version = &summary["version"];
    let metrics = &version["metrics"];
    assert_eq!(metrics["budget_reached"], true, "{metrics:#}");
    let steps = metrics["steps"].as_u64().unwrap();
    assert!(steps > 0, "{metrics:#}");
    assert!(metrics["wall_s"].as_f64().unwrap() < 30.0, "{metrics:#}");
    // No checkpoint waits for --resume: the version is current and loads.
    assert!(!ws.path("versions/run").exists());
    assert_eq!(ws.current().as_deref(), version["id"].as_str());
    let model = model_dir("tiny-bloom-4h");
    let ppl = ws.perplexity(&model, "current");
    assert!(ppl.is_finite(), "{ppl}");
}
