//! Random BLOOM weights in transformers' initialisation (matrices from N(0, 0.02²), LayerNorm
//! gains 1 and biases 0), for benchmarks of a model's shape without its download and for
//! tests. Each tensor is drawn from its own generator, seeded by the run's seed and the
//! tensor's name, so the same seed gives the same model whichever tensors are asked for and in
//! whatever order (candle's own `randn` draws from an unseeded generator).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::BloomConfig;

/// Every tensor of `config`'s layout, drawn from `seed`.
pub fn weights(config: &BloomConfig, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    config
        .tensors()
        .into_iter()
        .map(|(name, dims)| {
            let tensor = tensor(&name, &dims, seed, &Device::Cpu)?;
            Ok((name, tensor))
        })
        .collect()
}

/// The tensor `name` of shape `dims`, drawn from `seed`.
pub fn tensor(
    name: &str,
    dims: &[usize],
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    match (dims.len(), name.ends_with(".bias")) {
        (1, true) => Tensor::zeros(dims, DType::F32, device),
        (1, false) => Tensor::ones(dims, DType::F32, device),
        _ => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ fnv1a(name));
            let count: usize = dims.iter().product();
            let mut values = Vec::with_capacity(count + 1);
            // Box–Muller: two uniform draws give two independent normal values.
            while values.len() < count {
                let u1: f32 = 1.0 - rng.random::<f32>();
                let u2: f32 = rng.random::<f32>();
                let radius = 0.02 * (-2.0 * u1.ln()).sqrt();
                let angle = std::f32::consts::TAU * u2;
                values.push(radius * angle.cos());
                values.push(radius * angle.sin());
            }
            values.truncate(count);
            Tensor::from_vec(values, dims, device)
        }
    }
}

/// FNV-1a: a stable hash of the name (std's hasher may change between releases).
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_model_and_seeds_differ() {
        let config = BloomConfig {
            vocab_size: 16,
            hidden_size: 8,
            n_layer: 1,
            n_head: 2,
            ..BloomConfig::bloom_560m()
        };
        let values = |seed: u64, name: &str| {
            weights(&config, seed).unwrap()[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let qkv = "h.0.self_attention.query_key_value.weight";
        assert_eq!(values(7, qkv), values(7, qkv));
        assert_ne!(values(7, qkv), values(8, qkv));
        // One tensor alone is the same tensor as in the whole model.
        let alone = tensor(qkv, &[24, 8], 7, &Device::Cpu).unwrap();
        assert_eq!(
            alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            values(7, qkv)
        );
        assert_eq!(values(7, "ln_f.weight"), vec![1.0; 8]);
        assert_eq!(values(7, "ln_f.bias"), vec![0.0; 8]);
        let std = {
            let v = values(7, "word_embeddings.weight");
            (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
        };
        assert!((0.01..0.04).contains(&std), "std {std}");
    }
}
