//! Training with the corpus vocabulary's trimmed head: its loss is exactly the full head's
//! softmax restricted to the kept tokens and renormalised (positions whose next token is not
//! kept are left out), for LoRA and full fine-tuning, and every trainable tensor still gets a
//! gradient.

mod common;

use candle_core::{D, Device, Tensor};
use common::{base, fixtures};
use mananera_training::tune::head::Vocabulary;
use mananera_training::tune::lora::Adapter;
use mananera_training::tune::model::Model;

/// A block of the tiny model's tokens, and a vocabulary that keeps most of its next tokens
/// (every id but multiples of 7) plus some unused ones.
fn block_and_vocabulary(vocab_size: usize) -> (Vec<u32>, Vocabulary) {
    let block: Vec<u32> = (0..48u32).map(|i| 4 + (i * 37) % 900).collect();
    let kept: Vec<u32> = (0..vocab_size as u32).filter(|id| id % 7 != 0).collect();
    (block, Vocabulary::new(kept, vocab_size).unwrap())
}

/// The full head's loss restricted to `vocabulary` and renormalised, from `model`'s logits.
fn restricted_loss(model: &Model, block: &[u32], vocabulary: &Vocabulary) -> f64 {
    let ids = Tensor::new(block, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.logits(&ids).unwrap().squeeze(0).unwrap();
    let kept = Tensor::new(vocabulary.ids(), &Device::Cpu).unwrap();
    let restricted = logits.index_select(&kept, 1).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&restricted, D::Minus1).unwrap();
    let log_probs = log_probs.to_vec2::<f32>().unwrap();
    let mut sum = 0.0;
    let mut count = 0;
    for (i, &next) in block[1..].iter().enumerate() {
        if let Some(column) = vocabulary.column(next) {
            sum -= log_probs[i][column as usize] as f64;
            count += 1;
        }
    }
    assert!(count > 0 && count < block.len() - 1, "{count} kept targets");
    sum / count as f64
}

fn check(model: Model, vocabulary: Vocabulary, block: &[u32]) {
    let want = restricted_loss(&model, block, &vocabulary);
    let full = {
        let ids = Tensor::new(block, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model.loss(&ids, None).unwrap().to_scalar::<f32>().unwrap() as f64
    };
    let model = model.with_vocabulary(vocabulary).unwrap();
    let ids = Tensor::new(block, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let loss = model.loss(&ids, None).unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - want).abs() < 1e-5,
        "trimmed {got} vs restricted {want}"
    );
    // The full head spreads probability over more tokens: a trimmed loss is not the same
    // number by accident.
    assert!((got - full).abs() > 1e-3, "trimmed {got} vs full {full}");
    let eval = model
        .eval_loss(&ids, &[])
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((eval - got).abs() < 1e-6, "eval {eval} vs {got}");
    let grads = loss.backward().unwrap();
    for (name, var) in model.trainable() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm² {norm}"
        );
    }
}

#[test]
fn the_trimmed_lora_loss_is_the_restricted_softmax_and_trains_every_adapter_tensor() {
    let base = base();
    let (block, vocabulary) = block_and_vocabulary(base.config.vocab_size);
    // PEFT's trained adapter: B is not zero, so both A and B get gradients.
    let adapter = Adapter::load(&fixtures().join("training/lora-after"), &base.config).unwrap();
    let model = Model::lora(base.config.clone(), base.read_weights().unwrap(), adapter);
    check(model, vocabulary, &block);
}

#[test]
fn the_trimmed_full_fine_tune_loss_is_the_restricted_softmax_and_trains_every_weight() {
    let base = base();
    let (block, vocabulary) = block_and_vocabulary(base.config.vocab_size);
    let model = Model::full(base.config.clone(), base.read_weights().unwrap()).unwrap();
    check(model, vocabulary, &block);
}

#[test]
fn a_vocabulary_must_be_sorted_distinct_and_inside_the_model() {
    for (ids, wanted) in [
        (vec![], "keeps no token"),
        (vec![3, 2], "not sorted"),
        (vec![2, 2], "not sorted"),
        (vec![1, 5000], "outside this model"),
    ] {
        let error = Vocabulary::new(ids, 1024).unwrap_err().to_string();
        assert!(error.contains(wanted), "{error}");
    }
}
