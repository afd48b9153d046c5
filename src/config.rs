//! Settings: `config.toml`, overridden by `MANANERA_<SECTION>_<KEY>` environment variables,
//! then by `--set section.key=value` and the commands' own flags (last wins).
//!
//! Every error names the setting, where its value came from and what is accepted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mananera_training::fetch::Politeness;
use mananera_training::scrape::{ScrapeConfig, select_sources};
use mananera_training::source::Source;
use mananera_training::tune::TrainingConfig;
use mananera_training::turns::CleaningRules;
use mananera_training::{Cleaning, CorpusConfig};

use mananera_bots::{DiscordConfig, TelegramConfig};

use crate::language::Language;
use crate::publish::PublishConfig;
use crate::schedule::NightlyConfig;
use crate::service::cache::CacheConfig;
use crate::service::limits::LimitsConfig;
use crate::service::queue::QueueConfig;
use crate::voices::Voices;
use mananera_engine::finetuned::Choice;
use mananera_engine::{EngineOptions, Quantization, SamplingParams};
use mananera_model::checkpoint::ModelSource;

/// Everything `config.toml` can hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub engine: EngineConfig,
    pub generation: GenerationConfig,
    pub corpus: CorpusConfig,
    pub cleaning: CleaningRules,
    pub scrape: ScrapeConfig,
    pub http: Politeness,
    pub serve: ServeConfig,
    pub queue: QueueConfig,
    pub cache: CacheConfig,
    pub limits: LimitsConfig,
    pub discord: DiscordConfig,
    pub telegram: TelegramConfig,
    pub training: TrainingConfig,
    pub nightly: NightlyConfig,
    pub publish: PublishConfig,
}

/// `[generation]`: the sampling defaults of every request, and the voice of one that names
/// none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationConfig {
    /// A `voice` of `[[corpus.speakers]]`.
    pub voice: String,
    #[serde(flatten)]
    pub sampling: SamplingParams,
}

/// By hand: serde's `flatten` would let unknown keys through, and a misspelt setting must be
/// refused like in every other section.
impl<'de> Deserialize<'de> for GenerationConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let voice = match table.remove("voice") {
            None => default_voice(),
            Some(toml::Value::String(voice)) => voice,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "voice: expected a string such as \"amlo\", found a {}",
                    other.type_str()
                )));
            }
        };
        let sampling =
            SamplingParams::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(Self { voice, sampling })
    }
}

fn default_voice() -> String {
    "amlo".into()
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            voice: default_voice(),
            sampling: SamplingParams::default(),
        }
    }
}

/// `[serve]`: the daemon's web server and what a request may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address of the web page and HTTP API.
    pub listen: String,
    /// Must be true to listen on an address other machines can reach.
    pub allow_remote: bool,
    /// File holding a bearer token that `/api/*` then requires (also `$MANANERA_API_TOKEN`).
    pub api_token_file: String,
    /// Prompt cache and user limits (sled); empty means `$XDG_STATE_HOME/mananera/state`.
    pub state_dir: String,
    /// The language of what people read (the bots, the page, the API's `message`).
    pub language: Language,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Longest topic accepted, in characters.
    pub max_topic_chars: usize,
    /// Most tokens a request may ask for.
    pub max_new_tokens: usize,
    /// Highest temperature a request may ask for.
    pub max_temperature: f64,
    /// Unix socket for `mananera status|retrain|rollback`; empty means
    /// `$RUNTIME_DIRECTORY/control.sock`, else `$XDG_RUNTIME_DIR/mananera/control.sock`,
    /// else `control.sock` in the state directory.
    pub control_socket: String,
    /// Open connections to the web server at most; past it new ones are closed at once.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_s: u64,
    /// Seconds a connection may pass without a byte read or written before it is closed.
    pub idle_timeout_s: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            allow_remote: false,
            api_token_file: String::new(),
            state_dir: String::new(),
            language: Language::Es,
            max_body_bytes: 16 * 1024,
            max_topic_chars: 200,
            max_new_tokens: 512,
            max_temperature: 2.0,
            control_socket: String::new(),
            max_connections: 512,
            header_timeout_s: 10,
            idle_timeout_s: 60,
        }
    }
}

