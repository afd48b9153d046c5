//! The fine-tune against PyTorch + PEFT (fixtures from scripts/make_training_fixtures.py):
//! the same blocks, initial adapter and hyper-parameters must give the same losses,
//! gradient norms and final weights to 1e-4; and every trainable tensor must get a
//! gradient that agrees with finite differences.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{base, fixtures};
use mananera_model::tensors;
use mananera_training::tune::data;
use mananera_training::tune::lora::Adapter;
use mananera_training::tune::model::Model;
use mananera_training::tune::optim::{AdamW, AdamWParams, Schedule};
use mananera_training::tune::run::{Blocks, Stepped, evaluate, optimizer_step};
use serde_json::Value;

fn reference() -> Value {
    let path = fixtures().join("training/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn blocks(reference: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(reference["blocks"].clone()).unwrap()
}

fn adam(run: &Value) -> AdamWParams {
    AdamWParams {
        beta1: run["betas"][0].as_f64().unwrap(),
        beta2: run["betas"][1].as_f64().unwrap(),
        eps: run["eps"].as_f64().unwrap(),
        weight_decay: run["weight_decay"].as_f64().unwrap(),
    }
}

fn close(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, PyTorch {want} (|Δ| = {:e})",
        (got - want).abs()
    );
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs `steps` steps of `run` from `model`: step k takes `per_step` consecutive blocks,
/// split into micro-batches of `micro`.
fn replay_run(model: &Model, run: &Value, blocks: &[Vec<u32>], schedule: Schedule) -> Vec<Stepped> {
    let vars = model.trainable().into_iter().map(|(_, v)| v).collect();
    let mut optimizer = AdamW::new(vars, adam(run)).unwrap();
    let steps = run["steps"].as_array().unwrap().len();
    let accumulation = run["grad_accumulation"].as_u64().unwrap() as usize;
    let micro = run["micro_batch"].as_u64().unwrap() as usize;
    let per_step = accumulation * micro;
    let warmup = run["warmup_steps"].as_u64().unwrap_or(0) as usize;
    (0..steps)
        .map(|k| {
            let picked: Vec<usize> = (k * per_step..(k + 1) * per_step).collect();
            let groups: Vec<&[usize]> = picked.chunks(micro).collect();
            let lr = run["lr"].as_f64().unwrap() * schedule.factor(k, warmup, steps);
            close(
                &format!("lr of step {k}"),
                lr,
                run["steps"][k]["lr"].as_f64().unwrap(),
                1e-12,
            );
            optimizer_step(
                model,
                &mut optimizer,
                Blocks::scored(blocks),
                &groups,
                lr,
                run["max_grad_norm"].as_f64().unwrap(),
                0,
            )
            .unwrap()
        })
        .collect()
}

/// Each step's loss and pre-clip gradient norm equal the reference's to 1e-4.
fn assert_steps_match(stepped: &[Stepped], run: &Value) {
    for (k, (got, want)) in stepped
        .iter()
        .zip(run["steps"].as_array().unwrap())
        .enumerate()
    {
        close(
            &format!("loss of step {k}"),
            got.loss,
            want["loss"].as_f64().unwrap(),
            1e-4,
        );
        close(
            &format!("gradient norm of step {k}"),
            got.grad_norm,
            want["grad_norm"].as_f64().unwrap(),
            1e-4,
        );
    }
}

#[test]
fn packing_matches_the_reference_blocks() {
    let reference = reference();
    let tokenizer = tokenizers::Tokenizer::from_file(base().files.tokenizer).unwrap();
    let corpus = std::fs::read_to_string(fixtures().join("corpus_es.txt")).unwrap();
    let used = reference["documents_used"].as_u64().unwrap() as usize;
    let streams: Vec<Vec<u32>> = corpus
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(used)
        .map(|line| data::tokenize(&tokenizer, line, 2).unwrap())
        .collect();
    let streams: Vec<(usize, &[u32])> = streams.iter().map(|s| (0, s.as_slice())).collect();
    // One voice without a header: transformers' `group_texts`.
    let packed = data::pack(&streams, &[vec![]], 32);
    let expected = blocks(&reference);
    assert_eq!(&packed.blocks[..expected.len()], expected.as_slice());
}

#[test]
fn lora_steps_match_peft() {
    let reference = reference();
    let run = &reference["lora"];
    let base = base();
    let adapter = Adapter::load(&fixtures().join("training/lora-init"), &base.config).unwrap();
    assert_eq!(adapter.vars().len(), 16, "2 layers × 4 targets × (A, B)");
    let model = Model::lora(base.config.clone(), base.read_weights().unwrap(), adapter);
    let blocks = blocks(&reference);
    let validation = &blocks[24..32];
    close(
        "validation loss before",
        evaluate(&model, validation, &[]).unwrap(),
        run["val_loss_before"].as_f64().unwrap(),
        1e-4,
    );
    let stepped = replay_run(&model, run, &blocks, Schedule::Cosine);
    assert_steps_match(&stepped, run);
    let after =
        tensors::load(&fixtures().join("training/lora-after/adapter_model.safetensors")).unwrap();
    let ours = model.adapter().unwrap();
    for (name, var) in ours.vars() {
        let (module, which) = name.rsplit_once('.').unwrap();
        let key = format!("base_model.model.transformer.{module}.{which}.weight");
        let diff = max_diff(var.as_tensor(), &after[&key]);
        assert!(diff < 1e-4, "{key}: max |Δ| {diff:e} against PEFT");
    }
    close(
        "validation loss after",
        evaluate(&model, validation, &[]).unwrap(),
        run["val_loss_after"].as_f64().unwrap(),
        1e-4,
    );
}

#[test]
fn saved_adapters_round_trip_in_peft_layout() {
    let base = base();
    let dir = tempfile::tempdir().unwrap();
    let adapter = Adapter::load(&fixtures().join("training/lora-after"), &base.config).unwrap();
    adapter
        .save(dir.path(), "tests/fixtures/models/tiny-bloom-4h")
        .unwrap();
    let ours = tensors::load(&dir.path().join("adapter_model.safetensors")).unwrap();
    let theirs =
        tensors::load(&fixtures().join("training/lora-after/adapter_model.safetensors")).unwrap();
    let mut names: Vec<_> = ours.keys().collect();
    names.sort();
    let mut expected: Vec<_> = theirs.keys().collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, tensor) in &ours {
        assert_eq!(max_diff(tensor, &theirs[name]), 0.0, "{name}");
    }
    let header = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let size = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let meta: Value = serde_json::from_slice(&header[8..8 + size]).unwrap();
    assert_eq!(meta["__metadata__"]["format"], "pt");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["task_type"], "CAUSAL_LM");
}

