//! `mananera bench`: prefill and decode speed and memory of the engine on a model of
//! bigscience/bloom-560m's exact shape, built in-process with random weights (no download),
//! for each precision. Speed does not depend on the weights' values.

use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Serialize;

use crate::commands::{Context, Format, Run};
use crate::config::{Config, Override};
use crate::exit::{Exit, Failure};
use mananera_engine::Quantization;
use mananera_engine::bloom::Bloom;
use mananera_model::BloomConfig;
use mananera_model::weights::Weights;

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Precisions to measure, comma-separated: none (f32), f16, q8_0, q4_0, q4k.
    #[arg(long, value_delimiter = ',', default_values_t = ["none".to_string(), "f16".to_string(), "q8_0".to_string(), "q4_0".to_string(), "q4k".to_string()])]
    pub precisions: Vec<String>,
    /// Prompt length.
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Matrix worker threads, 0 = all cores (engine.threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rows of the language-model head, to measure a trimmed vocabulary (default: all 250880).
    #[arg(long)]
    pub head_rows: Option<usize>,
}

impl BenchArgs {
    /// The settings these flags override.
    pub fn model_overrides(&self) -> Vec<Override> {
        self.threads
            .map(|t| Override {
                key: "engine.threads".into(),
                value: t.to_string(),
                origin: format!("--threads {t}"),
            })
            .into_iter()
            .collect()
    }
}

/// One precision's numbers.
#[derive(Debug, Serialize)]
struct Measurement {
    engine: &'static str,
    precision: String,
    head_rows: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    load_s: f64,
    /// Resident memory with the model loaded.
    rss_mb: f64,
    /// Peak resident memory while generating.
    peak_rss_mb: f64,
    /// Weight bytes one decoding step reads (`Bloom::decode_bytes`).
    bytes_per_token: usize,
    /// `bytes_per_token × decode_tok_s`, in GB/s.
    decode_gb_s: f64,
    /// This machine's streaming read with the same threads ([`stream_read_gb_s`]).
    stream_read_gb_s: f64,
    /// `decode_gb_s / stream_read_gb_s`: how close decoding comes to the memory's speed.
    bandwidth_share: f64,
}

