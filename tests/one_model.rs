//! Serving and training describe BLOOM once (`mananera-model`) but compute it twice: the
//! engine with quantizable, KV-cached kernels, training with differentiable operations. Both
//! are pinned to transformers separately; here they are pinned to each other, on every
//! fixture model, with and without a LoRA adapter folded in.

mod common;

use candle_core::{DType, Tensor};
use common::{fixtures, model_dir, reference_models};
use mananera_engine::Quantization;
use mananera_engine::bloom::Bloom;
use mananera_engine::max_abs_diff;
use mananera_model::adapter::AdapterFiles;
use mananera_model::checkpoint::Checkpoint;
use mananera_model::weights::Weights;
use mananera_training::tune::lora::Adapter;
use mananera_training::tune::model::Model;

/// The engine's logits of `ids`, `[s, vocab]`, from `weights`.
fn engine_logits(weights: &Weights, checkpoint: &Checkpoint, ids: &[u32]) -> Tensor {
    let model = Bloom::load(weights, &checkpoint.config, Quantization::None, None).unwrap();
    let device = model.device();
    let t = Tensor::new(ids, device).unwrap().unsqueeze(0).unwrap();
    let mask = Tensor::ones((1, ids.len()), DType::U8, device).unwrap();
    let mut cache = model.new_cache();
    let hidden = model.forward(&t, &mask, &mut cache).unwrap();
    model.logits(&hidden).unwrap().squeeze(0).unwrap()
}

/// The training model's logits of `ids`, `[s, vocab]`.
fn training_logits(model: &Model, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.logits(&t).unwrap().squeeze(0).unwrap()
}

#[test]
fn the_engine_and_the_training_model_give_the_same_logits_on_every_fixture() {
    let references = reference_models();
    assert!(
        references.len() >= 3,
        "fixture models: {}",
        references.len()
    );
    for (name, reference) in references {
        let checkpoint = Checkpoint::local(&model_dir(&name)).unwrap();
        let ids = &reference.eval.token_ids[..reference.eval.token_ids.len().min(64)];
        let weights = Weights::open(&checkpoint.files.weights, &candle_core::Device::Cpu).unwrap();
        let served = engine_logits(&weights, &checkpoint, ids);
        let trained = Model::full(
            checkpoint.config.clone(),
            checkpoint.read_weights().unwrap(),
        )
        .unwrap();
        let diff = max_abs_diff(&served, &training_logits(&trained, ids));
        eprintln!("{name}: max |engine - training| logit = {diff:e}");
        // Two implementations of f32 arithmetic summing in different orders.
        assert!(
            diff < 1e-4,
            "{name}: engine and training logits differ by {diff}"
        );
        assert_eq!(served.dims(), [ids.len(), checkpoint.config.vocab_size]);
    }
}

#[test]
fn a_lora_adapter_gives_the_same_logits_folded_into_the_engine_and_trained_on_top() {
    let checkpoint = Checkpoint::local(&model_dir("tiny-bloom-4h")).unwrap();
    // PEFT's trained adapter for this base (its B is not zero, so it changes the logits).
    let adapter_dir = fixtures().join("training/lora-after");
    let ids: Vec<u32> = (5..45).collect();
    let mut weights = Weights::open(&checkpoint.files.weights, &candle_core::Device::Cpu).unwrap();
    let base = engine_logits(&weights, &checkpoint, &ids);
    weights.add_deltas(
        AdapterFiles::read(&adapter_dir, &checkpoint.config)
            .unwrap()
            .deltas()
            .unwrap(),
    );
    let served = engine_logits(&weights, &checkpoint, &ids);
    let trained = Model::lora(
        checkpoint.config.clone(),
        checkpoint.read_weights().unwrap(),
        Adapter::load(&adapter_dir, &checkpoint.config).unwrap(),
    );
    let diff = max_abs_diff(&served, &training_logits(&trained, &ids));
    eprintln!("tiny-bloom-4h + PEFT adapter: max |engine - training| logit = {diff:e}");
    assert!(diff < 1e-4, "adapted logits differ by {diff}");
    // The adapter matters, so the comparison above is not of two base models.
    let moved = max_abs_diff(&base, &served);
    assert!(moved > 1e-3, "the adapter moved the logits by only {moved}");
}
