//! `mananera generate "tema"`: stream a speech to stdout, or print it as JSON.

use std::io::Write;
use std::ops::ControlFlow;

use crate::commands::args::{ModelArgs, SamplingArgs};
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::{Exit, Failure};
use mananera_engine::{Engine, Prompt};

/// `mananera generate TOPIC`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The topic or opening words.
    pub topic: String,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

impl Run for GenerateArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = self.model.overrides();
        out.extend(self.sampling.overrides());
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(&ctx.config, &self.topic, ctx.format)
    }
}

/// Loads the model and generates from `topic` in the configured voice, with the configured
/// sampling settings.
pub fn run(config: &Config, topic: &str, format: Format) -> Result<(), Failure> {
    let voices = config.voices().map_err(|message| Failure {
        exit: Exit::Usage,
        message,
    })?;
    let voice = voices.default_voice();
    let engine = Engine::load(&config.engine_options())?;
    let mut stdout = std::io::stdout().lock();
    let prompt = Prompt {
        header: &voice.header,
        text: topic,
    };
    let generation = engine.generate(prompt, &config.generation.sampling, |delta| {
        if format == Format::Text {
            // A closed pipe (e.g. `| head`) cancels instead of failing.
            if stdout
                .write_all(delta.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    let t = &generation.timings;
    tracing::info!(
        prompt_tokens = t.prompt_tokens,
        new_tokens = t.new_tokens,
        prefill_ms = format!("{:.0}", t.prefill_ms),
        decode_tok_s = format!("{:.1}", t.decode_tokens_per_s),
        stop = ?generation.stop_reason,
        seed = generation.seed,
        voice = %voice.id,
        "generation finished"
    );
    match format {
        Format::Text => {
            let _ = writeln!(stdout);
            Ok(())
        }
        Format::Json | Format::Jsonl => super::print_json(&generation),
    }
}
