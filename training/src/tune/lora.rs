//! LoRA adapters under training: low-rank updates `W + (alpha / r) · B A` on chosen linear
//! layers, as trainable variables. Their files are PEFT's layout, read and written by
//! [`mananera_model::adapter`] (which the engine reads too).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use mananera_model::BloomConfig;
use mananera_model::adapter::{AdapterFiles, LoraSpec};
use rand::{Rng, SeedableRng};

use super::TrainError;

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

impl Adapter {
    /// A fresh adapter with PEFT's default initialisation: A uniform in ±1/√in
    /// (kaiming-uniform with a = √5), B zero, so training starts from the base model exactly.
    pub fn init(spec: &LoraSpec, config: &BloomConfig, seed: u64) -> Result<Self, TrainError> {
        spec.validate().map_err(TrainError::Config)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut pairs = BTreeMap::new();
        for linear in config.linears() {
            let (module, out, inp) = (linear.module, linear.out, linear.inp);
            if !spec.targets_module(&module) {
                continue;
            }
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..spec.rank * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.rank, inp), &Device::Cpu)?)?;
            let b = Var::zeros((out, spec.rank), DType::F32, &Device::Cpu)?;
            pairs.insert(module, pair(spec, a, b));
        }
        Ok(Self {
            spec: spec.clone(),
            pairs,
        })
    }

    /// Reads a PEFT adapter directory and checks it against the model it will adapt.
    pub fn load(dir: &Path, config: &BloomConfig) -> Result<Self, TrainError> {
        let files = AdapterFiles::read(dir, config)?;
        let spec = files.spec;
        let mut pairs = BTreeMap::new();
        for (module, (a, b)) in files.pairs {
            let trainable = pair(&spec, Var::from_tensor(&a)?, Var::from_tensor(&b)?);
            pairs.insert(module, trainable);
        }
        Ok(Self { spec, pairs })
    }

    /// Writes the adapter in PEFT's layout into `dir` (which must exist), each file atomically.
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<(), TrainError> {
        Ok(self.files().write(dir, base_model)?)
    }

    /// The adapter's current values, as its files hold them.
    fn files(&self) -> AdapterFiles {
        AdapterFiles {
            spec: self.spec.clone(),
            pairs: self
                .pairs
                .iter()
                .map(|(module, pair)| {
                    let a = pair.a.as_tensor().clone();
                    (module.clone(), (a, pair.b.as_tensor().clone()))
                })
                .collect(),
        }
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
        Ok(self.files().deltas()?)
    }
}

/// The trainable pair `spec` describes, from `a` and `b`.
fn pair(spec: &LoraSpec, a: Var, b: Var) -> Pair {
    Pair {
        a,
        b,
        scaling: spec.scaling(),
        dropout: spec.dropout,
    }
}