impl ServeConfig {
    /// Refuses limits that would refuse every request.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_topic_chars == 0 || self.max_new_tokens == 0 {
            return Err("serve.max_topic_chars and serve.max_new_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// Which checkpoint to serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A Hugging Face repository id or a local checkpoint directory.
    pub id: String,
    /// Hub branch, tag or commit to pin.
    pub revision: String,
    /// Cache for downloads; empty means `$XDG_CACHE_HOME/mananera` (or `~/.cache/mananera`).
    pub cache_dir: String,
    /// Never use the network (also turned on by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// The fine-tuned version served on top: "current", "base" or an id such as "v0003".
    pub version: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            id: "bigscience/bloom-560m".into(),
            revision: "main".into(),
            cache_dir: String::new(),
            offline: false,
            version: "current".into(),
        }
    }
}

impl ModelConfig {
    /// Refuses an empty model id and a version that is none.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err(
                "model.id is empty: set a Hub repository id or a checkpoint directory".into(),
            );
        }
        Choice::parse(&self.version).map_err(|e| format!("model.version = {e}"))?;
        Ok(())
    }
}

/// How the model runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Only `cpu` in this build.
    pub device: String,
    /// `none` (f32), `f16`, `q8_0`, `q4_0` or `q4k`: weights converted in-process at load time.
    pub quantization: Quantization,
    /// Worker threads for the matrix code; 0 uses every core.
    pub threads: usize,
    /// Cap on prompt plus generated tokens.
    pub max_context: usize,
    /// Trimmed-vocabulary file from `mananera vocab`; empty serves every token.
    pub vocabulary: String,
    /// Where speeches are written: this process, or an OpenAI-compatible server.
    pub backend: BackendKind,
    /// The `openai` backend's address, e.g. `http://gpu-box:8000` (`/v1` may end it).
    pub backend_url: String,
    /// The model name the server serves: requests go to the model listed by `/v1/models`
    /// as this name, or as `<name>-<version>` (how a published version is served).
    pub backend_model: String,
    /// A file holding the server's API key (else `$MANANERA_BACKEND_TOKEN`, else systemd's
    /// credential `backend-token`); none sends no `Authorization` header.
    pub backend_token_file: String,
    /// Seconds to connect to the server.
    pub backend_connect_timeout_s: u64,
    /// Seconds for the server to start answering a request (its response headers).
    pub backend_timeout_s: u64,
    /// Seconds of silence in a streamed answer after which it is abandoned.
    pub backend_idle_timeout_s: u64,
    /// Requests sent to the server at once; more wait in `queue.capacity`.
    pub backend_max_concurrent: usize,
    /// Seconds between two checks of the server's `/v1/models` while it answers (after a
    /// failure the checks back off from 1 s to a minute).
    pub backend_poll_s: u64,
}

/// `engine.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The in-process engine.
    #[default]
    Local,
    /// An OpenAI-compatible `/v1/completions` server (vLLM, TGI, llama.cpp's `llama-server`).
    Openai,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            quantization: Quantization::Q8_0,
            threads: 0,
            max_context: 2048,
            vocabulary: String::new(),
            backend: BackendKind::Local,
            backend_url: String::new(),
            backend_model: "mananera".into(),
            backend_token_file: String::new(),
            backend_connect_timeout_s: 5,
            backend_timeout_s: 30,
            backend_idle_timeout_s: 30,
            backend_max_concurrent: 8,
            backend_poll_s: 10,
        }
    }
}

impl EngineConfig {
    /// Refuses a device this build does not have, a context too short to generate in, and an
    /// `openai` backend without an http(s) address or with a wait that never ends.
    pub fn validate(&self) -> Result<(), String> {
        if self.device != "cpu" {
            return Err(format!(
                "engine.device = \"{}\": this build runs on the CPU only; set it to \"cpu\"",
                self.device
            ));
        }
        if self.max_context < 2 {
            return Err(format!(
                "engine.max_context = {}: must be at least 2",
                self.max_context
            ));
        }
        if self.backend == BackendKind::Openai {
            crate::service::remote::base_url(&self.backend_url)?;
            if self.backend_model.trim().is_empty() {
                return Err("engine.backend_model is empty: name the model the server serves (its id in /v1/models)".into());
            }
            let zero = [
                ("backend_connect_timeout_s", self.backend_connect_timeout_s),
                ("backend_timeout_s", self.backend_timeout_s),
                ("backend_idle_timeout_s", self.backend_idle_timeout_s),
                ("backend_max_concurrent", self.backend_max_concurrent as u64),
                ("backend_poll_s", self.backend_poll_s),
            ];
            if let Some((key, _)) = zero.iter().find(|(_, v)| *v == 0) {
                return Err(format!(
                    "engine.{key} = 0: it must be at least 1 (no call to the backend may wait for ever)"
                ));
            }
        }
        Ok(())
    }
}

