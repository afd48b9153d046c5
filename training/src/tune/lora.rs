//! LoRA adapters: low-rank updates `W + (alpha / r) · B A` on chosen linear layers, stored in
//! PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`) so that transformers
//! and peft load them unchanged, and the engine can apply them at load time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::model::Shape;
use crate::fsio;

/// The layers LoRA can target, by PEFT's module names.
pub const TARGETS: [&str; 4] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

/// What an adapter is: rank, scale, dropout and targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// Refuses a spec that cannot train: rank 0, a negative or NaN dropout, an unknown target.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.rank == 0 {
            return Err(TrainError::Config(
                "training.lora_rank is 0; a LoRA rank must be at least 1 (8 is usual)".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(TrainError::Config(format!(
                "training.lora_dropout is {}; it must be in [0, 1)",
                self.dropout
            )));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(TrainError::Config(format!(
                "training.lora_alpha is {}; it must be a positive number (2 × rank is usual)",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(TrainError::Config(format!(
                "training.lora_targets is empty; name some of {TARGETS:?}"
            )));
        }
        if let Some(bad) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(TrainError::Config(format!(
                "training.lora_targets has `{bad}`; BLOOM's linear layers are {TARGETS:?}"
            )));
        }
        Ok(())
    }

    /// `alpha / r`, the factor on `B A`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether module path `module` (e.g. `h.0.mlp.dense_h_to_4h`) is targeted: PEFT's rule,
    /// an exact name or a `.`-suffix, so `dense` does not match `dense_h_to_4h`.
    fn targets_module(&self, module: &str) -> bool {
        self.targets
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// One adapted layer's trainable pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`.
    pub b: Var,
    pub scaling: f64,
    pub dropout: f32,
}

/// An adapter for every targeted layer of one model.
#[derive(Debug, Clone)]
pub struct Adapter {
    spec: LoraSpec,
    pairs: BTreeMap<String, Pair>,
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

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PEFT_PREFIX: &str = "base_model.model.transformer.";

impl Adapter {
    /// A fresh adapter with PEFT's default initialisation: A uniform in ±1/√in
    /// (kaiming-uniform with a = √5), B zero, so training starts from the base model exactly.
    pub fn init(spec: &LoraSpec, shape: &Shape, seed: u64) -> Result<Self, TrainError> {
        spec.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut pairs = BTreeMap::new();
        for (module, out, inp) in shape.linears() {
            if !spec.targets_module(&module) {
                continue;
            }
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..spec.rank * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.rank, inp), &Device::Cpu)?)?;
            let b = Var::zeros((out, spec.rank), DType::F32, &Device::Cpu)?;
            pairs.insert(module, spec.pair(a, b));
        }
        Ok(Self {
            spec: spec.clone(),
            pairs,
        })
    }

    /// Reads a PEFT adapter directory and checks it against the model it will adapt.
    pub fn load(dir: &Path, shape: &Shape) -> Result<Self, TrainError> {
        let config_path = dir.join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
        let peft: PeftConfig = serde_json::from_str(&text).map_err(|e| {
            TrainError::Model(format!(
                "{}: not a PEFT adapter config ({e})",
                config_path.display()
            ))
        })?;
        let unsupported = |what: &str| {
            TrainError::Model(format!(
                "{}: {what} is not supported; save the adapter as plain LoRA",
                config_path.display()
            ))
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
        spec.validate()?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let mut tensors =
            candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
                TrainError::Model(format!(
                    "{}: not a readable safetensors file ({e})",
                    weights_path.display()
                ))
            })?;
        let mismatch = |problem: String| {
            TrainError::Model(format!(
                "the adapter in {} does not fit this base model: {problem}; train it again on \
                 this base, or configure the base it was trained on (model.id)",
                dir.display()
            ))
        };
        let mut pairs = BTreeMap::new();
        for (module, out, inp) in shape.linears() {
            let a_name = format!("{PEFT_PREFIX}{module}.lora_A.weight");
            let b_name = format!("{PEFT_PREFIX}{module}.lora_B.weight");
            let (Some(a), Some(b)) = (tensors.remove(&a_name), tensors.remove(&b_name)) else {
                if spec.targets_module(&module) {
                    return Err(mismatch(format!("it has no `{a_name}`/`{b_name}`")));
                }
                continue;
            };
            if a.dims() != [spec.rank, inp] || b.dims() != [out, spec.rank] {
                return Err(mismatch(format!(
                    "`{module}` has A {:?} and B {:?}, but this model needs [{}, {inp}] and [{out}, {}]",
                    a.dims(),
                    b.dims(),
                    spec.rank,
                    spec.rank
                )));
            }
            let a = Var::from_tensor(&a.to_dtype(DType::F32)?)?;
            let b = Var::from_tensor(&b.to_dtype(DType::F32)?)?;
            pairs.insert(module, spec.pair(a, b));
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(mismatch(format!(
                "tensor `{extra}` belongs to no layer of this model"
            )));
        }
        Ok(Self { spec, pairs })
    }

    /// Writes the adapter in PEFT's layout into `dir` (which must exist), each file atomically.
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<(), TrainError> {
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
        let json = super::versions::pretty(&config);
        fsio::write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
            .map_err(|e| TrainError::io(&dir.join(CONFIG_FILE), e))?;
        let tensors: Vec<(String, Tensor)> = self
            .pairs
            .iter()
            .flat_map(|(module, pair)| {
                [
                    (
                        format!("{PEFT_PREFIX}{module}.lora_A.weight"),
                        pair.a.as_tensor().clone(),
                    ),
                    (
                        format!("{PEFT_PREFIX}{module}.lora_B.weight"),
                        pair.b.as_tensor().clone(),
                    ),
                ]
            })
            .collect();
        super::tensors::save(&dir.join(WEIGHTS_FILE), &tensors)
    }

    /// The spec it was made with.
    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    /// The pair adapting `module`, if it is targeted.
    pub fn pair(&self, module: &str) -> Option<&Pair> {
        self.pairs.get(module)
    }

    /// Every trainable tensor, named as in PEFT's file (A then B per layer).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.pairs
            .iter()
            .flat_map(|(module, pair)| {
                [
                    (format!("{module}.lora_A"), pair.a.clone()),
                    (format!("{module}.lora_B"), pair.b.clone()),
                ]
            })
            .collect()
    }

    /// `scaling · B A` per adapted weight name (`h.0.self_attention.dense.weight`): what a
    /// merge adds to the base.
    pub fn deltas(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        self.pairs
            .iter()
            .map(|(module, pair)| {
                let delta = (pair.b.as_tensor().matmul(pair.a.as_tensor())? * pair.scaling)?;
                Ok((format!("{module}.weight"), delta))
            })
            .collect()
    }
}

impl LoraSpec {
    fn pair(&self, a: Var, b: Var) -> Pair {
        Pair {
            a,
            b,
            scaling: self.scaling(),
            dropout: self.dropout,
        }
    }
}
