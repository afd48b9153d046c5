//! The `mananera` binary end to end: output formats, and every bad input the engine issue
//! lists getting a clear message and a non-zero exit code (never a panic).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, model_dir, reference_models, stderr};

fn mananera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mananera"))
        .args(args)
        .env_remove("MANANERA_CONFIG")
        // No fine-tuned version of the developer's own is served on top of the fixtures.
        .env(
            "XDG_DATA_HOME",
            std::env::temp_dir().join("mananera-tests-no-versions"),
        )
        .env("MANANERA_LOG", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mananera")
}

/// Asserts a clean failure: the exit code, no panic, and every expected phrase in stderr.
fn assert_fails(out: &Output, code: i32, phrases: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for p in phrases {
        assert!(err.contains(p), "expected {p:?} in: {err}");
    }
}

fn copy_model(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

const GREEDY: &[&str] = &[
    "--temperature",
    "0",
    "--max-new-tokens",
    "12",
    "--max-words",
    "0",
];

#[test]
fn generate_json_reports_new_tokens_text_and_timings() {
    let model = model_dir("tiny-bloom-4h");
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "json",
        "El presidente",
    ];
    args.extend_from_slice(GREEDY);
    let out = mananera(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["token_ids"].as_array().unwrap().len() <= 12);
    assert!(json["text"].is_string());
    assert!(json["timings"]["decode_tokens_per_s"].is_number());

    // Text mode streams the same greedy text.
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "El presidente",
    ];
    args.extend_from_slice(GREEDY);
    let text = mananera(&args);
    assert_eq!(
        String::from_utf8(text.stdout)
            .unwrap()
            .trim_end_matches('\n'),
        json["text"].as_str().unwrap()
    );
}

#[test]
fn eval_json_gives_the_reference_logprobs() {
    let (name, reference) = reference_models().remove(0);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &reference.eval.text).unwrap();
    let model = model_dir(&name);
    // f32: the default (Q8_0) is close to the reference, not equal to it.
    let out = mananera(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--quantization",
        "none",
        "--format",
        "json",
        file.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logprobs: Vec<f32> = serde_json::from_value(json["logprobs"].clone()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(json["token_ids"].clone()).unwrap();
    assert_eq!(ids, reference.eval.token_ids);
    for (a, b) in logprobs.iter().zip(&reference.eval.logprobs) {
        assert!((a - b).abs() < 1e-4);
    }
    let text = mananera(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        file.path().to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8(text.stdout)
            .unwrap()
            .starts_with("perplexity ")
    );
}

#[test]
fn a_missing_model_directory_is_named() {
    let out = mananera(&["generate", "--model", "/nonexistent/bloom", "hola"]);
    assert_fails(
        &out,
        3,
        &["/nonexistent/bloom", "does not exist", "how to fix"],
    );
}

#[test]
fn a_truncated_safetensors_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_model("tiny-bloom-4h", dir.path());
    let weights = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = mananera(&["generate", "--model", dir.path().to_str().unwrap(), "hola"]);
    assert_fails(&out, 3, &["model.safetensors", "truncated or corrupt"]);
}

#[test]
fn a_config_that_does_not_match_the_weights_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_model("tiny-bloom-4h", dir.path());
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["hidden_size"] = serde_json::json!(128);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = mananera(&["generate", "--model", dir.path().to_str().unwrap(), "hola"]);
    assert_fails(&out, 3, &["has shape", "config.json"]);
}

#[test]
fn a_missing_tokenizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_model("tiny-bloom-4h", dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = mananera(&["generate", "--model", dir.path().to_str().unwrap(), "hola"]);
    assert_fails(&out, 3, &["tokenizer.json", "missing"]);
}

#[test]
fn a_missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_model("tiny-bloom-6h-postln", dir.path());
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("model-0000"))
        .expect("a sharded fixture");
    std::fs::remove_file(dir.path().join(&shard)).unwrap();
    let out = mananera(&["generate", "--model", dir.path().to_str().unwrap(), "hola"]);
    assert_fails(&out, 3, &[&shard, "missing"]);
}