/// A setting given outside the config file, and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub origin: String,
}

impl Override {
    /// Parses `section.key=value` as given to `--set`.
    pub fn parse_set(arg: &str) -> Result<Self, String> {
        let (key, value) = arg.split_once('=').ok_or_else(|| {
            format!("--set {arg}: expected section.key=value, e.g. --set engine.threads=2")
        })?;
        Ok(Self {
            key: key.trim().to_string(),
            value: value.to_string(),
            origin: format!("--set {arg}"),
        })
    }
}

/// Prefix of the environment variables that override settings.
const ENV_PREFIX: &str = "MANANERA_";

impl Config {
    /// Loads `path` (or the defaults when `path` is `None` and `./config.toml` does not
    /// exist), then applies environment overrides and `overrides` in order.
    pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<Self, String> {
        let (mut table, file_name) = match path {
            Some(path) => (read_table(path)?, path.display().to_string()),
            None if Path::new("config.toml").is_file() => {
                (read_table(Path::new("config.toml"))?, "config.toml".into())
            }
            None => (toml::Table::new(), "built-in defaults".into()),
        };
        let check = |table: &toml::Table| {
            Self::from_table(table.clone()).and_then(|c| c.validate().map(|()| c))
        };
        let mut all = env_overrides();
        all.extend_from_slice(overrides);
        let mut applied = table.clone();
        for o in &all {
            apply(&mut applied, o)?;
        }
        let error = match check(&applied) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        // Blame a bad value on the override that brought it (the first after which the final
        // error shows), not on the file; settings that only make sense together
        // (engine.backend and engine.backend_url) may come in any order.
        if check(&table).is_err_and(|e| e == error) {
            return Err(format!("{file_name}: {error}"));
        }
        for o in &all {
            apply(&mut table, o)?;
            if check(&table).is_err_and(|e| e == error) {
                return Err(format!("{}: {error}", o.origin));
            }
        }
        Err(format!("{file_name}: {error}"))
    }

    fn from_table(table: toml::Table) -> Result<Self, String> {
        Config::deserialize(toml::Value::Table(table)).map_err(|e| e.to_string().trim().to_string())
    }

    /// Every section checks its own settings; the ones that need two sections (the
    /// compiled cleaning rules and sources, the listening address) are checked here.
    fn validate(&self) -> Result<(), String> {
        self.engine.validate()?;
        self.publish.validate()?;
        self.model.validate()?;
        self.training.validate().map_err(|e| e.to_string())?;
        self.nightly.validate()?;
        self.generation
            .sampling
            .validate()
            .map_err(|e| format!("[generation] {e}"))?;
        self.corpus.validate()?;
        self.voices()?;
        self.cleaning()?;
        self.sources()?;
        self.listen_addr()?;
        self.queue.validate()?;
        self.cache.validate()?;
        self.limits.validate()?;
        self.serve.validate()
    }