/// Runs the benchmark for every requested precision.
pub fn run(config: &Config, args: &BenchArgs, format: Format) -> Result<(), Failure> {
    if args.prompt_tokens == 0 || args.new_tokens == 0 || args.runs == 0 {
        return Err(Failure::usage(
            "--prompt-tokens, --new-tokens and --runs must be at least 1",
        ));
    }
    let precisions = args
        .precisions
        .iter()
        .map(|p| {
            p.parse::<Quantization>()
                .map_err(|e| Failure::usage(format!("--precisions: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let threads = match config.engine.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let stream = stream_read_gb_s(threads);
    tracing::info!(
        threads,
        gb_s = format!("{stream:.1}"),
        "streaming read of this machine"
    );
    let config = BloomConfig::bloom_560m();
    for precision in precisions {
        tracing::info!(%precision, "building a random model of bloom-560m's shape");
        let m = measure(&config, precision, args, stream).map_err(|e| Failure {
            exit: Exit::Internal,
            message: e.to_string(),
        })?;
        match format {
            Format::Json | Format::Jsonl => super::print_json(&m)?,
            Format::Text => println!(
                "{:<5} head {:>6}  prefill {:>7.1} tok/s  decode {:>6.2} tok/s  {:>5.0} MB/token {:>5.1} GB/s ({:.0}% of {:.1})  rss {:>6.0} MB  peak {:>6.0} MB  (load {:.1} s)",
                m.precision,
                m.head_rows,
                m.prefill_tok_s,
                m.decode_tok_s,
                m.bytes_per_token as f64 / 1e6,
                m.decode_gb_s,
                100.0 * m.bandwidth_share,
                m.stream_read_gb_s,
                m.rss_mb,
                m.peak_rss_mb,
                m.load_s
            ),
        }
    }
    Ok(())
}

fn measure(
    config: &BloomConfig,
    precision: Quantization,
    args: &BenchArgs,
    stream_read_gb_s: f64,
) -> mananera_engine::Result<Measurement> {
    let device = Device::Cpu;
    let started = Instant::now();
    let head_rows = args
        .head_rows
        .unwrap_or(config.vocab_size)
        .clamp(1, config.vocab_size);
    let head_ids = (head_rows < config.vocab_size).then(|| (0..head_rows as u32).collect());
    let model = Bloom::load(&Weights::random(0, &device), config, precision, head_ids)?;
    let load_s = started.elapsed().as_secs_f64();
    let rss_mb = memory_mb("VmRSS:");
    reset_peak_memory();

    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| 5 + (i * 7919) % 250_000)
        .collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..args.runs {
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        let ids = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let mut mask: Vec<u8> = vec![1; prompt.len()];
        let hidden = model.forward(
            &ids,
            &Tensor::new(mask.as_slice(), &device)?.unsqueeze(0)?,
            &mut cache,
        )?;
        let mut next = argmax_last(&model, &hidden)?;
        let t1 = Instant::now();
        for _ in 0..args.new_tokens {
            mask.push(1);
            let ids = Tensor::new(&[[next]], &device)?;
            let hidden = model.forward(
                &ids,
                &Tensor::new(mask.as_slice(), &device)?.unsqueeze(0)?,
                &mut cache,
            )?;
            next = argmax_last(&model, &hidden)?;
        }
        let t2 = Instant::now();
        prefill.push(args.prompt_tokens as f64 / (t1 - t0).as_secs_f64());
        decode.push(args.new_tokens as f64 / (t2 - t1).as_secs_f64());
        tracing::info!(%precision, run, prefill_tok_s = format!("{:.1}", prefill[run]), decode_tok_s = format!("{:.2}", decode[run]), "bench run");
    }
    let decode_tok_s = median(decode);
    let bytes_per_token = model.decode_bytes();
    let decode_gb_s = bytes_per_token as f64 * decode_tok_s / 1e9;
    Ok(Measurement {
        engine: "mananera",
        precision: precision.to_string(),
        head_rows,
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        prefill_tok_s: median(prefill),
        decode_tok_s,
        load_s,
        rss_mb,
        peak_rss_mb: memory_mb("VmHWM:"),
        bytes_per_token,
        decode_gb_s,
        stream_read_gb_s,
        bandwidth_share: decode_gb_s / stream_read_gb_s.max(1e-9),
    })
}

/// This machine's streaming read in GB/s with `threads` threads: the best of three passes
/// summing a 1 GiB buffer (far past the caches), the ceiling of a decoding step that reads
/// each weight once.
fn stream_read_gb_s(threads: usize) -> f64 {
    let data = vec![1f32; (1 << 30) / 4];
    let chunk = data.len().div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let parts: Vec<_> = data
                .chunks(chunk)
                .map(|c| s.spawn(move || sum(c)))
                .collect();
            parts.into_iter().map(|p| p.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max(
            std::mem::size_of_val(data.as_slice()) as f64 / started.elapsed().as_secs_f64() / 1e9,
        );
    }
    best
}

/// A sum in sixteen independent lanes, so the compiler vectorises it and the loads, not the
/// additions, set the pace.
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn argmax_last(model: &Bloom, hidden: &Tensor) -> candle_core::Result<u32> {
    let last = hidden.i((0, hidden.dim(1)? - 1))?.unsqueeze(0)?;
    let column = model
        .logits(&last)?
        .to_dtype(DType::F32)?
        .squeeze(0)?
        .argmax(0)?
        .to_scalar::<u32>()?;
    Ok(model.token_id(column))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A `/proc/self/status` memory line in MB (0 where unavailable).
pub(crate) fn memory_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM).
pub(crate) fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

impl Run for BenchArgs {
    fn overrides(&self) -> Vec<Override> {
        self.model_overrides()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(&ctx.config, self, ctx.format)
    }
}
