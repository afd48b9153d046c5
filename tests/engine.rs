//! Properties of the engine that need no external reference: cached decoding equals full
//! recomputation, batches equal single runs, streaming is UTF-8 safe, seeds reproduce, and
//! quantization costs little perplexity.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, IndexOp, Tensor};
use common::{engine, options, reference_models};
use mananera_engine::text::StreamDecoder;
use mananera_engine::vocabulary;
use mananera_engine::{Engine, Prompt, Quantization, SamplingParams, StopReason, max_abs_diff};

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: Some(seed),
        max_new_tokens: 40,
        min_new_tokens: 0,
        max_words: 0,
    }
}

fn collect(
    engine: &Engine,
    prompt: &str,
    params: &SamplingParams,
) -> (Vec<String>, mananera_engine::Generation) {
    let mut deltas = Vec::new();
    let out = engine
        .generate(prompt, params, |d| {
            deltas.push(d.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    (deltas, out)
}

#[test]
fn cached_decoding_equals_full_recompute() {
    for (name, reference) in reference_models() {
        let engine = engine(&name);
        let model = engine.model();
        let ids = &reference.eval.token_ids[..48];
        let device = model.device();
        let full = {
            let mut cache = model.new_cache();
            let t = Tensor::new(ids, device).unwrap().unsqueeze(0).unwrap();
            let mask = Tensor::ones((1, ids.len()), DType::U8, device).unwrap();
            model
                .logits(&model.forward(&t, &mask, &mut cache).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
        };
        // Prompt of 16 in one call, then one token at a time.
        let mut cache = model.new_cache();
        let mut rows = Vec::new();
        for (start, end) in std::iter::once((0, 16)).chain((16..ids.len()).map(|i| (i, i + 1))) {
            let t = Tensor::new(&ids[start..end], device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let mask = Tensor::ones((1, end), DType::U8, device).unwrap();
            let hidden = model.forward(&t, &mask, &mut cache).unwrap();
            rows.push(model.logits(&hidden).unwrap().squeeze(0).unwrap());
        }
        let incremental = Tensor::cat(&rows, 0).unwrap();
        let diff = max_abs_diff(&full, &incremental);
        assert!(diff < 1e-4, "{name}: max |Δ logit| = {diff}");
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn batched_sampling_equals_one_by_one() {
    let prompts = [
        "El presidente",
        "¿Qué opina usted de la reforma eléctrica y del",
        "Buenos días",
    ];
    for (name, _) in reference_models() {
        batch_equals_alone(&prompts, &engine(&name), &name);
    }
    // Quantized layers take several sequences per pass over the weights: still the same.
    let (name, _) = &reference_models()[0];
    let quantized = Engine::load(&options(name, Quantization::Q8_0)).unwrap();
    let five = [
        "a",
        "El presidente",
        "Buenos días",
        "La refinería",
        "¿Y el tren?",
    ];
    batch_equals_alone(&five, &quantized, "q8_0");
}

fn batch_equals_alone(prompts: &[&str], engine: &Engine, name: &str) {
    let params = sampled(7);
    let batch = engine
        .generate_batch(prompts, &params, |_, _| ControlFlow::Continue(()))
        .unwrap();
    for (prompt, got) in prompts.iter().zip(&batch) {
        let (_, alone) = collect(engine, prompt, &params);
        assert_eq!(got.token_ids, alone.token_ids, "{name}: {prompt:?}");
        assert_eq!(got.text, alone.text, "{name}: {prompt:?}");
    }
}

#[test]
fn streamed_deltas_are_whole_characters_and_concatenate_to_the_text() {
    for (name, _) in reference_models() {
        let engine = engine(&name);
        for seed in 0..4 {
            let (deltas, out) = collect(&engine, "La niña dijo: ¿café o atún?", &sampled(seed));
            for d in &deltas {
                assert!(
                    !d.is_empty() && !d.contains(char::REPLACEMENT_CHARACTER),
                    "{name}: delta {d:?}"
                );
            }
            assert_eq!(deltas.concat(), out.text, "{name}");
        }
    }
}

#[test]
fn the_stream_decoder_holds_back_split_characters() {
    // Byte-level BPE has a token for every byte: feed "ñ🇲" one byte-token at a time.
    let engine = engine("tiny-bloom-4h");
    let tokenizer =
        tokenizers::Tokenizer::from_file(common::model_dir("tiny-bloom-4h").join("tokenizer.json"))
            .unwrap();
    let byte_char = |b: u8| -> String {
        // GPT-2's byte-to-unicode table, used by the ByteLevel pre-tokenizer.
        let printable = (b'!'..=b'~')
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .collect::<Vec<u8>>();
        if printable.contains(&b) {
            char::from_u32(b as u32).unwrap().to_string()
        } else {
            let n = (0..=255u8)
                .filter(|x| !printable.contains(x))
                .position(|x| x == b)
                .unwrap();
            char::from_u32(256 + n as u32).unwrap().to_string()
        }
    };
    let text = "ñ🇲x";
    let ids: Vec<u32> = text
        .bytes()
        .map(|b| tokenizer.token_to_id(&byte_char(b)).expect("byte token"))
        .collect();
    let mut decoder = StreamDecoder::default();
    let mut released = Vec::new();
    for id in ids {
        let delta = decoder.push(engine.codec(), id).unwrap();
        decoder.release(&delta);
        released.push(delta);
    }
    assert_eq!(released, ["", "ñ", "", "", "", "🇲", "x"]);
    assert_eq!(decoder.text(), text);
}

#[test]
fn the_same_seed_gives_the_same_text_and_another_seed_another() {
    let engine = engine("tiny-bloom-6h-postln");
    let (_, a) = collect(&engine, "La economía", &sampled(11));
    let (_, b) = collect(&engine, "La economía", &sampled(11));
    assert_eq!(a.token_ids, b.token_ids);
    let others: Vec<Vec<u32>> = (12..16)
        .map(|s| collect(&engine, "La economía", &sampled(s)).1.token_ids)
        .collect();
    assert!(
        others.iter().any(|o| *o != a.token_ids),
        "sampling ignores the seed"
    );
}

#[test]
fn the_word_limit_stops_generation() {
    let engine = engine("tiny-bloom-4h");
    // No end of text before the limit: the word limit is what must stop it.
    let params = SamplingParams {
        max_words: 8,
        max_new_tokens: 200,
        min_new_tokens: 200,
        ..sampled(3)
    };
    let (_, out) = collect(&engine, "El presidente", &params);
    let words = out.text.split_whitespace().count();
    assert_eq!(out.stop_reason, StopReason::WordLimit, "{:?}", out.text);
    assert!((8..=18).contains(&words), "{words} words: {:?}", out.text);
}

#[test]
fn cancelling_stops_after_the_current_token() {
    let engine = engine("tiny-bloom-4h");
    let mut seen = 0;
    let out = engine
        .generate("El presidente", &sampled(5), |_| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(seen, 1);
    assert_eq!(out.stop_reason, StopReason::Cancelled);
}

#[test]
fn the_context_cap_is_enforced() {
    let mut opts = options("tiny-bloom-4h", Quantization::None);
    opts.max_context = 12;
    let engine = Engine::load(&opts).unwrap();
    let long = "el presidente dijo que la economía de México va muy bien y que ".repeat(3);
    let err = engine
        .generate(&long, &sampled(1), |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(err.to_string().contains("max_context"), "{err}");
    let out = engine
        .generate(
            "El",
            &SamplingParams {
                max_new_tokens: 100,
                ..sampled(1)
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(out.token_ids.len() <= 11);
    assert!(
        matches!(out.stop_reason, StopReason::ContextFull | StopReason::Eos),
        "{:?}",
        out.stop_reason
    );
}

#[test]
fn quantized_models_stay_close_to_f32() {
    for (name, reference) in reference_models() {
        let f32_ppl = engine(&name)
            .score(&reference.eval.text)
            .unwrap()
            .perplexity();
        for q in [Quantization::Q8_0, Quantization::Q4_0, Quantization::Q4k] {
            let quantized = Engine::load(&options(&name, q)).unwrap();
            let ppl = quantized.score(&reference.eval.text).unwrap().perplexity();
            let change = (ppl - f32_ppl) / f32_ppl;
            eprintln!(
                "{name}: perplexity f32 {f32_ppl:.4}, {q} {ppl:.4} ({:+.2}%)",
                change * 100.0
            );
            assert!(
                change.abs() < 0.05,
                "{name} {q}: perplexity {ppl} vs f32 {f32_ppl}"
            );
        }
    }
}

#[test]
fn logits_of_one_position_are_a_slice_of_all_positions() {
    // Generation computes the head only for the last position; it must agree with scoring.
    let engine = engine("tiny-bloom-12h-bf16");
    let model = engine.model();
    let ids = engine.codec().encode("Buenos días, presidente").unwrap();
    let device = model.device();
    let mut cache = model.new_cache();
    let t = Tensor::new(ids.as_slice(), device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, ids.len()), DType::U8, device).unwrap();
    let hidden = model.forward(&t, &mask, &mut cache).unwrap();
    let all = model.logits(&hidden).unwrap();
    let last = model
        .logits(
            &hidden
                .i((.., ids.len() - 1..))
                .unwrap()
                .contiguous()
                .unwrap(),
        )
        .unwrap();
    let diff = max_abs_diff(&all.i((.., ids.len() - 1..)).unwrap(), &last);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn a_trimmed_vocabulary_keeps_the_scores_of_its_tokens() {
    let full = engine("tiny-bloom-4h");
    let corpus = std::fs::read_to_string(common::fixtures().join("corpus_es.txt")).unwrap();
    let kept = vocabulary::build(full.codec(), full.model().config(), [corpus.as_str()]).unwrap();
    assert!(kept.len() < full.model().config().vocab_size);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    vocabulary::write(&path, &kept, full.model().config().vocab_size).unwrap();
    let mut opts = options("tiny-bloom-4h", Quantization::None);
    opts.vocabulary = Some(path);
    let trimmed = Engine::load(&opts).unwrap();

    // The kept columns carry exactly the full head's scores for those tokens.
    let device = full.model().device();
    let ids = full.codec().encode("Buenos días, presidente").unwrap();
    let t = Tensor::new(ids.as_slice(), device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, ids.len()), DType::U8, device).unwrap();
    let hidden = full
        .model()
        .forward(&t, &mask, &mut full.model().new_cache())
        .unwrap();
    let want = full
        .model()
        .logits(&hidden)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .index_select(&Tensor::new(kept.as_slice(), device).unwrap(), 1)
        .unwrap();
    let got = trimmed.model().logits(&hidden).unwrap().squeeze(0).unwrap();
    let diff = max_abs_diff(&want, &got);
    assert!(diff < 1e-5, "{diff}");

    // Generation only produces kept tokens, and greedy agrees with the full model while the
    // full model's choices are kept tokens.
    let greedy = SamplingParams {
        temperature: 0.0,
        repetition_penalty: 1.3,
        ..sampled(0)
    };
    let (_, a) = collect(&full, "El presidente", &greedy);
    let (_, b) = collect(&trimmed, "El presidente", &greedy);
    assert!(b.token_ids.iter().all(|id| kept.binary_search(id).is_ok()));
    let agree = a
        .token_ids
        .iter()
        .take_while(|id| kept.binary_search(id).is_ok())
        .count();
    assert_eq!(a.token_ids[..agree], b.token_ids[..agree]);

    // A text made of kept tokens scores at least as well (the dropped tokens' mass is
    // redistributed); one with a dropped token is refused with an explanation.
    let text: String = corpus.lines().take(3).collect::<Vec<_>>().join("\n");
    let (f, t) = (
        full.score(&text).unwrap().perplexity(),
        trimmed.score(&text).unwrap().perplexity(),
    );
    eprintln!(
        "trimmed vocabulary ({} of {} tokens): perplexity {f:.4} → {t:.4}",
        kept.len(),
        full.model().config().vocab_size
    );
    assert!(t <= f * 1.000_01, "{t} vs {f}");
    let outside = (0..full.model().config().vocab_size as u32)
        .filter(|id| kept.binary_search(id).is_err())
        .map(|id| format!("El presidente{}", full.codec().decode(&[id]).unwrap()))
        .find(|text| {
            full.codec()
                .encode(text)
                .unwrap()
                .iter()
                .any(|id| kept.binary_search(id).is_err())
        })
        .expect("a text with a dropped token");
    let err = trimmed.score(&outside).unwrap_err().to_string();
    assert!(err.contains("outside the trimmed vocabulary"), "{err}");
}

#[test]
fn a_voice_header_comes_before_the_prompt_tokenized_apart() {
    let (name, _) = reference_models().into_iter().next().unwrap();
    let engine = engine(&name);
    let header = "PRESIDENTA CLAUDIA SHEINBAUM PARDO:\n";
    let topic = "el agua";
    let (h, t) = (
        engine.codec().encode(header).unwrap(),
        engine.codec().encode(topic).unwrap(),
    );
    let voiced = Prompt {
        header,
        text: topic,
    };
    let greedy = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 8,
        max_words: 0,
        ..SamplingParams::default()
    };
    let out = engine
        .generate(voiced, &greedy, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(out.timings.prompt_tokens, h.len() + t.len());
    let bare = engine
        .generate(topic, &greedy, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(bare.timings.prompt_tokens, t.len());
    // Scoring in a voice: the text's tokens given the header, the first one included.
    let all: Vec<u32> = h.iter().chain(&t).copied().collect();
    let whole = engine.model().score(&all, 512).unwrap();
    let scored = engine.score(voiced).unwrap();
    assert_eq!(scored.logprobs, whole[h.len() - 1..]);
    assert_eq!(scored.token_ids, all[h.len() - 1..]);
    assert_eq!(
        engine.score(topic).unwrap().logprobs.len(),
        t.len() - 1,
        "no header: the first token predicts nothing"
    );
    // A header and topic past the context cap are refused with both counts.
    let small = Engine::load(&mananera_engine::EngineOptions {
        max_context: h.len() + 1,
        ..options(&name, Quantization::None)
    })
    .unwrap();
    let err = small
        .generate(voiced, &greedy, |_| ControlFlow::Continue(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the voice header and the prompt are {} + {} tokens",
            h.len(),
            t.len()
        )) && err.contains("engine.max_context"),
        "{err}"
    );
}

#[test]
fn f16_weights_give_the_f32_greedy_tokens_and_nearly_its_logprobs() {
    let prompts = [
        "El presidente",
        "¿Qué opina usted de la reforma eléctrica y del",
        "Buenos días",
        "La refinería",
        "¿Y el tren?",
    ];
    let greedy = SamplingParams {
        temperature: 0.0,
        ..sampled(0)
    };
    for (name, reference) in reference_models() {
        let exact = engine(&name);
        let half = Engine::load(&options(&name, Quantization::F16)).unwrap();
        for prompt in prompts {
            let (_, a) = collect(&exact, prompt, &greedy);
            let (_, b) = collect(&half, prompt, &greedy);
            assert_eq!(a.token_ids, b.token_ids, "{name}: {prompt:?}");
        }
        // Scoring runs the tiled (prefill) kernel over every position.
        let (a, b) = (
            exact.score(&reference.eval.text).unwrap(),
            half.score(&reference.eval.text).unwrap(),
        );
        assert_eq!(a.token_ids, b.token_ids);
        let worst = a
            .logprobs
            .iter()
            .zip(&b.logprobs)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let change = (b.perplexity() - a.perplexity()) / a.perplexity();
        eprintln!(
            "{name}: perplexity f32 {:.4}, f16 {:.4} ({:+.3}%), worst logprob change {worst:.5}",
            a.perplexity(),
            b.perplexity(),
            change * 100.0
        );
        assert!(worst < 0.02, "{name}: a logprob moved by {worst}");
        assert!(change.abs() < 0.002, "{name}: perplexity moved {change}");
        // Several sequences per pass over the 16-bit weights: still the same as alone.
        batch_equals_alone(&prompts, &half, &format!("{name} f16"));
    }
}
