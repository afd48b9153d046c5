//! Shared test helpers: fixture paths, the recorded transformers reference, engine loading.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Output;

use mananera_engine::finetuned::Choice;
use mananera_engine::{Engine, EngineOptions, Quantization};
use mananera_model::checkpoint::ModelSource;
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What a finished `mananera` command wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `--format json` command's stdout, parsed (both streams shown when it is not JSON).
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    pub config: RefConfig,
    pub eval: Eval,
    pub greedy: Vec<GreedyCase>,
    pub greedy_penalty: Vec<GreedyCase>,
    pub batch: Batch,
}

#[derive(Debug, Deserialize)]
pub struct RefConfig {
    pub n_head: usize,
    pub post_layernorm: bool,
    pub storage_dtype: String,
}

#[derive(Debug, Deserialize)]
pub struct Eval {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct GreedyCase {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub new_text: String,
}

#[derive(Debug, Deserialize)]
pub struct Batch {
    pub prompts: Vec<String>,
    pub new_ids: Vec<Vec<u32>>,
}

/// Every model under tests/fixtures/models with its reference, sorted by name.
pub fn reference_models() -> Vec<(String, Reference)> {
    let dir = fixtures().join("reference");
    let mut out: Vec<(String, Reference)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (
                name,
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 3,
        "expected the fixture models, found {}",
        out.len()
    );
    out
}

pub fn options(name: &str, quantization: Quantization) -> EngineOptions {
    EngineOptions {
        source: ModelSource {
            model: model_dir(name).to_string_lossy().into_owned(),
            revision: "main".into(),
            cache_dir: std::env::temp_dir().join("mananera-test-hub"),
            offline: true,
        },
        quantization,
        max_context: 2048,
        vocabulary: None,
        version: Choice::Base,
        versions_dir: PathBuf::new(),
    }
}

pub fn engine(name: &str) -> Engine {
    Engine::load(&options(name, Quantization::None)).unwrap_or_else(|e| panic!("{name}: {e}"))
}
