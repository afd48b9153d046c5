//! `mananera eval FILE`: how well the model predicts a text (perplexity), or the
//! log-probability of every token as JSON.

use std::path::Path;

use serde::Serialize;

use crate::commands::args::ModelArgs;
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::Failure;
use mananera_engine::{Engine, Prompt};

/// `mananera eval FILE`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// UTF-8 text file to score.
    pub file: std::path::PathBuf,
    /// Score the text in this voice (a `voice` of [[corpus.speakers]]): after its header, as
    /// training scores it. Default: the bare text.
    #[arg(long)]
    pub voice: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl Run for EvalArgs {
    fn overrides(&self) -> Vec<Override> {
        self.model.overrides()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(&ctx.config, &self.file, self.voice.as_deref(), ctx.format)
    }
}

#[derive(Serialize)]
struct Report<'a> {
    token_ids: &'a [u32],
    logprobs: &'a [f32],
    perplexity: f64,
}

/// Scores the UTF-8 text in `file`, after `voice`'s header when one is named.
pub fn run(
    config: &Config,
    file: &Path,
    voice: Option<&str>,
    format: Format,
) -> Result<(), Failure> {
    let voices = config.voices().map_err(Failure::usage)?;
    let header = match voice {
        None => "",
        Some(asked) => {
            &voices
                .choose(Some(asked))
                .map_err(|unknown| {
                    Failure::usage(format!(
                        "--voice {asked}: there is no such voice; the voices are {}",
                        unknown.known.join(", ")
                    ))
                })?
                .header
        }
    };
    let bytes = std::fs::read(file).map_err(|e| {
        Failure::usage(format!(
            "{}: cannot read the file to score ({e})",
            file.display()
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Failure::usage(format!(
            "{}: not UTF-8 text ({e}); convert it with iconv",
            file.display()
        ))
    })?;
    let engine = Engine::load(&config.engine_options())?;
    let scored = engine.score(Prompt {
        header,
        text: &text,
    })?;
    let perplexity = scored.perplexity();
    match format {
        Format::Json | Format::Jsonl => super::print_json(&Report {
            token_ids: &scored.token_ids,
            logprobs: &scored.logprobs,
            perplexity,
        }),
        Format::Text => {
            println!(
                "perplexity {perplexity:.4} over {} predicted tokens ({})",
                scored.logprobs.len(),
                file.display()
            );
            Ok(())
        }
    }
}
