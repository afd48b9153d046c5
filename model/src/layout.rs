//! The tensors of a BLOOM checkpoint: their names and shapes, written down once. The engine
//! loads by these names, training reads and saves them, LoRA adapts the [`Projection`]s.
//!
//! Names are unprefixed, as bigscience's own files store them; `BloomForCausalLM` files add
//! `transformer.` in front (see [`crate::weights`]).

use crate::BloomConfig;

/// The token embedding matrix, `[vocab, hidden]`, also the tied language-model head.
pub const WORD_EMBEDDINGS: &str = "word_embeddings.weight";
/// The LayerNorm right after the embeddings.
pub const EMBEDDINGS_NORM: &str = "word_embeddings_layernorm";
/// The final LayerNorm.
pub const FINAL_NORM: &str = "ln_f";
/// An untied head, which some checkpoints store; BLOOM's own are tied.
pub const LM_HEAD: &str = "lm_head.weight";

/// The two LayerNorms of a layer, in the order the layer applies them.
pub const LAYER_NORMS: [&str; 2] = ["input_layernorm", "post_attention_layernorm"];

/// The four linear layers of a transformer layer: the ones quantization packs and LoRA adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// The fused query, key and value projection, `[3h, h]`.
    QueryKeyValue,
    /// Attention output, `[h, h]`.
    Dense,
    /// MLP up-projection, `[4h, h]`.
    HTo4h,
    /// MLP down-projection, `[h, 4h]`.
    FourHToH,
}

impl Projection {
    /// Every projection, in checkpoint order.
    pub const ALL: [Projection; 4] = [
        Projection::QueryKeyValue,
        Projection::Dense,
        Projection::HTo4h,
        Projection::FourHToH,
    ];

    /// PEFT's module name (what `target_modules` lists).
    pub const fn name(self) -> &'static str {
        match self {
            Projection::QueryKeyValue => "query_key_value",
            Projection::Dense => "dense",
            Projection::HTo4h => "dense_h_to_4h",
            Projection::FourHToH => "dense_4h_to_h",
        }
    }

    /// The module path in layer `layer`, e.g. `h.3.mlp.dense_h_to_4h`.
    pub fn module(self, layer: usize) -> String {
        let block = match self {
            Projection::QueryKeyValue | Projection::Dense => "self_attention",
            Projection::HTo4h | Projection::FourHToH => "mlp",
        };
        format!("{}.{block}.{}", layer_prefix(layer), self.name())
    }

    /// `(out, in)` for hidden size `h`.
    pub fn dims(self, h: usize) -> (usize, usize) {
        match self {
            Projection::QueryKeyValue => (3 * h, h),
            Projection::Dense => (h, h),
            Projection::HTo4h => (4 * h, h),
            Projection::FourHToH => (h, 4 * h),
        }
    }
}

/// `h.{layer}`: where a layer's tensors live.
pub fn layer_prefix(layer: usize) -> String {
    format!("h.{layer}")
}

/// A linear layer LoRA can adapt: its module path and `(out, in)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    /// The module path, e.g. `h.0.mlp.dense_h_to_4h`.
    pub module: String,
    /// Output and input sizes.
    pub out: usize,
    pub inp: usize,
}

impl BloomConfig {
    /// Every tensor of the model with its shape, in checkpoint order (tied head: no
    /// `lm_head.weight`).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (v, h) = (self.vocab_size, self.hidden_size);
        let norm = |name: &str| {
            [
                (format!("{name}.weight"), vec![h]),
                (format!("{name}.bias"), vec![h]),
            ]
        };
        let mut out = vec![(WORD_EMBEDDINGS.to_string(), vec![v, h])];
        out.extend(norm(EMBEDDINGS_NORM));
        for i in 0..self.n_layer {
            let layer = layer_prefix(i);
            let [input_norm, post_norm] = LAYER_NORMS.map(|n| format!("{layer}.{n}"));
            let linear = |p: Projection| {
                let (o, n) = p.dims(h);
                let module = p.module(i);
                [
                    (format!("{module}.weight"), vec![o, n]),
                    (format!("{module}.bias"), vec![o]),
                ]
            };
            out.extend(norm(&input_norm));
            out.extend(linear(Projection::QueryKeyValue));
            out.extend(linear(Projection::Dense));
            out.extend(norm(&post_norm));
            out.extend(linear(Projection::HTo4h));
            out.extend(linear(Projection::FourHToH));
        }
        out.extend(norm(FINAL_NORM));
        out
    }

    /// The linear layers LoRA can adapt, layer by layer in [`Projection::ALL`] order.
    pub fn linears(&self) -> Vec<Linear> {
        (0..self.n_layer)
            .flat_map(|i| {
                Projection::ALL.map(|p| {
                    let (out, inp) = p.dims(self.hidden_size);
                    Linear {
                        module: p.module(i),
                        out,
                        inp,
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_transformers_order_and_shapes() {
        let config = BloomConfig {
            n_layer: 1,
            ..BloomConfig::bloom_560m()
        };
        let names: Vec<String> = config.tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "word_embeddings.weight",
                "word_embeddings_layernorm.weight",
                "word_embeddings_layernorm.bias",
                "h.0.input_layernorm.weight",
                "h.0.input_layernorm.bias",
                "h.0.self_attention.query_key_value.weight",
                "h.0.self_attention.query_key_value.bias",
                "h.0.self_attention.dense.weight",
                "h.0.self_attention.dense.bias",
                "h.0.post_attention_layernorm.weight",
                "h.0.post_attention_layernorm.bias",
                "h.0.mlp.dense_h_to_4h.weight",
                "h.0.mlp.dense_h_to_4h.bias",
                "h.0.mlp.dense_4h_to_h.weight",
                "h.0.mlp.dense_4h_to_h.bias",
                "ln_f.weight",
                "ln_f.bias",
            ]
        );
        let params: usize = BloomConfig::bloom_560m()
            .tensors()
            .iter()
            .map(|(_, dims)| dims.iter().product::<usize>())
            .sum();
        // bigscience/bloom-560m's published parameter count.
        assert_eq!(params, 559_214_592);
        assert_eq!(
            config.linears()[3],
            Linear {
                module: "h.0.mlp.dense_4h_to_h".into(),
                out: 1024,
                inp: 4096
            }
        );
    }
}
