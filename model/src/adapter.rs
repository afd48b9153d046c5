//! LoRA adapters as files: PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`),
//! so transformers and peft load what mananera trains, and mananera serves what they train.
//! An adapter is a low-rank update `W + (alpha / r) · B A` on chosen linear layers.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::layout::Projection;
use crate::{BloomConfig, Error, Result, fsio, tensors};

/// The layers LoRA can target, by PEFT's module names.
pub const TARGETS: [&str; 4] = [
    Projection::QueryKeyValue.name(),
    Projection::Dense.name(),
    Projection::HTo4h.name(),
    Projection::FourHToH.name(),
];

/// What an adapter is: rank, scale, dropout and targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// `r`, the rank of `B A`.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f32,
    /// PEFT module names adapted (see [`TARGETS`]).
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// Refuses a spec that cannot train: rank 0, a negative or NaN dropout, an unknown target.
    /// The message names the `training.*` setting.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rank == 0 {
            return Err(
                "training.lora_rank is 0; a LoRA rank must be at least 1 (8 is usual)".into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "training.lora_dropout is {}; it must be in [0, 1)",
                self.dropout
            ));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(format!(
                "training.lora_alpha is {}; it must be a positive number (2 × rank is usual)",
                self.alpha
            ));
        }
        if self.targets.is_empty() {
            return Err(format!(
                "training.lora_targets is empty; name some of {TARGETS:?}"
            ));
        }
        if let Some(bad) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(format!(
                "training.lora_targets has `{bad}`; BLOOM's linear layers are {TARGETS:?}"
            ));
        }
        Ok(())
    }

    /// `alpha / r`, the factor on `B A`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether module path `module` (e.g. `h.0.mlp.dense_h_to_4h`) is targeted: PEFT's rule,
    /// an exact name or a `.`-suffix, so `dense` does not match `dense_h_to_4h`.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// An adapter's content: its spec and, per adapted module path, `A` (`[r, in]`) and `B`
/// (`[out, r]`) as f32.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    /// The adapter's spec (`adapter_config.json`).
    pub spec: LoraSpec,
    /// Module path → (`A`, `B`).
    pub pairs: BTreeMap<String, (Tensor, Tensor)>,
}

/// PEFT's `adapter_config.json` (the fields mananera reads and writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: TargetModules,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    init_lora_weights: serde_json::Value,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    layers_to_transform: serde_json::Value,
}

/// PEFT writes target_modules as a list (a set in Python) or a regex string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's tensors.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PEFT_PREFIX: &str = "base_model.model.transformer.";

impl AdapterFiles {
    /// Reads a PEFT adapter directory and checks it against the model it will adapt.
    pub fn read(dir: &Path, config: &BloomConfig) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let peft: PeftConfig = serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(
                &config_path,
                format!("not a PEFT adapter config ({e})"),
                "train the version again, or copy adapter_config.json from where it was trained",
            )
        })?;
        let unsupported = |what: &str| {
            Error::checkpoint(
                &config_path,
                format!("{what} is not supported"),
                "save the adapter as plain LoRA",
            )
        };
        if peft.peft_type != "LORA" {
            return Err(unsupported(&format!("peft_type {}", peft.peft_type)));
        }
        if peft.use_rslora || peft.use_dora || peft.fan_in_fan_out {
            return Err(unsupported("rsLoRA, DoRA or fan_in_fan_out"));
        }
        if peft.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(unsupported("a trained bias"));
        }
        if !peft.rank_pattern.is_empty()
            || !peft.alpha_pattern.is_empty()
            || !peft.layers_to_transform.is_null()
            || peft.modules_to_save.as_ref().is_some_and(|m| !m.is_empty())
        {
            return Err(unsupported(
                "rank_pattern, alpha_pattern, layers_to_transform or modules_to_save",
            ));
        }
        let targets = match peft.target_modules {
            TargetModules::List(list) => list,
            TargetModules::Regex(_) => return Err(unsupported("a regex target_modules")),
        };
        let spec = LoraSpec {
            rank: peft.r,
            alpha: peft.lora_alpha,
            dropout: peft.lora_dropout,
            targets,
        };
        spec.validate().map_err(|problem| {
            Error::checkpoint(&config_path, problem, "save the adapter with a usable spec")
        })?;
        let mut tensors = tensors::load(&dir.join(WEIGHTS_FILE))?;
        let mismatch = |problem: String| {
            Error::checkpoint(
                dir,
                format!("the adapter does not fit this base model: {problem}"),
                "train it again on this base, or configure the base it was trained on (model.id)",
            )
        };
        let mut pairs = BTreeMap::new();
        for linear in config.linears() {
            let module = linear.module;
            let a_name = format!("{PEFT_PREFIX}{module}.lora_A.weight");
            let b_name = format!("{PEFT_PREFIX}{module}.lora_B.weight");
            let (Some(a), Some(b)) = (tensors.remove(&a_name), tensors.remove(&b_name)) else {
                if spec.targets_module(&module) {
                    return Err(mismatch(format!("it has no `{a_name}`/`{b_name}`")));
                }
                continue;
            };
            if a.dims() != [spec.rank, linear.inp] || b.dims() != [linear.out, spec.rank] {
                return Err(mismatch(format!(
                    "`{module}` has A {:?} and B {:?}, but this model needs [{}, {}] and [{}, {}]",
                    a.dims(),
                    b.dims(),
                    spec.rank,
                    linear.inp,
                    linear.out,
                    spec.rank
                )));
            }
            pairs.insert(module, (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?));
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(mismatch(format!(
                "tensor `{extra}` belongs to no layer of this model"
            )));
        }
        Ok(Self { spec, pairs })
    }

    /// Writes the adapter in PEFT's layout into `dir` (which must exist), each file atomically.
    pub fn write(&self, dir: &Path, base_model: &str) -> Result<()> {
        let config = PeftConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: self.spec.rank,
            lora_alpha: self.spec.alpha,
            lora_dropout: self.spec.dropout,
            target_modules: TargetModules::List(self.spec.targets.clone()),
            bias: Some("none".into()),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            base_model_name_or_path: Some(base_model.to_string()),
            inference_mode: true,
            init_lora_weights: serde_json::Value::Bool(true),
            modules_to_save: None,
            rank_pattern: serde_json::Map::new(),
            alpha_pattern: serde_json::Map::new(),
            layers_to_transform: serde_json::Value::Null,
        };
        let path = dir.join(CONFIG_FILE);
        fsio::write_atomic(&path, crate::versions::pretty(&config).as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        let tensors: Vec<(String, Tensor)> = self
            .pairs
            .iter()
            .flat_map(|(module, (a, b))| {
                [
                    (format!("{PEFT_PREFIX}{module}.lora_A.weight"), a.clone()),
                    (format!("{PEFT_PREFIX}{module}.lora_B.weight"), b.clone()),
                ]
            })
            .collect();
        tensors::save(&dir.join(WEIGHTS_FILE), &tensors)
    }

    /// `scaling · B A` per adapted weight name (`h.0.self_attention.dense.weight`): what a
    /// merge adds to the base, and what the engine folds into the weights as they load.
    pub fn deltas(&self) -> Result<HashMap<String, Tensor>> {
        let scaling = self.spec.scaling();
        self.pairs
            .iter()
            .map(|(module, (a, b))| Ok((format!("{module}.weight"), (b.matmul(a)? * scaling)?)))
            .collect()
    }
}