#[test]
fn full_fine_tune_steps_match_pytorch() {
    let reference = reference();
    let run = &reference["full"];
    let base = base();
    let model = Model::full(base.config.clone(), base.read_weights().unwrap()).unwrap();
    let stepped = replay_run(&model, run, &blocks(&reference), Schedule::Constant);
    assert_steps_match(&stepped, run);
    let after = tensors::load(&fixtures().join("training/full-after.safetensors")).unwrap();
    // Adam's first steps move each weight by about ±lr whatever the size of its gradient
    // (m̂/√v̂ = sign(g) at step 1). Where the true gradient is 0 (the key bias, which softmax
    // ignores) or nearly so, both frameworks hold rounding noise, and the noise's sign picks
    // the direction. So: every weight within 1e-4 except such entries, which must be rare
    // (< 0.1 % of a tensor, the key bias aside) and still within Adam's largest possible
    // move (2 steps × lr).
    let lr = run["lr"].as_f64().unwrap() as f32;
    for (name, var) in model.trainable() {
        let ours = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs = after[&name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diffs: Vec<f32> = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let outliers = diffs.iter().filter(|&&d| d >= 1e-4).count();
        let allowed = if name.ends_with("query_key_value.bias") {
            diffs.len() / 3
        } else {
            diffs.len() / 1000
        };
        let worst = diffs.iter().copied().fold(0f32, f32::max);
        assert!(
            outliers <= allowed && worst <= 2.0 * lr + 1e-6,
            "{name}: {outliers} of {} entries differ by ≥ 1e-4 (worst {worst:e}) from PyTorch",
            diffs.len()
        );
    }
}

/// Central differences on a few entries of every trainable tensor agree with backward,
/// and every trainable tensor's gradient is non-zero (nothing silently drops gradients).
#[test]
fn gradients_agree_with_finite_differences() {
    let base = base();
    let reference = reference();
    let block = &blocks(&reference)[..2];
    let ids = Tensor::new(
        block.iter().flatten().copied().collect::<Vec<u32>>(),
        &Device::Cpu,
    )
    .unwrap()
    .reshape((2, 32))
    .unwrap();
    // LoRA after training (non-zero A and B), then every base weight.
    let lora = Model::lora(
        base.config.clone(),
        base.read_weights().unwrap(),
        Adapter::load(&fixtures().join("training/lora-after"), &base.config).unwrap(),
    );
    let full = Model::full(base.config.clone(), base.read_weights().unwrap()).unwrap();
    for model in [&lora, &full] {
        let trainable = model.trainable();
        let grads = model.loss(&ids, None).unwrap().backward().unwrap();
        for (name, var) in &trainable {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} got no gradient"));
            let values = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (index, &largest) = values
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap();
            assert!(largest != 0.0, "{name}: the gradient is all zeros");
            let original = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let h = 1e-2f32.max(original[index].abs() * 1e-2);
            let loss_at = |delta: f32| {
                let mut moved = original.clone();
                moved[index] += delta;
                var.set(&Tensor::from_vec(moved, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let loss = model.loss(&ids, None).unwrap().to_scalar::<f32>().unwrap() as f64;
                var.set(&Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss
            };
            let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
            let relative = (numeric - largest as f64).abs() / (largest.abs() as f64).max(1e-3);
            assert!(
                relative < 0.05,
                "{name}[{index}]: backward {largest:e}, finite difference {numeric:e}"
            );
        }
    }
}

#[test]
fn adapters_for_another_model_are_refused() {
    let mut other = base().config;
    other.hidden_size = 128;
    other.n_head = 4;
    let error = Adapter::load(&fixtures().join("training/lora-init"), &other).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("does not fit this base model"),
        "{message}"
    );
    let missing = Adapter::load(Path::new("/nonexistent"), &base().config).unwrap_err();
    assert!(
        missing.to_string().contains("adapter_config.json"),
        "{missing}"
    );
}
