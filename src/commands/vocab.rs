//! `mananera vocab --output FILE CORPUS...`: the trimmed vocabulary of a corpus (every token
//! its texts use, plus the special tokens), for `engine.vocabulary`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{Failure, Format};
use crate::config::Config;
use crate::engine::{checkpoint, text::TextCodec, vocabulary};

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
    let model_config = checkpoint::read_config(&files.config)?;
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
