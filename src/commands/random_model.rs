//! `mananera random-model OUT`: writes a checkpoint directory with random weights (bf16) and a
//! word-level tokenizer of the same vocabulary, in bigscience/bloom-560m's shape unless told
//! otherwise. For benchmarks of the daemon without the real model's download, and for tests
//! that need a model slower than the tiny fixtures. Its speeches are nonsense.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

use crate::commands::{Context, Format, Run};
use crate::exit::{Exit, Failure};
use mananera_model::BloomConfig;

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
    /// Seed of the weights: the same seed and shape always write the same model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
        exit: Exit::Internal,
        message: format!("{}: cannot write {what}: {e}", out.display()),
    };
    std::fs::create_dir_all(out).map_err(|e| io("the directory", &e))?;
    let weights = random_weights(&config, args.seed).map_err(|e| io("the weights", &e))?;
    candle_core::safetensors::save(&weights, out.join(mananera_model::checkpoint::WEIGHTS_FILE))
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
            "dir": out, "parameters": parameters, "seed": args.seed, "config": config,
        }))?,
    }
    Ok(())
}

/// Every tensor a BLOOM checkpoint holds (tied head), drawn like transformers'
/// initialisation (the engine's and training's random draw), stored as bf16.
fn random_weights(config: &BloomConfig, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    mananera_model::random::weights(config, seed)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::BF16)?)))
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

impl Run for RandomModelArgs {
    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(self, ctx.format)
    }
}
