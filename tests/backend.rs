//! `engine.backend = "openai"` end to end: the real daemon writing its speeches through a
//! loopback OpenAI-compatible server — the page and API, the cache, both bots — and what it
//! does when that server is down, slow, busy, garbled or serving another model.

mod daemon;
mod fake_chat;
mod fake_openai;

use std::time::{Duration, Instant};

use daemon::{BIN, Daemon, EventStream, generate, metric, status_of, tiny_model};
use fake_chat::discord::{self as dc, FakeDiscord};
use fake_chat::telegram::{self as tg, FakeTelegram};
use fake_openai::{FakeOpenAi, Mode, speech};
use serde_json::{Value, json};

const AMLO_HEADER: &str = "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR:\n";

/// `--set`s that send generation to `fake`, with short deadlines so failures show quickly.
fn backend(fake: &FakeOpenAi) -> Vec<String> {
    vec![
        "engine.backend=\"openai\"".into(),
        format!("engine.backend_url={:?}", format!("{}/v1", fake.url)),
        "engine.backend_timeout_s=2".into(),
        "engine.backend_idle_timeout_s=2".into(),
        "engine.backend_poll_s=1".into(),
        "limits.admins=[\"web:127.0.0.1\"]".into(),
    ]
}

fn start(fake: &FakeOpenAi, state: &std::path::Path, extra: &[&str]) -> Daemon {
    let sets = with(fake, extra);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    Daemon::start(&tiny_model(), state, &sets)
}

fn with(fake: &FakeOpenAi, extra: &[&str]) -> Vec<String> {
    let mut sets = backend(fake);
    sets.extend(extra.iter().map(|s| s.to_string()));
    sets
}

fn text(reply: &Value) -> String {
    reply["text"].as_str().unwrap_or_default().to_string()
}

