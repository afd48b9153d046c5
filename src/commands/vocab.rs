//! `mananera vocab --output FILE CORPUS...`: the trimmed vocabulary of a corpus (every token
//! its texts use, plus the special tokens), for `engine.vocabulary`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::commands::args::push_model;
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::Failure;
use mananera_engine::{text::TextCodec, vocabulary};
use mananera_model::BloomConfig;

/// `mananera vocab FILES… -o OUT`.
#[derive(Debug, clap::Args)]
pub struct VocabArgs {
    /// UTF-8 text files whose tokens to keep.
    pub corpus: Vec<PathBuf>,
    /// Where to write the vocabulary file.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Hub repository id or local checkpoint directory whose tokenizer to use (model.id).
    #[arg(long)]
    pub model: Option<String>,
}

impl Run for VocabArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push_model(&mut out, self.model.as_deref());
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(&ctx.config, &self.corpus, &self.output, ctx.format)
    }
}

#[derive(Serialize)]
struct Report<'a> {
    output: &'a Path,
    kept: usize,
    vocab_size: usize,
}

/// Tokenizes `corpus` with the configured model's tokenizer and writes the vocabulary file.
pub fn run(
    config: &Config,
    corpus: &[PathBuf],
    output: &Path,
    format: Format,
) -> Result<(), Failure> {
    if corpus.is_empty() {
        return Err(Failure::usage("give at least one corpus text file"));
    }
    let texts = corpus
        .iter()
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| {
                Failure::usage(format!(
                    "{}: cannot read the corpus file as UTF-8 text ({e})",
                    p.display()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let files = config.engine_options().source.resolve()?;
    let model_config = BloomConfig::read(&files.config)?;
    let codec = TextCodec::load(&files.tokenizer)?;
    let ids = vocabulary::build(&codec, &model_config, texts.iter().map(String::as_str))?;
    vocabulary::write(output, &ids, model_config.vocab_size).map_err(|e| {
        Failure::usage(format!(
            "{}: cannot write the vocabulary ({e})",
            output.display()
        ))
    })?;
    let report = Report {
        output,
        kept: ids.len(),
        vocab_size: model_config.vocab_size,
    };
    match format {
        Format::Json | Format::Jsonl => super::print_json(&report),
        Format::Text => {
            println!(
                "kept {} of {} tokens ({:.1}% of the head) in {}",
                report.kept,
                report.vocab_size,
                100.0 * report.kept as f64 / report.vocab_size as f64,
                output.display()
            );
            Ok(())
        }
    }
}
