//! A BLOOM checkpoint as a GGUF file (version 3), the format llama.cpp and Ollama load: the
//! same metadata, tensor names and fused-QKV order as llama.cpp's own `convert_hf_to_gguf.py`
//! writes for `BloomForCausalLM`, and the tokenizer's vocabulary and merges from
//! `tokenizer.json`. Written to a temporary file, synced, then renamed into place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::Tensor;

use crate::layout::{self, Projection};
use crate::{BloomConfig, Error, Result};

/// How the weight matrices are stored; norms and biases are always f32, as llama.cpp keeps
/// them. Quantized formats come from llama.cpp's `llama-quantize` on one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
}

impl GgufType {
    /// ggml's type id.
    fn ggml(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32` = 0, `MOSTLY_F16` = 1).
    fn file_type(self) -> u32 {
        self.ggml()
    }
}

/// GGUF's value type ids.
const U32: u32 = 4;
const I32: u32 = 5;
const F32: u32 = 6;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
/// Where tensor data starts and each tensor is placed (GGUF's default `general.alignment`).
const ALIGNMENT: u64 = 32;

/// A tokenizer's vocabulary as GGUF stores it.
struct Vocab {
    tokens: Vec<String>,
    /// 1 normal, 3 control (special tokens).
    types: Vec<i32>,
    merges: Vec<String>,
}

/// Reads `tokenizer.json`: the model's vocabulary (BPE or word-level) with its merges, and
/// the added tokens, padded to `vocab_size` rows with unused tokens as llama.cpp's converter
/// does.
fn vocab(tokenizer: &Path, vocab_size: usize) -> Result<Vocab> {
    let text = std::fs::read_to_string(tokenizer).map_err(|e| Error::io(tokenizer, e))?;
    let bad = |problem: String| Error::Checkpoint {
        path: tokenizer.to_path_buf(),
        problem,
        fix: "export a checkpoint whose tokenizer.json is the model's own (BPE or word-level)"
            .into(),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let model = &json["model"];
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
    let entries = model["vocab"].as_object().ok_or_else(|| {
        bad("no `model.vocab` object (only BPE and word-level tokenizers are supported)".into())
    })?;
    for (token, id) in entries {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("token {token:?} has no id")))?;
        by_id.insert(id as u32, (token.clone(), 1));
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            let kind = if added["special"].as_bool() == Some(true) {
                3
            } else {
                1
            };
            by_id.insert(id as u32, (content.to_string(), kind));
        }
    }
    if let Some(&largest) = by_id.keys().max()
        && largest as usize >= vocab_size
    {
        return Err(bad(format!(
            "token id {largest} is past the model's vocab_size {vocab_size}"
        )));
    }
    let (mut tokens, mut types) = (
        Vec::with_capacity(vocab_size),
        Vec::with_capacity(vocab_size),
    );
    for id in 0..vocab_size as u32 {
        let (token, kind) = by_id
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), 5));
        tokens.push(token);
        types.push(kind);
    }
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) if pair.len() == 2 => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            )),
            other => Err(bad(format!(
                "a merge that is neither \"a b\" nor [a, b]: {other}"
            ))),
        })
        .collect::<Result<_>>()?;
    Ok(Vocab {
        tokens,
        types,
        merges,
    })
}

/// One tensor of the file: its GGUF name, ggml dimensions (fastest first) and data.
struct Entry {
    name: String,
    dims: Vec<u64>,
    kind: u32,
    data: Vec<u8>,
}

/// `weights` (unprefixed names, as [`crate::checkpoint::Checkpoint::read_weights`] gives
/// them) as llama.cpp's BLOOM tensors: matrices in `dtype`, norms and biases f32, the fused
/// QKV rows regrouped from per-head `[q, k, v]` to all queries, all keys, all values.
fn entries(
    config: &BloomConfig,
    weights: &HashMap<String, Tensor>,
    dtype: GgufType,
) -> Result<Vec<Entry>> {
    let (h, heads) = (config.hidden_size, config.n_head);
    let head_dim = h / heads;
    let get = |name: &str| {
        weights.get(name).ok_or_else(|| Error::Checkpoint {
            path: "model.safetensors".into(),
            problem: format!("no tensor {name}"),
            fix: "export a complete BLOOM checkpoint".into(),
        })
    };
    let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
    let matrix = |name: String, t: &Tensor| -> Result<Entry> {
        let dims: Vec<u64> = t.dims().iter().rev().map(|&d| d as u64).collect();
        Ok(Entry {
            name,
            dims,
            kind: dtype.ggml(),
            data: encode(&values(t)?, dtype),
        })
    };
    let vector = |name: String, t: &Tensor| -> Result<Entry> {
        Ok(Entry {
            name,
            dims: vec![t.elem_count() as u64],
            kind: GgufType::F32.ggml(),
            data: encode(&values(t)?, GgufType::F32),
        })
    };
    // Rows of the fused projection in llama.cpp's order: every head's query, then keys, values.
    let regroup = |rows: &[f32], row_len: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len());
        for part in 0..3 {
            for head in 0..heads {
                let start = (head * 3 + part) * head_dim * row_len;
                out.extend_from_slice(&rows[start..start + head_dim * row_len]);
            }
        }
        out
    };
    let norm = |gguf: &str, hf: &str, out: &mut Vec<Entry>| -> Result<()> {
        out.push(vector(
            format!("{gguf}.weight"),
            get(&format!("{hf}.weight"))?,
        )?);
        out.push(vector(format!("{gguf}.bias"), get(&format!("{hf}.bias"))?)?);
        Ok(())
    };
    let mut out = vec![matrix(
        "token_embd.weight".into(),
        get(layout::WORD_EMBEDDINGS)?,
    )?];
    norm("token_embd_norm", layout::EMBEDDINGS_NORM, &mut out)?;
    for i in 0..config.n_layer {
        let blk = format!("blk.{i}");
        let [input_norm, post_norm] =
            layout::LAYER_NORMS.map(|n| format!("{}.{n}", layout::layer_prefix(i)));
        norm(&format!("{blk}.attn_norm"), &input_norm, &mut out)?;
        let qkv = Projection::QueryKeyValue.module(i);
        let weight = regroup(&values(get(&format!("{qkv}.weight"))?)?, h);
        out.push(Entry {
            name: format!("{blk}.attn_qkv.weight"),
            dims: vec![h as u64, 3 * h as u64],
            kind: dtype.ggml(),
            data: encode(&weight, dtype),
        });
        let bias = regroup(&values(get(&format!("{qkv}.bias"))?)?, 1);
        out.push(Entry {
            name: format!("{blk}.attn_qkv.bias"),
            dims: vec![3 * h as u64],
            kind: GgufType::F32.ggml(),
            data: encode(&bias, GgufType::F32),
        });
        for (gguf, projection) in [
            ("attn_output", Projection::Dense),
            ("ffn_up", Projection::HTo4h),
            ("ffn_down", Projection::FourHToH),
        ] {
            let module = projection.module(i);
            out.push(matrix(
                format!("{blk}.{gguf}.weight"),
                get(&format!("{module}.weight"))?,
            )?);
            out.push(vector(
                format!("{blk}.{gguf}.bias"),
                get(&format!("{module}.bias"))?,
            )?);
        }
        norm(&format!("{blk}.ffn_norm"), &post_norm, &mut out)?;
    }
    norm("output_norm", layout::FINAL_NORM, &mut out)?;
    Ok(out)
}

/// Little-endian f32 or IEEE half bytes.
fn encode(values: &[f32], dtype: GgufType) -> Vec<u8> {
    match dtype {
        GgufType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgufType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// GGUF's metadata values.
enum Value<'a> {
    U32(u32),
    F32(f32),
    Str(&'a str),
    Strings(&'a [String]),
    I32s(&'a [i32]),
}

/// Writes the checkpoint `weights` of `config`, with the vocabulary of `tokenizer`, as a
/// GGUF file at `out` that llama.cpp loads as a BLOOM model. A post-LayerNorm residual
/// (`apply_residual_connection_post_layernorm`) is refused: llama.cpp's BLOOM has none.
pub fn write(
    config: &BloomConfig,
    weights: &HashMap<String, Tensor>,
    tokenizer: &Path,
    dtype: GgufType,
    name: &str,
    out: &Path,
) -> Result<()> {
    if config.apply_residual_connection_post_layernorm {
        return Err(Error::Checkpoint {
            path: out.to_path_buf(),
            problem: "this checkpoint adds the residual after the LayerNorm \
                      (apply_residual_connection_post_layernorm), which llama.cpp's BLOOM \
                      does not do"
                .into(),
            fix: "serve it with mananera; llama.cpp cannot run it".into(),
        });
    }
    let vocab = vocab(tokenizer, config.vocab_size)?;
    let tensors = entries(config, weights, dtype)?;
    let h = config.hidden_size as u32;
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("bloom")),
        ("general.name", Value::Str(name)),
        ("general.file_type", Value::U32(dtype.file_type())),
        ("bloom.context_length", Value::U32(2048)),
        ("bloom.embedding_length", Value::U32(h)),
        ("bloom.feed_forward_length", Value::U32(4 * h)),
        ("bloom.block_count", Value::U32(config.n_layer as u32)),
        (
            "bloom.attention.head_count",
            Value::U32(config.n_head as u32),
        ),
        (
            "bloom.attention.head_count_kv",
            Value::U32(config.n_head as u32),
        ),
        (
            "bloom.attention.layer_norm_epsilon",
            Value::F32(config.layer_norm_epsilon as f32),
        ),
        ("tokenizer.ggml.model", Value::Str("gpt2")),
        ("tokenizer.ggml.pre", Value::Str("bloom")),
        ("tokenizer.ggml.tokens", Value::Strings(&vocab.tokens)),
        ("tokenizer.ggml.token_type", Value::I32s(&vocab.types)),
        ("tokenizer.ggml.merges", Value::Strings(&vocab.merges)),
        (
            "tokenizer.ggml.bos_token_id",
            Value::U32(config.bos_token_id),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Value::U32(config.eos_token_id),
        ),
        (
            "tokenizer.ggml.padding_token_id",
            Value::U32(config.pad_token_id),
        ),
    ];
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = parent.join(format!(
        ".{}.tmp",
        out.file_name()
            .map_or("model.gguf".into(), |n| n.to_string_lossy())
    ));
    let written = (|| -> std::io::Result<()> {
        let file = File::create(&temp)?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let mut head: Vec<u8> = b"GGUF".to_vec();
        head.extend(3u32.to_le_bytes());
        head.extend((tensors.len() as u64).to_le_bytes());
        head.extend((metadata.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        for (key, value) in &metadata {
            string(&mut head, key);
            match value {
                Value::U32(v) => {
                    head.extend(U32.to_le_bytes());
                    head.extend(v.to_le_bytes());
                }
                Value::F32(v) => {
                    head.extend(F32.to_le_bytes());
                    head.extend(v.to_le_bytes());
                }
                Value::Str(s) => {
                    head.extend(STRING.to_le_bytes());
                    string(&mut head, s);
                }
                Value::Strings(items) => {
                    head.extend(ARRAY.to_le_bytes());
                    head.extend(STRING.to_le_bytes());
                    head.extend((items.len() as u64).to_le_bytes());
                    for s in *items {
                        string(&mut head, s);
                    }
                }
                Value::I32s(items) => {
                    head.extend(ARRAY.to_le_bytes());
                    head.extend(I32.to_le_bytes());
                    head.extend((items.len() as u64).to_le_bytes());
                    for v in *items {
                        head.extend(v.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        for t in &tensors {
            string(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(t.kind.to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(ALIGNMENT);
        }
        head.resize((head.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
        w.write_all(&head)?;
        for t in &tensors {
            w.write_all(&t.data)?;
            let pad = (t.data.len() as u64).next_multiple_of(ALIGNMENT) - t.data.len() as u64;
            w.write_all(&vec![0u8; pad as usize])?;
        }
        w.flush()?;
        drop(w);
        file.sync_all()?;
        std::fs::rename(&temp, out)?;
        if let Ok(dir) = File::open(parent) {
            dir.sync_all()?;
        }
        Ok(())
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io(out, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BloomConfig {
        BloomConfig {
            vocab_size: 16,
            hidden_size: 8,
            n_layer: 1,
            n_head: 2,
            ..BloomConfig::bloom_560m()
        }
    }

    #[test]
    fn the_fused_projection_is_regrouped_as_llama_cpp_converts_it() {
        let config = tiny();
        let weights = crate::random::weights(&config, 3).unwrap();
        let tensors = entries(&config, &weights, GgufType::F32).unwrap();
        let qkv = tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_qkv.weight")
            .unwrap();
        assert_eq!(qkv.dims, [8, 24], "ggml order: columns first");
        let rows: Vec<f32> = qkv
            .data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let hf: Vec<Vec<f32>> = weights["h.0.self_attention.query_key_value.weight"]
            .to_vec2()
            .unwrap();
        // HF rows: head 0's q (0..4), k (4..8), v (8..12), then head 1's. GGUF: q of head 0,
        // q of head 1, k of head 0, …
        let gguf_row = |r: usize| &rows[r * 8..(r + 1) * 8];
        assert_eq!(gguf_row(0), hf[0].as_slice(), "head 0's first query row");
        assert_eq!(gguf_row(4), hf[12].as_slice(), "head 1's first query row");
        assert_eq!(gguf_row(8), hf[4].as_slice(), "head 0's first key row");
        assert_eq!(gguf_row(20), hf[20].as_slice(), "head 1's first value row");
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        // Embeddings and their norm, six weight-and-bias pairs a layer, the final norm.
        assert_eq!(names.len(), 1 + 2 + 12 * config.n_layer + 2, "{names:?}");
        assert!(names.contains(&"output_norm.bias") && !names.contains(&"output.weight"));
    }

    #[test]
    fn a_post_layernorm_checkpoint_is_refused() {
        let config = BloomConfig {
            apply_residual_connection_post_layernorm: true,
            ..tiny()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = write(
            &config,
            &HashMap::new(),
            &dir.path().join("tokenizer.json"),
            GgufType::F16,
            "x",
            &dir.path().join("x.gguf"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("llama.cpp cannot run it"), "{err}");
        assert!(!dir.path().join("x.gguf").exists());
    }
}