/// Polls `check` every 100 ms until it gives a value, for at most `within`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(url: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_the_page_and_the_cache_answer_through_the_server_as_with_the_local_engine() {
    let fake = FakeOpenAi::start(&["mananera"]).await;
    let state = tempfile::tempdir().unwrap();
    let d = start(&fake, &state.path().join("s"), &[]);
    let (status, ready) = readyz(&d.url).await;
    assert_eq!(
        (status, ready["model_version"].clone()),
        (200, json!("mananera"))
    );

    // Streamed: the deltas are the server's pieces, UTF-8 intact, and end in `done`.
    let request = json!({"topic": "la refinería", "seed": 7, "max_words": 0, "max_new_tokens": 30,
        "temperature": 0.5, "top_k": 0});
    let stream = EventStream::open(&d.url, &request).await;
    let (streamed, end, done) = stream.finish(String::new()).await;
    assert_eq!(end, "done", "{done}");
    assert_eq!(streamed, speech("mananera", 30).concat());
    assert_eq!(done["stop_reason"], "max_new_tokens", "{done}");
    assert_eq!(done["model_version"], "mananera");
    assert_eq!(done["new_tokens"], 30, "the server's own count");

    // What the server was asked: the voice's header before the topic, the request's settings.
    let sent = fake.requests();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let body = &sent[0];
    assert_eq!(body["model"], "mananera");
    assert_eq!(body["prompt"], format!("{AMLO_HEADER}la refinería"));
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 30);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["top_k"], -1,
        "0 (off) is sent as vLLM's and llama.cpp's -1"
    );
    assert_eq!(body["seed"], 7);
    assert_eq!(
        body["repeat_last_n"], 2048,
        "llama-server refuses -1: the window is engine.max_context"
    );

    // The same request again comes from the cache: the server is not asked.
    let again = generate(&d.url, &request).await;
    assert_eq!(again.status, 200, "{:?}", again.json);
    assert_eq!(again.json["cached"], true);
    assert_eq!(text(&again.json), streamed);
    assert_eq!(fake.requests().len(), 1);

    // The word limit cuts the server's stream where the local engine would, and the stream
    // it no longer needs is closed.
    fake.set_mode(Mode::Speak {
        words: 200,
        delay: Duration::from_millis(20),
    });
    let limited = generate(
        &d.url,
        &json!({"topic": "el agua", "max_words": 12, "max_new_tokens": 200}),
    )
    .await;
    assert_eq!(limited.status, 200, "{:?}", limited.json);
    assert_eq!(limited.json["stop_reason"], "word_limit");
    let words = speech("mananera", 200);
    // Twelve words, then on to the end of the sentence at word 20.
    assert_eq!(text(&limited.json), words[..20].concat());
    eventually(Duration::from_secs(10), "closed stream", || async {
        (fake.abandoned() == 1).then_some(())
    })
    .await;

    // A caller that goes away closes the server's stream too.
    let mut stream = EventStream::open(
        &d.url,
        &json!({"topic": "el sargazo", "max_words": 0, "max_new_tokens": 200}),
    )
    .await;
    assert_eq!(stream.next().await.unwrap().0, "delta");
    drop(stream);
    eventually(
        Duration::from_secs(10),
        "the second closed stream",
        || async { (fake.abandoned() == 2).then_some(()) },
    )
    .await;

    // The other voice's header leads its prompt.
    let sheinbaum = generate(
        &d.url,
        &json!({"topic": "el agua", "voice": "sheinbaum", "max_words": 0, "max_new_tokens": 5}),
    )
    .await;
    assert_eq!(sheinbaum.json["voice"], "sheinbaum", "{:?}", sheinbaum.json);
    let last = fake.requests().pop().unwrap();
    assert_eq!(
        last["prompt"],
        "PRESIDENTA CLAUDIA SHEINBAUM PARDO:\nel agua"
    );

    // The page is served as ever.
    let page = reqwest::get(format!("{}/", d.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(metric(&d.url, "mananera_generated_tokens_total").await >= 50.0);
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_down_slow_busy_or_garbled_gets_clear_answers_never_a_hang() {
    // Down at start: the daemon listens, is not ready, and becomes ready once it answers.
    let fake = FakeOpenAi::start(&["mananera"]).await;
    fake.set_mode(Mode::Status {
        code: 503,
        retry_after: None,
        models_too: true,
    });
    let state = tempfile::tempdir().unwrap();
    let sets = with(&fake, &[]);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let d = Daemon::start_unready(&tiny_model(), &state.path().join("s"), &sets, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_of(&d.url, "/readyz"), Some(503));
    let loading = generate(&d.url, &json!({"topic": "el agua"})).await;
    assert_eq!(loading.status, 503, "{:?}", loading.json);
    fake.set_mode(Mode::Speak {
        words: 40,
        delay: Duration::from_millis(5),
    });
    d.wait_ready();

    let ask = |topic: &str| json!({"topic": topic, "max_words": 0, "max_new_tokens": 20});
    // Busy with Retry-After: that request fails saying when to come back; the next ones are
    // refused at once with the same wait until it is over; then all is well again.
    fake.set_mode(Mode::Status {
        code: 429,
        retry_after: Some(3),
        models_too: false,
    });
    let refused = generate(&d.url, &ask("uno")).await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert_eq!(refused.json["code"], "backend_failed");
    assert_eq!(refused.json["retry_after_s"], 3);
    assert_eq!(refused.retry_after.as_deref(), Some("3"));
    let asked = fake.requests().len();
    let held = generate(&d.url, &ask("dos")).await;
    assert_eq!(held.status, 503);
    assert_eq!(held.json["code"], "backend_unavailable", "{:?}", held.json);
    let wait: u64 = held.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    assert!(
        held.json["message"]
            .as_str()
            .unwrap()
            .contains("no está disponible"),
        "{:?}",
        held.json
    );
    assert_eq!(
        fake.requests().len(),
        asked,
        "held back without asking the server"
    );
    fake.set_mode(Mode::Speak {
        words: 40,
        delay: Duration::from_millis(5),
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ok = generate(&d.url, &ask("tres")).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json);

    // Never answering: the request fails after engine.backend_timeout_s, not later.
    fake.set_mode(Mode::Hang);
    let started = Instant::now();
    let hung = generate(&d.url, &ask("cuatro")).await;
    assert_eq!(hung.json["code"], "backend_failed", "{:?}", hung.json);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // It is then marked down until /v1/models answers again (the next check, within 1 s).
    fake.set_mode(Mode::Speak {
        words: 40,
        delay: Duration::from_millis(5),
    });
    eventually(Duration::from_secs(10), "ready again", || async {
        (status_of(&d.url, "/readyz") == Some(200)).then_some(())
    })
    .await;

    // Stalling mid-answer: the part already sent, then an error event after the idle timeout.
    fake.set_mode(Mode::Stall);
    let mut stream = EventStream::open(&d.url, &ask("cinco")).await;
    let (first, data) = stream.next().await.unwrap();
    assert_eq!(
        (first.as_str(), data["text"].clone()),
        ("delta", json!("Buenos"))
    );
    let (end, data) = stream.next().await.unwrap();
    assert_eq!(end, "error", "{data}");
    assert_eq!(data["code"], "backend_failed");
    eventually(Duration::from_secs(10), "ready again", || async {
        (status_of(&d.url, "/readyz") == Some(200)).then_some(())
    })
    .await;
    // A 5xx without Retry-After: down, and /readyz says why while it lasts.
    fake.set_mode(Mode::Status {
        code: 500,
        retry_after: None,
        models_too: true,
    });
    let failed = generate(&d.url, &ask("seis")).await;
    assert_eq!(failed.json["code"], "backend_failed", "{:?}", failed.json);
    let (status, ready) = readyz(&d.url).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready["error"].as_str().unwrap().contains("500"), "{ready}");
    assert_eq!(metric(&d.url, "mananera_backend_up").await, 0.0);
    // `mananera status` says it too.
    let out = std::process::Command::new(BIN)
        .args(["--format", "json", "status", "--set"])
        .arg(daemon::state_dir_setting(&d.state_dir))
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        shown["backend"]
            .as_str()
            .unwrap()
            .starts_with("openai http://"),
        "{shown}"
    );
    assert!(
        shown["backend_unavailable"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{shown}"
    );
    // Garbage in a 200 stream.
    fake.set_mode(Mode::Garbage);
    eventually(Duration::from_secs(10), "ready again", || async {
        (status_of(&d.url, "/readyz") == Some(200)).then_some(())
    })
    .await;
    assert_eq!(metric(&d.url, "mananera_backend_up").await, 1.0);
    let garbled = generate(&d.url, &ask("siete")).await;
    assert_eq!(garbled.json["code"], "backend_failed", "{:?}", garbled.json);
    assert!(d.log().contains("not a completion stream"), "{}", d.log());

    // Nothing that failed was cached: the same topics are asked of the server again.
    fake.set_mode(Mode::Speak {
        words: 40,
        delay: Duration::from_millis(5),
    });
    eventually(Duration::from_secs(10), "an answer", || async {
        let r = generate(&d.url, &ask("cuatro")).await;
        (r.status == 200).then_some(r)
    })
    .await;
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_on_the_server_is_served_with_its_own_cache_keys() {
    let fake = FakeOpenAi::start(&["mananera-v0001", "other-model"]).await;
    let state = tempfile::tempdir().unwrap();
    let d = start(&fake, &state.path().join("s"), &[]);
    let request = json!({"topic": "el agua", "seed": 1, "max_words": 0, "max_new_tokens": 10});
    let first = generate(&d.url, &request).await;
    assert_eq!(
        first.json["model_version"], "mananera-v0001",
        "{:?}",
        first.json
    );
    assert!(text(&first.json).starts_with("mananera-v0001:"));
    assert_eq!(generate(&d.url, &request).await.json["cached"], true);

    // A version published to the server: the next check sees it and the daemon follows.
    fake.set_models(&["mananera-v0002"]);
    eventually(
        Duration::from_secs(15),
        "the new version served",
        || async {
            let (_, ready) = readyz(&d.url).await;
            (ready["model_version"] == "mananera-v0002").then_some(())
        },
    )
    .await;
    let second = generate(&d.url, &request).await;
    assert_eq!(
        second.json["cached"], false,
        "the old version's speech is not served"
    );
    assert!(text(&second.json).starts_with("mananera-v0002:"));
    assert_eq!(fake.requests().last().unwrap()["model"], "mananera-v0002");
    assert!(
        d.log()
            .contains("serving the version the generation server reports")
    );
    d.terminate();
}

#[test]
fn bad_backend_and_publish_settings_are_refused_at_start_with_the_setting_named() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeOpenAi::start(&["someone-else"]));
    let state = tempfile::tempdir().unwrap();
    let serve = |sets: &[String]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--model"])
            .arg(tiny_model())
            .arg("--set")
            .arg(daemon::state_dir_setting(&state.path().join("s")))
            .env("MANANERA_NIGHTLY_ENABLED", "false")
            .env_remove("MANANERA_DISCORD_TOKEN")
            .env_remove("MANANERA_TELEGRAM_TOKEN");
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The server serves another model.
    let (code, stderr) = serve(&backend(&fake));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("engine.backend_model = \"mananera\""),
        "{stderr}"
    );
    assert!(stderr.contains("someone-else"), "{stderr}");
    // Not an http(s) address.
    let mut sets = backend(&fake);
    sets[1] = "engine.backend_url=\"ftp://127.0.0.1:1/\"".into();
    let (code, stderr) = serve(&sets);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("engine.backend_url = \"ftp://127.0.0.1:1/\""),
        "{stderr}"
    );
    // A wait that never ends.
    let mut sets = backend(&fake);
    sets.push("engine.backend_timeout_s=0".into());
    let (code, stderr) = serve(&sets);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("engine.backend_timeout_s = 0"), "{stderr}");
    // A publish directory that cannot be written.
    let mut sets = backend(&fake);
    sets.push("publish.dir=\"/proc/mananera-publish\"".into());
    let (code, stderr) = serve(&sets);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("publish.dir = \"/proc/mananera-publish\" cannot be written"),
        "{stderr}"
    );
}

