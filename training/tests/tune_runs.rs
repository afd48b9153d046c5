//! Whole training runs on the tiny fixture model: memorising a small text, stopping and
//! resuming to the same weights, incremental runs, and bad input that leaves the current
//! version alone.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use common::{base, fixtures, job};
use mananera_model::adapter::LoraSpec;
use mananera_model::tensors;
use mananera_model::versions::{self, Status};
use mananera_training::tune::data::Document;
use mananera_training::tune::lora::Adapter;
use mananera_training::tune::model::Model;
use mananera_training::tune::optim::{AdamW, AdamWParams};
use mananera_training::tune::run::{Blocks, Event, Outcome, optimizer_step, train};
use mananera_training::tune::{Schedule, TrainError, TrainingConfig};

/// `count` transcripts of 40 corpus lines each, one a day from 2023-03-01.
fn documents(count: usize) -> Vec<Document> {
    let corpus = std::fs::read_to_string(fixtures().join("corpus_es.txt")).unwrap();
    let lines: Vec<&str> = corpus.lines().filter(|l| !l.trim().is_empty()).collect();
    (0..count)
        .map(|i| Document {
            id: format!("2023/03/{:02}-conferencia.txt", i + 1),
            date: format!("2023-03-{:02}", i + 1),
            voice: String::new(),
            text: lines[(i * 40) % lines.len()..][..40].join("\n"),
        })
        .collect()
}

fn settings() -> TrainingConfig {
    TrainingConfig {
        block_size: 64,
        batch_size: 2,
        grad_accumulation: 2,
        learning_rate: 2e-3,
        warmup_steps: 2,
        lora_rank: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.1,
        max_validation_blocks: 8,
        tolerance: 0.5,
        checkpoint_steps: 0,
        ..TrainingConfig::default()
    }
}

fn finished(outcome: Outcome) -> versions::Version {
    match outcome {
        Outcome::Finished(v) => *v,
        other => panic!("expected a finished run, got {other:?}"),
    }
}

