//! The engine serving a fine-tuned version: a PEFT adapter applied at load time must give
//! PEFT's merged model's log-probabilities, and a version made for another base is refused.

mod common;

use std::path::Path;

use common::{model_dir, options};
use mananera_engine::finetuned::Choice;
use mananera_engine::{Engine, Quantization};
use mananera_model::versions::{self, Method, Metrics, Status, Version};
use serde_json::Value;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A versions directory whose current version is PEFT's trained fixture adapter.
fn versions_with_peft_adapter(base_model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("v0001");
    std::fs::create_dir(&version).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(
            fixtures().join("training/lora-after").join(file),
            version.join(file),
        )
        .unwrap();
    }
    let record = Version {
        id: "v0001".into(),
        status: Status::Accepted,
        method: Method::Lora,
        parent: None,
        base_model: base_model.into(),
        base_version: "tiny-bloom-4h".into(),
        created: 0,
        transcripts: Vec::new(),
        new_transcripts: Vec::new(),
        validation: Vec::new(),
        metrics: Metrics {
            steps: 6,
            tokens: 0,
            train_blocks: 0,
            validation_blocks: 0,
            train_loss_first: 0.0,
            train_loss_last: 0.0,
            validation_loss_before: 0.0,
            validation_loss_after: 0.0,
            perplexity_before: 0.0,
            perplexity_after: 0.0,
            wall_s: 0.0,
            tokens_per_s: 0.0,
            data_window: (String::new(), String::new()),
            backlog: 0,
            budget_reached: false,
            voices: Default::default(),
            worse_voices: Vec::new(),
        },
        settings: Value::Null,
    };
    std::fs::write(version.join("version.json"), versions::pretty(&record)).unwrap();
    std::fs::write(dir.path().join("current"), "v0001\n").unwrap();
    dir
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("training/reference.json")).unwrap(),
    )
    .unwrap()
}

fn logprobs(engine: &Engine, block: &[u32]) -> Vec<f32> {
    engine.model().score(block, 512).unwrap()
}

#[test]
fn a_peft_adapter_is_served_as_peft_merges_it() {
    let reference = reference();
    let block: Vec<u32> = serde_json::from_value(reference["blocks"][0].clone()).unwrap();
    let model = model_dir("tiny-bloom-4h").to_string_lossy().into_owned();
    let versions = versions_with_peft_adapter(&model);
    for (choice, key) in [
        (Choice::Current, "merged_logprobs"),
        (Choice::Base, "base_logprobs"),
    ] {
        let mut opts = options("tiny-bloom-4h", Quantization::None);
        opts.version = choice.clone();
        opts.versions_dir = versions.path().to_path_buf();
        let engine = Engine::load(&opts).unwrap();
        let ours = logprobs(&engine, &block);
        let theirs: Vec<f32> = serde_json::from_value(reference["lora"][key].clone()).unwrap();
        assert_eq!(ours.len(), theirs.len());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{choice:?}: max |Δ log p| {worst:e} against PEFT"
        );
    }
    // The served version is part of the model version, so caches keyed on it move.
    let mut opts = options("tiny-bloom-4h", Quantization::None);
    opts.versions_dir = versions.path().to_path_buf();
    let base = mananera_engine::model_version(&opts).unwrap();
    opts.version = Choice::Current;
    let tuned = mananera_engine::model_version(&opts).unwrap();
    assert!(tuned.contains("+v0001-"), "{tuned}");
    assert_ne!(base, tuned);
}

#[test]
fn a_version_of_another_base_is_refused_with_the_fix() {
    let versions = versions_with_peft_adapter("bigscience/bloom-560m");
    let mut opts = options("tiny-bloom-4h", Quantization::None);
    opts.version = Choice::Current;
    opts.versions_dir = versions.path().to_path_buf();
    let message = Engine::load(&opts).err().unwrap().to_string();
    assert!(
        message.contains("fine-tuned from bigscience/bloom-560m"),
        "{message}"
    );
    assert!(message.contains("model.version = \"base\""), "{message}");
    // Same name, another shape: the adapter's tensors do not fit.
    let versions = versions_with_peft_adapter(&model_dir("tiny-bloom-12h-bf16").to_string_lossy());
    let mut opts = options("tiny-bloom-12h-bf16", Quantization::None);
    opts.version = Choice::Current;
    opts.versions_dir = versions.path().to_path_buf();
    let message = Engine::load(&opts).err().unwrap().to_string();
    assert!(
        message.contains("does not fit this base model"),
        "{message}"
    );
}