/// The words of a text, for comparing a speech split into bot messages with the whole.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Both bots' platforms, faked on loopback.
struct Bots {
    discord: FakeDiscord,
    telegram: FakeTelegram,
}

impl Bots {
    async fn start() -> Self {
        Self {
            discord: FakeDiscord::start().await,
            telegram: FakeTelegram::start().await,
        }
    }

    /// The daemon with `sets`, both bots' tokens, and their APIs pointed at the fakes.
    fn daemon(&self, state: &std::path::Path, mut sets: Vec<String>) -> Daemon {
        sets.extend([
            format!("discord.api_proxy={:?}", self.discord.rest_url),
            format!("discord.guilds=[{}]", dc::GUILD_ID),
            format!("telegram.api_url={:?}", self.telegram.url),
            "telegram.poll_timeout_s=2".to_string(),
        ]);
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        Daemon::start_with_env(
            &tiny_model(),
            state,
            &sets,
            &[
                ("MANANERA_DISCORD_TOKEN", "discord-test-token"),
                ("MANANERA_TELEGRAM_TOKEN", "123:telegram-test-token"),
            ],
        )
    }

    /// `/mañanera tema:<topic>` on Discord, once the commands are registered: the words of
    /// the whole speech its messages show.
    async fn discord_speech(&self, topic: &str) -> Vec<String> {
        self.discord
            .wait_for(Duration::from_secs(30), "registration", |calls, _| {
                calls.iter().any(|c| c.method == "PUT").then_some(())
            })
            .await;
        let token = self.discord.slash("mañanera", Some(topic), "111", true);
        let pages = self
            .discord
            .wait_for(Duration::from_secs(60), "the whole speech", |calls, _| {
                let pages = dc::final_pages(calls, &token);
                (!pages[0].is_empty() && !pages.iter().any(|p| p.ends_with(" …"))).then_some(pages)
            })
            .await;
        words(&pages.join(" "))
    }

