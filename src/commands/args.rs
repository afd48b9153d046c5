//! Flag groups several subcommands share, each with the settings it overrides.

use std::path::PathBuf;

use crate::config::Override;

/// Options shared by the commands that load a model.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Hub repository id or local checkpoint directory (model.id).
    #[arg(long)]
    pub model: Option<String>,
    /// Weights in memory: none (f32), f16, q8_0, q4_0 or q4k (engine.quantization).
    #[arg(long)]
    pub quantization: Option<String>,
    /// Matrix worker threads, 0 = all cores (engine.threads).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// The settings these flags override.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push_model(&mut out, self.model.as_deref());
        push(
            &mut out,
            "engine.quantization",
            "--quantization",
            self.quantization.as_ref().map(|q| format!("{q:?}")),
        );
        push(
            &mut out,
            "engine.threads",
            "--threads",
            self.threads.map(|t| t.to_string()),
        );
        out
    }
}

/// Sampling flags of `generate`, mirroring `[generation]`.
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// 0 = off.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// 1 = off.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// 1 = off.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = no word limit.
    #[arg(long)]
    pub max_words: Option<usize>,
    /// Whose voice: a `voice` of [[corpus.speakers]] (amlo, sheinbaum); default generation.voice.
    #[arg(long)]
    pub voice: Option<String>,
}

impl SamplingArgs {
    /// The settings these flags override.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        let fields: [(&str, Option<String>); 8] = [
            ("voice", self.voice.clone()),
            ("temperature", self.temperature.map(|v| format!("{v:?}"))),
            ("top_k", self.top_k.map(|v| v.to_string())),
            ("top_p", self.top_p.map(|v| format!("{v:?}"))),
            (
                "repetition_penalty",
                self.repetition_penalty.map(|v| format!("{v:?}")),
            ),
            ("seed", self.seed.map(|v| v.to_string())),
            ("max_new_tokens", self.max_new_tokens.map(|v| v.to_string())),
            ("max_words", self.max_words.map(|v| v.to_string())),
        ];
        for (key, value) in fields {
            push(
                &mut out,
                &format!("generation.{key}"),
                &format!("--{}", key.replace('_', "-")),
                value,
            );
        }
        out
    }
}

/// Where the corpus lives, for every `scrape`/`corpus` command.
#[derive(Debug, clap::Args)]
pub struct CorpusArgs {
    /// Corpus directory (corpus.dir).
    #[arg(long, value_name = "DIR")]
    pub corpus_dir: Option<PathBuf>,
}

impl CorpusArgs {
    /// The settings these flags override.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push(
            &mut out,
            "corpus.dir",
            "--corpus-dir",
            self.corpus_dir
                .as_ref()
                .map(|d| format!("{:?}", d.display().to_string())),
        );
        out
    }
}

/// How to reach the running daemon.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The daemon's control socket (serve.control_socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl ControlArgs {
    /// The settings these flags override.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push(
            &mut out,
            "serve.control_socket",
            "--socket",
            self.socket
                .as_ref()
                .map(|d| format!("{:?}", d.display().to_string())),
        );
        out
    }
}

/// Adds `--model M` as the `model.id` override it stands for, when it was given.
pub(crate) fn push_model(out: &mut Vec<Override>, model: Option<&str>) {
    push(out, "model.id", "--model", model.map(|m| format!("{m:?}")));
}

/// Adds the override `key = value` from `flag`, when the flag was given.
pub(crate) fn push(out: &mut Vec<Override>, key: &str, flag: &str, value: Option<String>) {
    if let Some(value) = value {
        out.push(Override {
            key: key.into(),
            origin: format!("{flag} {value}"),
            value,
        });
    }
}