fn adapter_tensors(dir: &std::path::Path) -> Vec<(String, Tensor)> {
    let mut all: Vec<_> = tensors::load(&dir.join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn a_small_text_is_memorised() {
    let base = base();
    let spec = LoraSpec {
        rank: 16,
        alpha: 32.0,
        dropout: 0.0,
        targets: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
            .map(String::from)
            .to_vec(),
    };
    let adapter = Adapter::init(&spec, &base.config, 1).unwrap();
    let model = Model::lora(base.config.clone(), base.read_weights().unwrap(), adapter);
    let tokenizer = tokenizers::Tokenizer::from_file(&base.files.tokenizer).unwrap();
    let text = "La refinería de Dos Bocas se termina en tiempo y con el presupuesto previsto.";
    let ids = mananera_training::tune::data::tokenize(&tokenizer, text, 2).unwrap();
    let vars = model.trainable().into_iter().map(|(_, v)| v).collect();
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut optimizer = AdamW::new(vars, params).unwrap();
    let blocks = vec![ids];
    let mut losses = Vec::new();
    for step in 0..120 {
        let lr = 1e-2 * Schedule::Constant.factor(step, 0, 120);
        let stepped = optimizer_step(
            &model,
            &mut optimizer,
            Blocks::scored(&blocks),
            &[&[0]],
            lr,
            1.0,
            0,
        )
        .unwrap();
        losses.push(stepped.loss);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        first > 2.0,
        "the base model should not know the sentence already: {first}"
    );
    assert!(
        last < 0.1,
        "the sentence was not memorised: loss {first} → {last}"
    );
    eprintln!("memorised: loss {first:.3} → {last:.4} in 120 steps");
}

#[test]
fn a_stopped_run_resumes_to_the_same_weights() {
    let docs = documents(6);
    let mut settings = settings();
    settings.max_steps = 8;
    let never = AtomicBool::new(false);
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = finished(
        train(
            &job(whole_dir.path(), settings.clone(), &never),
            &docs,
            &mut |_| {},
        )
        .unwrap(),
    );

    let split_dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let outcome = train(
        &job(split_dir.path(), settings.clone(), &stop),
        &docs,
        &mut |event| {
            if let Event::Step { step: 3, .. } = event {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(
        matches!(outcome, Outcome::Stopped { step: 3, total: 8 }),
        "{outcome:?}"
    );
    assert!(versions::current(split_dir.path()).unwrap().is_none());
    let never = AtomicBool::new(false);
    let mut resumed_job = job(split_dir.path(), TrainingConfig::default(), &never);
    resumed_job.resume = true;
    let mut first_step = None;
    let resumed = finished(
        train(&resumed_job, &[], &mut |event| {
            if let Event::Step { step, .. } = event {
                first_step.get_or_insert(step);
            }
        })
        .unwrap(),
    );
    assert_eq!(
        first_step,
        Some(4),
        "the resumed run must continue after step 3"
    );
    assert_eq!(resumed.metrics.steps, whole.metrics.steps);
    assert_eq!(
        resumed.metrics.validation_loss_before,
        whole.metrics.validation_loss_before
    );
    assert_eq!(
        resumed.metrics.train_loss_last,
        whole.metrics.train_loss_last
    );
    let a = adapter_tensors(&whole_dir.path().join(&whole.id));
    let b = adapter_tensors(&split_dir.path().join(&resumed.id));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let diff = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(
            diff.to_scalar::<f32>().unwrap(),
            0.0,
            "{name} differs after resuming"
        );
    }
    assert!(
        !split_dir.path().join(versions::RUN).exists(),
        "the checkpoint is removed once finished"
    );
}

#[test]
fn incremental_runs_train_on_what_is_new_and_record_it() {
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let mut settings = settings();
    settings.epochs = 2;
    let first = finished(
        train(
            &job(dir.path(), settings.clone(), &never),
            &documents(5),
            &mut |_| {},
        )
        .unwrap(),
    );
    assert_eq!(first.status, Status::Accepted, "{:?}", first.metrics);
    assert_eq!(versions::current(dir.path()).unwrap().unwrap().id, first.id);
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "metrics.json",
        "version.json",
    ] {
        assert!(
            dir.path().join(&first.id).join(file).is_file(),
            "{file} missing"
        );
    }
    assert!(
        first
            .validation
            .contains(&"2023/03/05-conferencia.txt".to_string())
    );
    assert!(
        first
            .transcripts
            .iter()
            .all(|t| !first.validation.contains(t)),
        "validation leaked into training"
    );

    let mut incremental = job(dir.path(), settings.clone(), &never);
    incremental.incremental = true;
    let second = finished(train(&incremental, &documents(7), &mut |_| {}).unwrap());
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    // Day 5 was held out yesterday; today days 5 and 6 are new to training and day 7 validates.
    assert!(
        second
            .new_transcripts
            .contains(&"2023/03/06-conferencia.txt".to_string()),
        "{:?}",
        second.new_transcripts
    );
    assert!(
        second
            .validation
            .contains(&"2023/03/07-conferencia.txt".to_string())
    );
    assert!(
        second
            .new_transcripts
            .iter()
            .all(|t| !first.transcripts.contains(t))
    );
    assert!(
        first
            .transcripts
            .iter()
            .all(|t| second.transcripts.contains(t))
    );
    assert!(
        second
            .transcripts
            .iter()
            .all(|t| !second.validation.contains(t))
    );

    let again = train(&incremental, &documents(7), &mut |_| {}).unwrap();
    assert!(matches!(again, Outcome::NothingNew { .. }), "{again:?}");
}

#[test]
fn bad_input_is_refused_and_the_current_version_stays() {
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let current = finished(
        train(
            &job(dir.path(), settings(), &never),
            &documents(4),
            &mut |_| {},
        )
        .unwrap(),
    );
    let current_file = std::fs::read(dir.path().join("current")).unwrap();
    let refuse = |settings: TrainingConfig, docs: &[Document], wanted: &str| {
        let error = train(&job(dir.path(), settings, &never), docs, &mut |_| {}).unwrap_err();
        assert!(
            error.to_string().contains(wanted),
            "expected `{wanted}` in: {error}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("current")).unwrap(),
            current_file
        );
        error
    };
    refuse(settings(), &[], "the corpus is empty");
    let short = vec![
        Document {
            id: "a".into(),
            date: "2023-01-01".into(),
            voice: String::new(),
            text: "Buenos días.".into(),
        },
        Document {
            id: "b".into(),
            date: "2023-01-02".into(),
            voice: String::new(),
            text: "Buenas tardes.".into(),
        },
    ];
    refuse(settings(), &short, "fewer than one block");
    refuse(settings(), &documents(1), "at least 2");
    refuse(
        TrainingConfig {
            lora_rank: 0,
            ..settings()
        },
        &documents(4),
        "lora_rank is 0",
    );
    refuse(
        TrainingConfig {
            block_size: 100_000,
            ..settings()
        },
        &documents(4),
        "block_size",
    );
    refuse(
        TrainingConfig {
            lora_targets: vec!["mlp".into()],
            ..settings()
        },
        &documents(4),
        "lora_targets",
    );
    // A huge batch cannot fit in memory: refused before loading anything.
    let big = TrainingConfig {
        block_size: 2048,
        batch_size: 4096,
        ..settings()
    };
    assert!(matches!(
        refuse(big, &documents(4), "needs about"),
        TrainError::Config(_)
    ));
    // Another base: the current version's adapter does not belong to it.
    let mut other = job(dir.path(), settings(), &never);
    other.base_version = "another-base-111111".into();
    other.incremental = true;
    let error = train(&other, &documents(6), &mut |_| {}).unwrap_err();
    assert!(matches!(error, TrainError::Model(_)), "{error}");
    assert!(error.to_string().contains(&current.id), "{error}");
    // Two trainers on one directory: the second is told.
    let _held = versions::Versions::open(dir.path()).unwrap();
    let busy = train(
        &job(dir.path(), settings(), &never),
        &documents(4),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(busy, TrainError::Busy(_)), "{busy}");
    assert_eq!(
        std::fs::read(dir.path().join("current")).unwrap(),
        current_file
    );
}
