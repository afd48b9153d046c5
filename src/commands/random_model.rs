//! `mananera random-model OUT`: writes a checkpoint directory with random weights (bf16) and a
//! word-level tokenizer of the same vocabulary, in bigscience/bloom-560m's shape unless told
//! otherwise. For benchmarks of the daemon without the real model's download, and for tests
//! that need a model slower than the tiny fixtures. Its speeches are nonsense.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

use crate::cli::{Failure, Format};
use crate::engine::bloom::BloomConfig;
use crate::engine::weights::Weights;

/// The shape to write.
#[derive(Debug, clap::Args)]
pub struct RandomModelArgs {
    /// Directory to create (must not exist or be empty).
    pub out: std::path::PathBuf,
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    #[arg(long, default_value_t = 24)]
    pub layers: usize,
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    #[arg(long, default_value_t = 250_880)]
    pub vocab: usize,
}

/// Writes `config.json`, `tokenizer.json` and `model.safetensors` into `args.out`.
pub fn run(args: &RandomModelArgs, format: Format) -> Result<(), Failure> {
    let config = BloomConfig {
        vocab_size: args.vocab,
        hidden_size: args.hidden,
        n_layer: args.layers,
        n_head: args.heads,
        ..BloomConfig::bloom_560m()
    };
    config.validate().map_err(Failure::usage)?;
    if args.vocab < 8 {
        return Err(Failure::usage("--vocab must be at least 8"));
    }
    let out = &args.out;
    if out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(Failure::usage(format!(
            "{} is not empty: choose a new directory",
            out.display()
        )));
    }
    let io = |what: &str, e: &dyn std::fmt::Display| Failure {
        code: 1,
        message: format!("{}: cannot write {what}: {e}", out.display()),
    };
    std::fs::create_dir_all(out).map_err(|e| io("the directory", &e))?;
    let weights = random_weights(&config).map_err(|e| io("the weights", &e))?;
    candle_core::safetensors::save(&weights, out.join("model.safetensors"))
        .map_err(|e| io("model.safetensors", &e))?;
    let json = serde_json::to_string_pretty(&config).map_err(|e| io("config.json", &e))?;
    std::fs::write(out.join("config.json"), json).map_err(|e| io("config.json", &e))?;
    word_tokenizer(args.vocab)
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| io("tokenizer.json", &e))?;
    let parameters: usize = weights.values().map(Tensor::elem_count).sum();
    match format {
        Format::Text => println!("{}: {parameters} random parameters", out.display()),
        _ => super::print_json(&serde_json::json!({
            "dir": out, "parameters": parameters, "config": config,
        }))?,
    }
    Ok(())
}

/// Every tensor a BLOOM checkpoint holds (tied head), drawn like transformers' initialisation.
fn random_weights(c: &BloomConfig) -> crate::engine::Result<HashMap<String, Tensor>> {
    let (v, h) = (c.vocab_size, c.hidden_size);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("word_embeddings.weight".into(), vec![v, h]),
        ("word_embeddings_layernorm.weight".into(), vec![h]),
        ("word_embeddings_layernorm.bias".into(), vec![h]),
        ("ln_f.weight".into(), vec![h]),
        ("ln_f.bias".into(), vec![h]),
    ];
    for i in 0..c.n_layer {
        let layer: [(&str, Vec<usize>); 12] = [
            ("input_layernorm.weight", vec![h]),
            ("input_layernorm.bias", vec![h]),
            ("self_attention.query_key_value.weight", vec![3 * h, h]),
            ("self_attention.query_key_value.bias", vec![3 * h]),
            ("self_attention.dense.weight", vec![h, h]),
            ("self_attention.dense.bias", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("post_attention_layernorm.bias", vec![h]),
            ("mlp.dense_h_to_4h.weight", vec![4 * h, h]),
            ("mlp.dense_h_to_4h.bias", vec![4 * h]),
            ("mlp.dense_4h_to_h.weight", vec![h, 4 * h]),
            ("mlp.dense_4h_to_h.bias", vec![h]),
        ];
        shapes.extend(layer.map(|(n, s)| (format!("h.{i}.{n}"), s)));
    }
    let random = Weights::random(&Device::Cpu);
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let t = random.get(&name, &shape)?.to_dtype(DType::BF16)?;
            Ok((name, t))
        })
        .collect()
}

/// A word-level tokenizer with `vocab` entries: BLOOM's four special tokens, then `w4`, `w5`…
/// Text it does not know maps to `<unk>`; decoding joins words with spaces.
fn word_tokenizer(vocab: usize) -> Tokenizer {
    let mut words: HashMap<String, u32> = ["<unk>", "<s>", "</s>", "<pad>"]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    words.extend((4..vocab as u32).map(|i| (format!("w{i}"), i)));
    let model = WordLevel::builder()
        .vocab(words.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .expect("a word-level vocabulary with its unknown token is valid");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer
}
