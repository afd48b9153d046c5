//! Training in two voices on the tiny fixture model: every block opens with its voice's
//! header (checked in a stopped run's saved blocks), a resumed run keeps the voices, and an
//! incremental run that helps one voice while hurting the other is rejected for it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::base;
use mananera_model::tensors;
use mananera_model::versions::{self, Status};
use mananera_training::speakers::Voice;
use mananera_training::tune::TrainingConfig;
use mananera_training::tune::data::Document;
use mananera_training::tune::run::{Event, Job, Outcome, train};

const A_WORDS: &[&str] = &[
    "petróleo",
    "refinería",
    "soberanía",
    "gasolina",
    "pueblo",
    "bienestar",
    "corrupción",
    "conservadores",
];
const B_WORDS: &[&str] = &[
    "agua",
    "ciencia",
    "mujeres",
    "innovación",
    "becas",
    "vivienda",
    "salud",
    "humanismo",
];

/// `count` transcripts in `voice`, one a day of `year`, of sentences made of `words`.
fn documents(
    voice: &str,
    words: &[&str],
    year: u32,
    first_day: usize,
    count: usize,
) -> Vec<Document> {
    (first_day..first_day + count)
        .map(|day| {
            let mut state = (day as u64 + 1) * 2_654_435_761 + year as u64;
            let mut next = |n: usize| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 33) as usize) % n
            };
            let text: Vec<String> = (0..25)
                .map(|_| {
                    let line: Vec<&str> = (0..8).map(|_| words[next(words.len())]).collect();
                    format!("{}.", line.join(" "))
                })
                .collect();
            Document {
                id: format!("{year}/{voice}-{day:02}.txt"),
                date: format!("{year}-03-{:02}", day + 1),
                voice: voice.into(),
                text: text.join("\n"),
            }
        })
        .collect()
}

fn voices() -> Vec<Voice> {
    [("a", "PRESIDENTE A:\n"), ("b", "PRESIDENTA B:\n")]
        .map(|(id, header)| Voice {
            id: id.into(),
            name: id.into(),
            header: header.into(),
        })
        .to_vec()
}

fn settings() -> TrainingConfig {
    TrainingConfig {
        block_size: 64,
        batch_size: 2,
        grad_accumulation: 1,
        learning_rate: 3e-3,
        warmup_steps: 2,
        lora_rank: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        max_validation_blocks: 8,
        tolerance: 0.5,
        checkpoint_steps: 0,
        ..TrainingConfig::default()
    }
}

/// A run on the tiny base in the two voices.
fn job<'a>(dir: &std::path::Path, settings: TrainingConfig, stop: &'a AtomicBool) -> Job<'a> {
    Job {
        voices: voices(),
        ..common::job(dir, settings, stop)
    }
}

fn both(count: usize) -> Vec<Document> {
    let mut docs = documents("a", A_WORDS, 2023, 0, count);
    docs.extend(documents("b", B_WORDS, 2025, 0, count));
    docs
}

#[test]
fn every_block_opens_with_its_voice_header_and_a_resumed_run_keeps_the_voices() {
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let outcome = train(
        &job(dir.path(), settings(), &stop),
        &both(4),
        &mut |event| {
            if let Event::Step { step: 1, .. } = event {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(
        matches!(outcome, Outcome::Stopped { step: 1, .. }),
        "{outcome:?}"
    );

    // The saved blocks: each opens with its voice's header, tokenized as generation does.
    let tokenizer = tokenizers::Tokenizer::from_file(&base().files.tokenizer).unwrap();
    let header = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let (a, b) = (header("PRESIDENTE A:\n"), header("PRESIDENTA B:\n"));
    let saved = tensors::load(&dir.path().join(versions::RUN).join("blocks.safetensors")).unwrap();
    for (blocks, voices) in [
        ("train", "train_voices"),
        ("validation", "validation_voices"),
    ] {
        let blocks = saved[blocks].to_vec2::<u32>().unwrap();
        let voices = saved[voices].to_vec1::<u32>().unwrap();
        assert_eq!(blocks.len(), voices.len());
        let seen: std::collections::BTreeSet<u32> = voices.iter().copied().collect();
        assert_eq!(seen.len(), 2, "both voices have blocks");
        for block in &blocks {
            assert!(
                block.starts_with(&a) || block.starts_with(&b),
                "a block without a voice header: {block:?}"
            );
        }
    }

    let never = AtomicBool::new(false);
    let mut resumed = job(dir.path(), settings(), &never);
    resumed.resume = true;
    let Outcome::Finished(version) = train(&resumed, &[], &mut |_| {}).unwrap() else {
        panic!("the resumed run did not finish");
    };
    for voice in ["a", "b"] {
        let m = &version.metrics.voices[voice];
        assert!(
            m.train_blocks > 0 && m.validation_blocks > 0,
            "{voice}: {m:?}"
        );
        assert!(m.perplexity_before.is_finite() && m.perplexity_after.is_finite());
    }
}

#[test]
fn an_incremental_run_that_hurts_one_voice_is_rejected_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let first = train(
        &job(
            dir.path(),
            TrainingConfig {
                epochs: 3,
                ..settings()
            },
            &never,
        ),
        &both(4),
        &mut |_| {},
    )
    .unwrap();
    let Outcome::Finished(first) = first else {
        panic!("{first:?}");
    };
    assert_eq!(first.status, Status::Accepted);

    // Only B's news and no replay: B's voice gets better, and so does the overall
    // perplexity, while A's drifts.
    let mut docs = both(4);
    docs.extend(documents("b", B_WORDS, 2025, 4, 6));
    let mut hard = job(
        dir.path(),
        TrainingConfig {
            epochs: 1,
            learning_rate: 2e-3,
            warmup_steps: 0,
            replay_ratio: 0.0,
            tolerance: 0.02,
            ..settings()
        },
        &never,
    );
    hard.incremental = true;
    let Outcome::Finished(second) = train(&hard, &docs, &mut |_| {}).unwrap() else {
        panic!("the incremental run did not finish");
    };
    let (a, b) = (&second.metrics.voices["a"], &second.metrics.voices["b"]);
    let (before, after) = (
        second.metrics.perplexity_before,
        second.metrics.perplexity_after,
    );
    assert!(
        after <= before * 1.02,
        "overall {before} → {after}: only A's voice should fail"
    );
    assert!(b.perplexity_after < b.perplexity_before, "b: {b:?}");
    assert!(a.perplexity_after > a.perplexity_before * 1.02, "a: {a:?}");
    assert_eq!(second.metrics.worse_voices, ["a"], "a: {a:?}, b: {b:?}");
    assert_eq!(second.status, Status::Rejected);
    assert_eq!(
        versions::current(dir.path()).unwrap().map(|v| v.id),
        Some(first.id.clone()),
        "the current version is untouched"
    );
}

#[test]
fn a_header_that_leaves_no_room_in_a_block_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let mut long = job(
        dir.path(),
        TrainingConfig {
            block_size: 16,
            ..settings()
        },
        &never,
    );
    long.voices[1].header = "PRESIDENTA DE LOS ESTADOS UNIDOS MEXICANOS B:\n".into();
    let err = train(&long, &both(4), &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("voice b's header is") && err.contains("training.block_size = 16"),
        "{err}"
    );
    assert!(versions::current(dir.path()).unwrap().is_none());
}
