//! Tensors of a checkpoint, read from one or more memory-mapped safetensors files (or made
//! up at random, for benchmarks of a model shape without its download).
//!
//! Names are looked up with or without the `transformer.` prefix that `BloomForCausalLM`
//! adds (bigscience's own files have none); every tensor is checked against the shape the
//! config implies and converted to f32, the dtype the CPU path computes in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

use crate::{BloomConfig, Error, Result, random};

/// An open set of safetensors files and where each tensor lives.
pub struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    location: HashMap<String, usize>,
    prefix: &'static str,
    /// Weights drawn from this seed instead of read from files.
    random: Option<u64>,
    device: Device,
    /// Added to the named tensors as they load (a LoRA version's `scaling · B A`).
    deltas: HashMap<String, Tensor>,
}

/// The prefix `BloomForCausalLM.save_pretrained` puts in front of the base model's tensors.
const CAUSAL_LM_PREFIX: &str = "transformer.";

impl Weights {
    /// Memory-maps `files` and reads their headers; a truncated or corrupt file is reported
    /// by name.
    pub fn open(files: &[PathBuf], device: &Device) -> Result<Self> {
        let mut opened = Vec::with_capacity(files.len());
        let mut location = HashMap::new();
        for (index, path) in files.iter().enumerate() {
            // SAFETY: the mapping is read-only; mananera never writes checkpoint files while
            // they are mapped, and a file replaced on disk keeps its old inode for the mapping.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| corrupt(path, e))?;
            for (name, _) in st.tensors() {
                location.insert(name, index);
            }
            opened.push((path.clone(), st));
        }
        let tied = format!("{CAUSAL_LM_PREFIX}{}", crate::layout::WORD_EMBEDDINGS);
        let prefix = if location.contains_key(&tied) {
            CAUSAL_LM_PREFIX
        } else {
            ""
        };
        Ok(Self {
            files: opened,
            location,
            prefix,
            random: None,
            device: device.clone(),
            deltas: HashMap::new(),
        })
    }

    /// Weights drawn on demand from `seed` (see [`random`]): the same model
    /// `mananera random-model` writes and training's benchmarks start from. Only the tensors
    /// every BLOOM has exist (the head is tied).
    pub fn random(seed: u64, device: &Device) -> Self {
        Self {
            files: Vec::new(),
            location: HashMap::new(),
            prefix: "",
            random: Some(seed),
            device: device.clone(),
            deltas: HashMap::new(),
        }
    }

    /// Folds `deltas` (by unprefixed name) into the tensors as they load.
    pub fn add_deltas(&mut self, deltas: HashMap<String, Tensor>) {
        self.deltas.extend(deltas);
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tensor `name` (without prefix) as f32, which must have shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_optional(name, shape)?.ok_or_else(|| {
            let files: Vec<String> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            Error::checkpoint(
                self.files
                    .first()
                    .map_or(Path::new(""), |(p, _)| p.as_path()),
                format!(
                    "tensor `{name}` is missing (looked in {})",
                    files.join(", ")
                ),
                "the checkpoint is incomplete or not a BLOOM model: download it again, or point \
                 `model.id` at a BloomForCausalLM checkpoint",
            )
        })
    }

    /// Like [`Weights::get`], but `None` when the checkpoint has no such tensor
    /// (e.g. an untied `lm_head.weight`, which is optional).
    pub fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if let Some(seed) = self.random {
            return Ok((name != crate::layout::LM_HEAD)
                .then(|| random::tensor(name, shape, seed, &self.device))
                .transpose()?);
        }
        let key = [format!("{}{name}", self.prefix), name.to_string()]
            .into_iter()
            .find(|k| self.location.contains_key(k));
        let Some(key) = key else { return Ok(None) };
        let (path, st) = &self.files[self.location[&key]];
        let view = st.get(&key).map_err(|e| corrupt(path, e))?;
        if view.shape() != shape {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{key}` has shape {:?} but config.json implies {shape:?}",
                    view.shape()
                ),
                "config.json does not belong to these weights: use the config.json that was \
                 saved with this checkpoint",
            ));
        }
        let tensor = view.load(&self.device).map_err(|e| corrupt(path, e))?;
        let tensor = match tensor.dtype() {
            DType::F32 => tensor,
            DType::F16 | DType::BF16 => tensor.to_dtype(DType::F32)?,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{key}` is stored as {other:?}; only f32, f16 and bf16 are supported"
                    ),
                    "export the checkpoint in float32, float16 or bfloat16",
                ));
            }
        };
        match self.deltas.get(name) {
            Some(delta) => Ok(Some((tensor + delta)?)),
            None => Ok(Some(tensor)),
        }
    }

    /// Every tensor `config` implies, read into memory as f32 under unprefixed names: what
    /// training starts from.
    pub fn read_all(&self, config: &BloomConfig) -> Result<HashMap<String, Tensor>> {
        config
            .tensors()
            .into_iter()
            .map(|(name, dims)| {
                let tensor = self.get(&name, &dims)?;
                Ok((name, tensor))
            })
            .collect()
    }
}

fn corrupt(path: &Path, e: candle_core::Error) -> Error {
    Error::checkpoint(
        path,
        format!("not a readable safetensors file ({e})"),
        "the file is truncated or corrupt: delete it and download or export the checkpoint again",
    )
}