#[test]
fn an_empty_prompt_is_rejected() {
    let model = model_dir("tiny-bloom-4h");
    let out = mananera(&["generate", "--model", model.to_str().unwrap(), "   "]);
    assert_fails(&out, 2, &["prompt is empty"]);
}

#[test]
fn a_prompt_longer_than_the_context_cap_is_rejected() {
    let model = model_dir("tiny-bloom-4h");
    let long = "la mañanera ".repeat(100);
    let out = mananera(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--set",
        "engine.max_context=32",
        &long,
    ]);
    assert_fails(&out, 2, &["max_context", "32"]);
}

#[test]
fn nonsense_sampling_values_are_rejected() {
    let model = model_dir("tiny-bloom-4h");
    let m = model.to_str().unwrap();
    let out = mananera(&["generate", "--model", m, "--temperature=-1", "hola"]);
    assert_fails(
        &out,
        2,
        &[
            "--temperature",
            "temperature must be 0 (greedy) or positive",
        ],
    );
    let out = mananera(&["generate", "--model", m, "--top-p", "1.5", "hola"]);
    assert_fails(&out, 2, &["--top-p", "top_p must be in (0, 1]"]);
    let out = mananera(&["generate", "--model", m, "--quantization", "q3", "hola"]);
    assert_fails(&out, 2, &["--quantization", "unknown variant `q3`", "q8_0"]);
    let out = Command::new(env!("CARGO_BIN_EXE_mananera"))
        .args(["generate", "--model", m, "hola"])
        .env("MANANERA_GENERATION_TOP_K", "many")
        .output()
        .unwrap();
    assert_fails(&out, 2, &["MANANERA_GENERATION_TOP_K"]);
}

#[test]
fn a_missing_config_file_or_eval_file_is_named() {
    let out = mananera(&["--config", "/nonexistent/config.toml", "config"]);
    assert_fails(&out, 2, &["/nonexistent/config.toml", "cannot read"]);
    let model = model_dir("tiny-bloom-4h");
    let out = mananera(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "/nonexistent/speech.txt",
    ]);
    assert_fails(&out, 2, &["/nonexistent/speech.txt"]);
}

#[test]
fn the_shipped_config_is_what_mananera_config_prints() {
    let out = mananera(&["config", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["model"]["id"], "bigscience/bloom-560m");
    assert!(fixtures().join("eval_es.txt").is_file());
}

#[test]
fn vocab_writes_a_trimmed_vocabulary_that_generate_uses() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.txt");
    let model = model_dir("tiny-bloom-4h");
    let corpus = fixtures().join("corpus_es.txt");
    let out = mananera(&[
        "vocab",
        "--model",
        model.to_str().unwrap(),
        "--output",
        vocab.to_str().unwrap(),
        "--format",
        "json",
        corpus.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = json["kept"].as_u64().unwrap();
    assert!(kept > 3 && kept < json["vocab_size"].as_u64().unwrap());
    assert_eq!(
        std::fs::read_to_string(&vocab)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count() as u64,
        kept
    );

    let setting = format!("engine.vocabulary={:?}", vocab.to_str().unwrap());
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--set",
        &setting,
        "El presidente",
    ];
    args.extend_from_slice(GREEDY);
    let out = mananera(&args);
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::write(&vocab, "5\n999999\n").unwrap();
    let out = mananera(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--set",
        &setting,
        "El presidente",
    ]);
    assert_fails(
        &out,
        2,
        &[
            "999999",
            "outside this model's vocabulary",
            "mananera vocab",
        ],
    );
}

#[test]
fn settings_on_both_sides_of_the_subcommand_are_all_applied() {
    let out = mananera(&[
        "--set",
        "corpus.chunk_chars=500",
        "--format",
        "json",
        "config",
        "--set",
        "training.seed=7",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["corpus"]["chunk_chars"], 500,
        "the setting before `config` was lost"
    );
    assert_eq!(config["training"]["seed"], 7);
}

#[test]
fn bench_train_refuses_a_head_it_cannot_build_before_building_anything() {
    for rows in ["2", "250881"] {
        let out = mananera(&["bench-train", "--methods", "lora", "--head-rows", rows]);
        assert_fails(&out, 2, &["--head-rows must be between 4 and 250880"]);
    }
}