    /// The web server's address, refusing one reachable from other machines unless
    /// `serve.allow_remote` says so.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, String> {
        let listen = &self.serve.listen;
        let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
            format!(
                "serve.listen = \"{listen}\": not an address ({e}); use e.g. \"127.0.0.1:8080\""
            )
        })?;
        if !addr.ip().is_loopback() && !self.serve.allow_remote {
            return Err(format!(
                "serve.listen = \"{listen}\" is reachable from other machines: set serve.allow_remote = true \
                 to mean it (and protect the API with serve.api_token_file), or listen on 127.0.0.1"
            ));
        }
        Ok(addr)
    }

    /// The sled store's directory with defaults and `~` resolved.
    pub fn state_dir(&self) -> PathBuf {
        setting_dir(
            &self.serve.state_dir,
            "XDG_STATE_HOME",
            ".local/state",
            "mananera/state",
        )
    }

    /// The API's bearer token: `$MANANERA_API_TOKEN`, else the contents of
    /// `serve.api_token_file`, else systemd's credential `api-token`; `None` leaves the API
    /// open (and the admin API off).
    pub fn api_token(&self) -> Result<Option<String>, String> {
        let file =
            (!self.serve.api_token_file.is_empty()).then(|| Path::new(&self.serve.api_token_file));
        mananera_bots::find_secret_text("MANANERA_API_TOKEN", file, "api-token")
            .map_err(|e| format!("the API token (serve.api_token_file, $MANANERA_API_TOKEN or the api-token credential): {e}"))
    }

    /// The `openai` backend's API key: `$MANANERA_BACKEND_TOKEN`, else the contents of
    /// `engine.backend_token_file`, else systemd's credential `backend-token`; `None` sends
    /// none.
    pub fn backend_token(&self) -> Result<Option<String>, String> {
        let file = (!self.engine.backend_token_file.is_empty())
            .then(|| Path::new(&self.engine.backend_token_file));
        mananera_bots::find_secret_text("MANANERA_BACKEND_TOKEN", file, "backend-token").map_err(
            |e| format!("the backend's API key (engine.backend_token_file, $MANANERA_BACKEND_TOKEN or the backend-token credential): {e}"),
        )
    }

    /// The `openai` backend's settings, its API key read.
    pub fn backend_settings(&self) -> Result<crate::service::remote::Settings, String> {
        let e = &self.engine;
        crate::service::remote::Settings::new(crate::service::remote::Options {
            url: e.backend_url.clone(),
            model: e.backend_model.clone(),
            token: self.backend_token()?,
            connect_timeout_s: e.backend_connect_timeout_s,
            timeout_s: e.backend_timeout_s,
            idle_timeout_s: e.backend_idle_timeout_s,
            max_concurrent: e.backend_max_concurrent,
            poll_s: e.backend_poll_s,
            capacity: self.queue.capacity,
            grace_s: self.queue.grace_s,
            max_context: e.max_context,
        })
    }

    /// The voices requests may choose, and the default one.
    pub fn voices(&self) -> Result<Voices, String> {
        Voices::new(&self.corpus.speakers, &self.generation.voice)
    }

    /// The compiled speaker and cleaning rules.
    pub fn cleaning(&self) -> Result<Cleaning, String> {
        Cleaning::new(&self.corpus.speakers, &self.cleaning).map_err(|e| e.to_string())
    }

    /// The compiled transcript sources.
    pub fn sources(&self) -> Result<Vec<Source>, String> {
        select_sources(&self.scrape, None)
            .map(|s| s.sites)
            .map_err(|e| e.to_string())
    }

    /// The corpus directory with defaults and `~` resolved.
    pub fn corpus_dir(&self) -> PathBuf {
        setting_dir(
            &self.corpus.dir,
            "XDG_DATA_HOME",
            ".local/share",
            "mananera/corpus",
        )
    }

    /// The cache directory with defaults and `~` resolved.
    pub fn cache_dir(&self) -> PathBuf {
        setting_dir(
            &self.model.cache_dir,
            "XDG_CACHE_HOME",
            ".cache",
            "mananera",
        )
    }

    /// What the engine needs from these settings.
    pub fn engine_options(&self) -> EngineOptions {
        let offline_env = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        EngineOptions {
            source: ModelSource {
                model: self.model.id.clone(),
                revision: self.model.revision.clone(),
                cache_dir: self.cache_dir().join("hub"),
                offline: self.model.offline || offline_env,
            },
            quantization: self.engine.quantization,
            max_context: self.engine.max_context,
            vocabulary: (!self.engine.vocabulary.is_empty())
                .then(|| PathBuf::from(&self.engine.vocabulary)),
            version: Choice::parse(&self.model.version).unwrap_or(Choice::Current),
            versions_dir: self.versions_dir(),
        }
    }

    /// `publish.dir` with `~` resolved (empty: nothing is published).
    pub fn publish_dir(&self) -> Option<PathBuf> {
        self.publish
            .enabled()
            .then(|| setting_dir(self.publish.dir.trim(), "", "", ""))
    }

    /// The versions directory (`training.dir`) with defaults and `~` resolved.
    pub fn versions_dir(&self) -> PathBuf {
        setting_dir(
            &self.training.dir,
            "XDG_DATA_HOME",
            ".local/share",
            "mananera/versions",
        )
    }
}