    /// `topic` said to the Telegram bot in a private chat, once it polls: the words of the
    /// whole speech its messages show.
    async fn telegram_speech(&self, topic: &str) -> Vec<String> {
        self.telegram
            .wait_for(Duration::from_secs(30), "long polling", |calls| {
                calls.iter().any(|c| c.method == "getupdates").then_some(())
            })
            .await;
        let start = self.telegram.calls().len();
        self.telegram.user_says(42, 42, topic, None);
        let texts = self
            .telegram
            .wait_for(Duration::from_secs(60), "the whole speech", |calls| {
                let texts = tg::final_messages(calls, 42, start);
                (!texts.is_empty() && !texts.iter().any(|t| t.ends_with(" …"))).then_some(texts)
            })
            .await;
        words(&texts.join(" "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_bots_answer_through_the_server() {
    let fake = FakeOpenAi::start(&["mananera"]).await;
    let bots = Bots::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut sets = backend(&fake);
    sets.extend([
        "generation.max_words=0".to_string(),
        "generation.max_new_tokens=40".to_string(),
    ]);
    let d = bots.daemon(&state.path().join("s"), sets);
    let whole = words(&speech("mananera", 40).concat());
    assert_eq!(bots.discord_speech("el agua").await, whole);
    assert_eq!(bots.telegram_speech("la refinería").await, whole);
    let prompts: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        prompts,
        [
            format!("{AMLO_HEADER}el agua"),
            format!("{AMLO_HEADER}la refinería")
        ]
    );
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_naming_a_model_the_server_does_not_serve_changes_nothing() {
    let fake = FakeOpenAi::start(&["mananera"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let write = |model: &str| {
        let text = format!(
            "[engine]\nbackend = \"openai\"\nbackend_url = \"{}\"\nbackend_model = \"{model}\"\nbackend_poll_s = 1\n",
            fake.url
        );
        std::fs::write(&config, text).unwrap();
    };
    write("mananera");
    let log = dir.path().join("daemon.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(tiny_model())
        .arg("--set")
        .arg(daemon::state_dir_setting(&dir.path().join("s")))
        .env("MANANERA_NIGHTLY_ENABLED", "false")
        .env("MANANERA_LOG", "info")
        .env_remove("MANANERA_DISCORD_TOKEN")
        .env_remove("MANANERA_TELEGRAM_TOKEN")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let d = Daemon::spawn(cmd, &dir.path().join("s"), log);

    write("nope");
    daemon::signal(d.pid(), "HUP");
    eventually(Duration::from_secs(20), "the refused reload", || async {
        d.log().contains("the settings in force stay").then_some(())
    })
    .await;
    let log = d.log();
    assert!(
        log.contains("engine.backend_model = \"nope\": the server"),
        "{log}"
    );
    let (status, ready) = readyz(&d.url).await;
    assert_eq!(
        (status, ready["model_version"].clone()),
        (200, json!("mananera"))
    );
    let reply = generate(&d.url, &json!({"topic": "el agua", "max_new_tokens": 5})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(fake.requests().last().unwrap()["model"], "mananera");

    // A publish directory that cannot be written: refused, the settings in force stay.
    write("mananera");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[publish]\ndir = \"/proc/mananera-publish\"\n");
    std::fs::write(&config, text).unwrap();
    daemon::signal(d.pid(), "HUP");
    eventually(Duration::from_secs(20), "the refused reload", || async {
        d.log()
            .contains("the settings were not reloaded")
            .then_some(())
    })
    .await;
    assert!(
        d.log()
            .contains("publish.dir = \"/proc/mananera-publish\" cannot be written")
    );
    let (status, _) = readyz(&d.url).await;
    assert_eq!(status, 200);
    d.terminate();
}

/// Kills the child when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `mananera generate` writes alone for `topic`, greedy, with the tiny model in f32
/// (as the GGUF llama-server serves) and a word limit of `max_words` (0: none).
fn local_greedy(topic: &str, max_words: usize) -> String {
    let out = std::process::Command::new(BIN)
        .args([
            "generate",
            topic,
            "--temperature",
            "0",
            "--quantization",
            "none",
        ])
        .args(["--max-words", &max_words.to_string()])
        .args(["--max-new-tokens", "48", "--model"])
        .arg(tiny_model())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// Against llama.cpp's real `llama-server`, not a fake: not in CI (no llama.cpp there);
/// `scripts/check_llama_server.sh` builds it and runs this with `MANANERA_LLAMA_SERVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama.cpp's llama-server: run scripts/check_llama_server.sh"]
async fn a_real_llama_server_writes_the_local_engines_greedy_speeches_for_the_page_and_both_bots() {
    let server = std::env::var("MANANERA_LLAMA_SERVER").expect(
        "MANANERA_LLAMA_SERVER: the llama-server binary (scripts/check_llama_server.sh sets it)",
    );
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    let export = std::process::Command::new(BIN)
        .args(["export", "--gguf", "--gguf-type", "f32", "--model"])
        .arg(tiny_model())
        .arg("base")
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("llama-server.log");
    let _server = Killed(
        std::process::Command::new(&server)
            .arg("-m")
            .arg(&gguf)
            .args(["--alias", "mananera", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["-np", "4", "-c", "8192", "-t", "2"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("llama-server.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(60), "llama-server up", || async {
        let r = reqwest::get(format!("{url}/health")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let bots = Bots::start().await;
    let sets = vec![
        "engine.backend=\"openai\"".to_string(),
        format!("engine.backend_url={url:?}"),
        "limits.admins=[\"web:127.0.0.1\"]".into(),
        "generation.temperature=0".into(),
        "generation.max_words=0".into(),
        "generation.max_new_tokens=48".into(),
    ];
    let d = bots.daemon(&dir.path().join("s"), sets);
    // The page's API, streamed and whole: the same text as the local engine's, greedy.
    for topic in [
        "la refinería",
        "el agua",
        "la corrupción de los conservadores",
    ] {
        let local = local_greedy(topic, 0);
        let stream = EventStream::open(&d.url, &json!({ "topic": topic })).await;
        let (streamed, end, done) = stream.finish(String::new()).await;
        assert_eq!(end, "done", "{done}");
        assert_eq!(done["model_version"], "mananera");
        assert_eq!(streamed, local, "{topic}");
        let again = generate(&d.url, &json!({ "topic": topic })).await;
        assert_eq!(
            (again.json["cached"].clone(), text(&again.json)),
            (json!(true), local)
        );
    }
    // The word limit and UTF-8 pieces behave as with the local engine.
    let limited = json!({"topic": "los apoyos", "max_words": 5, "max_new_tokens": 48});
    let remote = generate(&d.url, &limited).await;
    assert_eq!(text(&remote.json), local_greedy("los apoyos", 5));

    assert_eq!(
        bots.discord_speech("la seguridad").await,
        words(&local_greedy("la seguridad", 0))
    );
    assert_eq!(
        bots.telegram_speech("el petróleo").await,
        words(&local_greedy("el petróleo", 0))
    );
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
}
