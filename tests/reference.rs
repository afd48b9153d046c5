//! The engine against Hugging Face transformers: logprobs, greedy continuations (with and
//! without repetition penalty) and left-padded batches recorded by scripts/make_fixtures.py,
//! for every fixture checkpoint (head counts 4, 6 and 12; both residual variants; f32, f16
//! and bf16 storage; sharded and single files; with and without the `transformer.` prefix).

mod common;

use common::{Reference, engine, reference_models};
use mananera_engine::SamplingParams;

const LOGPROB_TOLERANCE: f32 = 1e-4;

fn greedy(max_new_tokens: usize, repetition_penalty: f32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty,
        seed: Some(0),
        max_new_tokens,
        min_new_tokens: 0,
        max_words: 0,
    }
}

#[test]
fn tokenization_matches_transformers() {
    for (name, reference) in reference_models() {
        let engine = engine(&name);
        let ids = engine.codec().encode(&reference.eval.text).unwrap();
        assert_eq!(ids, reference.eval.token_ids, "{name}");
    }
}

#[test]
fn logprobs_match_transformers() {
    for (name, reference) in reference_models() {
        let scored = engine(&name).score(&reference.eval.text).unwrap();
        assert_eq!(scored.token_ids, reference.eval.token_ids, "{name}");
        assert_eq!(
            scored.logprobs.len(),
            reference.eval.logprobs.len(),
            "{name}"
        );
        let worst = scored
            .logprobs
            .iter()
            .zip(&reference.eval.logprobs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < LOGPROB_TOLERANCE,
            "{name}: max |Δ logprob| = {worst}"
        );
    }
}

fn check_greedy(name: &str, cases: &[common::GreedyCase], repetition_penalty: f32) {
    let engine = engine(name);
    for case in cases {
        assert_eq!(
            engine.codec().encode(&case.prompt).unwrap(),
            case.prompt_ids,
            "{name}: {:?}",
            case.prompt
        );
        let out = engine
            .generate(
                &case.prompt,
                &greedy(case.new_ids.len().max(40), repetition_penalty),
                |_| std::ops::ControlFlow::Continue(()),
            )
            .unwrap();
        assert_eq!(
            out.token_ids, case.new_ids,
            "{name}: prompt {:?} (penalty {repetition_penalty})",
            case.prompt
        );
        assert_eq!(
            out.text,
            case.new_text.replace("</s>", ""),
            "{name}: prompt {:?}",
            case.prompt
        );
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for (name, reference) in reference_models() {
        check_greedy(&name, &reference.greedy, 1.0);
    }
}

#[test]
fn repetition_penalty_matches_transformers() {
    for (name, reference) in reference_models() {
        check_greedy(&name, &reference.greedy_penalty, 1.3);
    }
}

#[test]
fn left_padded_batches_match_transformers() {
    for (name, reference) in reference_models() {
        let engine = engine(&name);
        let prompts: Vec<&str> = reference.batch.prompts.iter().map(String::as_str).collect();
        let out = engine
            .generate_batch(&prompts, &greedy(20, 1.0), |_, _| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        for (row, (got, want)) in out.iter().zip(&reference.batch.new_ids).enumerate() {
            assert_eq!(&got.token_ids, want, "{name}: batch row {row}");
        }
    }
}

#[test]
fn every_reference_model_is_covered() {
    let models: Vec<(String, Reference)> = reference_models();
    let heads: Vec<usize> = models.iter().map(|(_, r)| r.config.n_head).collect();
    assert!(
        heads.iter().any(|h| !h.is_power_of_two()),
        "a non-power-of-two head count: {heads:?}"
    );
    assert!(
        heads.iter().any(|h| h.is_power_of_two()),
        "a power-of-two head count: {heads:?}"
    );
    assert!(models.iter().any(|(_, r)| r.config.post_layernorm));
    assert!(models.iter().any(|(_, r)| !r.config.post_layernorm));
}