/// A directory setting: `~/x` under the home directory, or when empty `<$xdg_var>/<sub>`
/// (`$xdg_var` defaulting to `~/<home_default>`).
fn setting_dir(setting: &str, xdg_var: &str, home_default: &str, sub: &str) -> PathBuf {
    match setting {
        "" => std::env::var_os(xdg_var)
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(home_default))
            .join(sub),
        dir => match dir.strip_prefix("~/") {
            Some(rest) => home().join(rest),
            None => PathBuf::from(dir),
        },
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn read_table(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: cannot read the config file ({e}); pass --config with an existing file",
            path.display()
        )
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))
}

/// `MANANERA_<SECTION>_<KEY>` for every section of the config, e.g.
/// `MANANERA_GENERATION_MAX_WORDS=80` or `MANANERA_MODEL_ID=/srv/bloom`.
/// Tokens read by name, never settings (and never echoed in a settings error).
const SECRET_VARIABLES: &[&str] = &[
    "MANANERA_API_TOKEN",
    "MANANERA_DISCORD_TOKEN",
    "MANANERA_TELEGRAM_TOKEN",
];

fn env_overrides() -> Vec<Override> {
    let sections: Vec<String> = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut found: Vec<Override> = std::env::vars()
        .filter(|(name, _)| !SECRET_VARIABLES.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            sections.iter().find_map(|section| {
                let key = rest
                    .strip_prefix(&section.to_ascii_uppercase())?
                    .strip_prefix('_')?;
                Some(Override {
                    key: format!("{section}.{}", key.to_ascii_lowercase()),
                    value: value.clone(),
                    origin: format!("environment variable {name}"),
                })
            })
        })
        .collect();
    found.sort_by(|a, b| a.key.cmp(&b.key));
    found
}

/// Sets `section.key` in `table`, reading the value as a TOML literal (number, bool, quoted
/// string) and otherwise as a bare string.
fn apply(table: &mut toml::Table, o: &Override) -> Result<(), String> {
    let (section, key) = o.key.split_once('.').ok_or_else(|| {
        format!(
            "{}: `{}` is not section.key (e.g. generation.temperature)",
            o.origin, o.key
        )
    })?;
    let value = format!("v = {}", o.value)
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(o.value.clone()));
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(format!("{}: `{section}` is not a section", o.origin));
    };
    section_table.insert(key.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mananera_bots::Shards;

    fn set(key: &str, value: &str) -> Override {
        Override {
            key: key.into(),
            value: value.into(),
            origin: format!("test {key}"),
        }
    }

    #[test]
    fn discord_shards_are_auto_or_a_count() {
        let load = |v: &str| {
            let set = Override::parse_set(&format!("discord.shards={v}")).unwrap();
            Config::load(None, &[set])
        };
        assert_eq!(load("\"auto\"").unwrap().discord.shards, Shards::Auto);
        assert_eq!(load("4").unwrap().discord.shards, Shards::Count(4));
        for bad in ["0", "-1", "\"many\""] {
            let e = load(bad).unwrap_err();
            assert!(e.contains("discord.shards = "), "{bad}: {e}");
        }
    }

    #[test]
    fn the_shipped_config_toml_equals_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let shipped = Config::from_table(read_table(&path).unwrap()).unwrap();
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn overrides_are_typed_and_blamed_on_their_origin() {
        let config = Config::load(
            None,
            &[set("generation.temperature", "0"), set("model.id", "a/b")],
        )
        .unwrap();
        assert_eq!(config.generation.sampling.temperature, 0.0);
        assert_eq!(config.model.id, "a/b");

        let err = Config::load(None, &[set("generation.temperature", "hot")]).unwrap_err();
        assert!(
            err.contains("test generation.temperature") && err.contains("temperature"),
            "{err}"
        );
        let err = Config::load(None, &[set("generation.tempreature", "1")]).unwrap_err();
        assert!(err.contains("tempreature"), "{err}");
        let err = Config::load(None, &[set("generation.top_p", "2")]).unwrap_err();
        assert!(err.contains("top_p"), "{err}");
    }
}
