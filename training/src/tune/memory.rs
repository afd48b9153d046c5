//! Whether a run fits in memory, estimated before anything is loaded: a run that cannot
//! fit is refused with the settings to lower, instead of being killed halfway.

use mananera_model::BloomConfig;

use super::{Method, TrainError, TrainingConfig};

/// Bytes a step is expected to hold at its peak: the weights (with gradients and both AdamW
/// moments for a full fine-tune), and per token of a micro-batch the activations backward
/// keeps (the vocabulary-wide logits and their softmax, every layer's projections, and the
/// attention scores, which grow with the block).
fn estimated_memory(shape: &BloomConfig, settings: &TrainingConfig) -> u64 {
    let (v, h, l, nh) = (
        shape.vocab_size as u64,
        shape.hidden_size as u64,
        shape.n_layer as u64,
        shape.n_head as u64,
    );
    let params = v * h + l * 12 * h * h;
    let weights = match settings.method {
        Method::Full => 16 * params,
        Method::Lora => 4 * params,
    };
    let s = settings.block_size as u64;
    let per_token = 4 * (4 * v + l * (24 * h + 3 * nh * s));
    weights + per_token * s * settings.batch_size as u64
}

/// Refuses a run that cannot fit in `available` bytes of memory, before touching anything.
pub(super) fn check(
    shape: &BloomConfig,
    settings: &TrainingConfig,
    available: Option<u64>,
) -> Result<(), TrainError> {
    let Some(available) = available else {
        return Ok(());
    };
    let needed = estimated_memory(shape, settings);
    if needed > available {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(TrainError::Config(format!(
            "training.block_size = {} with batch_size = {} ({} method) needs about {:.1} GiB, \
             and {:.1} GiB is available; lower block_size or batch_size (grad_accumulation \
             keeps the effective batch)",
            settings.block_size,
            settings.batch_size,
            settings.method,
            gib(needed),
            gib(available)
        )));
    }
    Ok(())
}

/// `MemAvailable` from /proc/meminfo, where there is one.
pub(super) fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
