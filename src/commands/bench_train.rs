//! `mananera bench-train`: training speed and memory on a model of bigscience/bloom-560m's
//! exact shape with random weights built in-process, for LoRA and full fine-tuning, to set
//! against `scripts/bench_training.py` (PyTorch + PEFT, same configuration).

use std::time::Instant;

use mananera_model::BloomConfig;
use mananera_model::adapter::{LoraSpec, TARGETS};
use mananera_training::tune::head::Vocabulary;
use mananera_training::tune::lora::Adapter;
use mananera_training::tune::model::Model;
use mananera_training::tune::optim::{AdamW, AdamWParams};
use mananera_training::tune::run::{Blocks, optimizer_step};
use serde::Serialize;

use super::bench::{memory_mb, reset_peak_memory};
use super::print_json;
use crate::commands::{Context, Format, Run};
use crate::exit::{Exit, Failure};

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct BenchTrainArgs {
    /// lora, full, or both (comma-separated); each runs in its own process, so that its
    /// peak memory is its own.
    #[arg(long, value_delimiter = ',', default_values_t = ["lora".to_string(), "full".to_string()])]
    pub methods: Vec<String>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub block: usize,
    /// Timed optimizer steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Train a trimmed head of this many rows, as with `engine.vocabulary` (default: all
    /// 250,880).
    #[arg(long)]
    pub head_rows: Option<usize>,
}

/// One method's numbers.
#[derive(Debug, Serialize)]
struct Measurement {
    engine: &'static str,
    method: String,
    block: usize,
    batch: usize,
    steps: usize,
    /// Rows of the head scored (250,880 unless trimmed).
    head_rows: usize,
    tokens_per_s: f64,
    step_s_median: f64,
    /// Peak resident memory from after the model was built (training state included).
    peak_rss_mb: f64,
    /// Peak resident memory of the whole process.
    peak_rss_incl_build_mb: f64,
    trainable_params: usize,
}

/// Runs every requested method (each in a child process when there are several).
pub fn run(args: &BenchTrainArgs, format: Format) -> Result<(), Failure> {
    if args.steps == 0 || args.block < 2 {
        return Err(Failure::usage(
            "--steps must be at least 1 and --block at least 2",
        ));
    }
    let vocab = BloomConfig::bloom_560m().vocab_size;
    if args
        .head_rows
        .is_some_and(|rows| !(4..=vocab).contains(&rows))
    {
        return Err(Failure::usage(format!(
            "--head-rows must be between 4 and {vocab}"
        )));
    }
    if let Some(bad) = args
        .methods
        .iter()
        .find(|m| !["lora", "full"].contains(&m.as_str()))
    {
        return Err(Failure::usage(format!(
            "--methods: `{bad}` is not lora or full"
        )));
    }
    if let [method] = args.methods.as_slice() {
        let measured = measure(method, args)?;
        return match format {
            Format::Json | Format::Jsonl => print_json(&measured),
            Format::Text => {
                println!(
                    "{}: {:.1} tokens/s ({:.2} s/step, block {}, batch 1, head {} rows), peak RSS {:.0} MB ({:.0} MB with the build)",
                    measured.method,
                    measured.tokens_per_s,
                    measured.step_s_median,
                    measured.block,
                    measured.head_rows,
                    measured.peak_rss_mb,
                    measured.peak_rss_incl_build_mb
                );
                Ok(())
            }
        };
    }
    let exe = std::env::current_exe().map_err(|e| Failure {
        exit: Exit::Internal,
        message: format!("cannot find the mananera binary to measure each method alone: {e}"),
    })?;
    for method in &args.methods {
        let format_flag = match format {
            Format::Text => "text",
            Format::Json | Format::Jsonl => "json",
        };
        let status = std::process::Command::new(&exe)
            .args(["--format", format_flag, "bench-train", "--methods", method])
            .args([
                "--block",
                &args.block.to_string(),
                "--steps",
                &args.steps.to_string(),
            ])
            .args(
                args.head_rows
                    .map(|rows| ["--head-rows".to_string(), rows.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .status()
            .map_err(|e| Failure {
                exit: Exit::Internal,
                message: format!("cannot run {}: {e}", exe.display()),
            })?;
        if !status.success() {
            return Err(Failure {
                exit: Exit::Internal,
                message: format!("measuring {method} failed ({status})"),
            });
        }
    }
    Ok(())
}

fn measure(method: &str, args: &BenchTrainArgs) -> Result<Measurement, Failure> {
    let failed = |e: &dyn std::fmt::Display| Failure {
        exit: Exit::Internal,
        message: format!("bench-train {method}: {e}"),
    };
    crate::heap::reuse_freed_buffers();
    let shape = BloomConfig::bloom_560m();
    let weights = mananera_model::random::weights(&shape, 0).map_err(|e| failed(&e))?;
    let model = if method == "lora" {
        let spec = LoraSpec {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: TARGETS.map(String::from).to_vec(),
        };
        let adapter = Adapter::init(&spec, &shape, 0).map_err(|e| failed(&e))?;
        Model::lora(shape.clone(), weights, adapter)
    } else {
        Model::full(shape.clone(), weights).map_err(|e| failed(&e))?
    };
    let head_rows = args.head_rows.unwrap_or(shape.vocab_size);
    let model = match args.head_rows {
        Some(rows) => {
            let kept = Vocabulary::new((0..rows as u32).collect(), shape.vocab_size)
                .map_err(|e| failed(&e))?;
            model.with_vocabulary(kept).map_err(|e| failed(&e))?
        }
        None => model,
    };
    let vars: Vec<_> = model.trainable().into_iter().map(|(_, v)| v).collect();
    let trainable_params = vars.iter().map(|v| v.elem_count()).sum();
    let lr = if method == "lora" { 1e-4 } else { 1e-5 };
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut optimizer = AdamW::new(vars, params).map_err(|e| failed(&e))?;
    let ids: Vec<u32> = (0..args.block as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 8) % head_rows as u32)
        .collect();
    let blocks = vec![ids];
    let build_peak = memory_mb("VmHWM:");
    reset_peak_memory();
    let mut times = Vec::new();
    for step in 0..=args.steps {
        let started = Instant::now();
        optimizer_step(
            &model,
            &mut optimizer,
            Blocks::scored(&blocks),
            &[&[0]],
            lr,
            1.0,
            0,
        )
        .map_err(|e| failed(&e))?;
        if step > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(Measurement {
        engine: "mananera (candle)",
        method: method.to_string(),
        block: args.block,
        batch: 1,
        steps: args.steps,
        head_rows,
        tokens_per_s: (args.block * args.steps) as f64 / total,
        step_s_median: times[times.len() / 2],
        peak_rss_mb: memory_mb("VmHWM:"),
        peak_rss_incl_build_mb: build_peak.max(memory_mb("VmHWM:")),
        trainable_params,
    })
}

impl Run for BenchTrainArgs {
    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(self, ctx.format)
    }
}
