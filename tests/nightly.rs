//! The nightly run end to end: the real `mananera serve` with the tiny fixture model, the
//! loopback fake transcript site and the fake Telegram, on a schedule of seconds. New
//! transcripts are scraped, trained on and served live; a killed training, a worse version,
//! two runs at once, a rollback, SIGHUP and the service manager's notifications.

mod daemon;
mod fake_chat;
mod fake_openai;
mod fake_site;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use daemon::{BIN, Daemon, EventStream, signal, tiny_model};
use fake_chat::telegram::FakeTelegram;
use fake_site::{Kind, Site, dataset_file, speech, tar_gz, transcript, wordpress_source};
use serde_json::{Value, json};

/// The fake site, a config file for it, and the daemon's directories.
struct World {
    site: Site,
    dir: tempfile::TempDir,
}

impl World {
    fn new(days: u32) -> Self {
        let site = Site::start(Kind::WordPress, "localhost");
        for day in 1..=days {
            site.publish(transcript(day, &speech(day)));
        }
        Self {
            site,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the settings: the fake site as the only source, fast training (with
    /// `training` changes) and `extra`.
    fn write_config(&self, training: &[(&str, &str)], extra: &str) {
        let mut settings = vec![
            ("block_size", "64"),
            ("batch_size", "2"),
            ("grad_accumulation", "2"),
            ("learning_rate", "0.002"),
            ("tolerance", "0.5"),
            ("max_validation_blocks", "8"),
            ("checkpoint_steps", "0"),
        ];
        for (key, value) in training {
            settings.retain(|(k, _)| k != key);
            settings.push((key, value));
        }
        let training: String = settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let config = format!(
            r#"[corpus]
dir = "{corpus}"

[serve]
state_dir = "{state}"

[http]
user_agent = "mananera-test/1.0"
delay_ms = 0
timeout_s = 2
retries = 1
backoff_ms = 10

{source}
[limits]
per_minute = 1000
per_day = 100000
admins = ["web:127.0.0.1", "telegram:4242"]

[training]
dir = "{versions}"
{training}
{extra}
"#,
            corpus = self.path("corpus").display(),
            state = self.path("state").display(),
            versions = self.path("versions").display(),
            source = wordpress_source(&self.site),
        );
        std::fs::write(self.path("config.toml"), config).unwrap();
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.path("config.toml"))
            .env_remove("MANANERA_CONFIG")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("MANANERA_API_TOKEN")
            .env_remove("MANANERA_DISCORD_TOKEN")
            .env_remove("MANANERA_TELEGRAM_TOKEN")
            .env("XDG_DATA_HOME", self.path("data"))
            .env("MANANERA_LOG", "info")
            // The fake site is the only source, and runs come when a test says (the
            // bootstrap test sets both again).
            .env("MANANERA_SCRAPE_ARCHIVES", "[]")
            .env("MANANERA_NIGHTLY_FIRST_RUN", "scheduled");
        cmd
    }

    /// Starts `mananera serve` with the tiny model and `env`.
    fn serve(&self, env: &[(&str, &str)]) -> Daemon {
        self.serve_model(&tiny_model(), env)
    }

    /// Starts `mananera serve` with `model` and `env`.
    fn serve_model(&self, model: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = self.command();
        cmd.arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.path("daemon.log")).unwrap());
        Daemon::spawn(cmd, &self.path("state"), self.path("daemon.log"))
    }

    /// `mananera <args>` against the running daemon's settings.
    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Writes new settings and waits until `daemon` has re-read them on SIGHUP (its
    /// `nth` reload).
    fn reload(&self, daemon: &Daemon, training: &[(&str, &str)], extra: &str, nth: usize) {
        self.write_config(training, extra);
        signal(daemon.pid(), "HUP");
        wait_for_count(
            &self.path("daemon.log"),
            "settings reloaded",
            nth,
            Duration::from_secs(30),
        );
    }

    /// `retrain --now --wait` with JSON output: the exit code, the run and stderr.
    fn retrain_and_wait(&self) -> (Option<i32>, Value, String) {
        let out = self.run(&["--format", "json", "retrain", "--now", "--wait"]);
        let run = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), run, stderr(&out))
    }

    /// `mananera --format json status`.
    fn status(&self) -> Value {
        let out = self.run(&["--format", "json", "status"]);
        assert!(out.status.success(), "status: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until one of the last runs satisfies `check`, and returns it.
    fn wait_for_run(&self, what: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if let Some(run) = status["runs"]
                .as_array()
                .and_then(|runs| runs.iter().find(|r| check(r)))
            {
                return run.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; status: {status:#}\nlog:\n{}",
                std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `POST /api/generate`, greedy, for a topic: (model_version, cached, text).
async fn ask(url: &str, topic: &str) -> (String, bool, String) {
    let body = json!({ "topic": topic, "temperature": 0, "max_new_tokens": 12, "max_words": 0 });
    let reply = daemon::generate(url, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    (
        reply.json["model_version"].as_str().unwrap().to_string(),
        reply.json["cached"].as_bool().unwrap(),
        reply.json["text"].as_str().unwrap().to_string(),
    )
}

/// A runtime for the async helpers (the fake site runs its own, so tests are plain).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_new_transcript_is_scraped_trained_and_served_live_while_the_bot_answers() {
    let world = World::new(4);
    world.write_config(
        &[],
        "[nightly]\ncron = \"*/2 * * * * *\"\ntime_zone = \"UTC\"\n",
    );
    let rt = runtime();
    let telegram = rt.block_on(FakeTelegram::start());
    let daemon = world.serve(&[
        ("MANANERA_TELEGRAM_TOKEN", "123:telegram-test-token"),
        ("MANANERA_TELEGRAM_API_URL", &telegram.url),
        ("MANANERA_TELEGRAM_POLL_TIMEOUT_S", "1"),
        ("MANANERA_NIGHTLY_ENABLED", "true"),
    ]);
    let base = rt.block_on(ask(&daemon.url, "el petróleo")).0;

    // People keep asking the bot through the whole run, each in their own chat.
    let asking = {
        let telegram = telegram.clone();
        rt.spawn(async move {
            let mut chats = Vec::new();
            for n in 0..20 {
                let chat = 7000 + n;
                telegram.user_says(chat, chat, &format!("/mananera tema {n}"), None);
                chats.push(chat);
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            chats
        })
    };

    // The first scheduled run scrapes the four transcripts and trains v0001 on them.
    let first = world.wait_for_run("accepted first version", Duration::from_secs(240), |r| {
        r["outcome"] == "accepted"
    });
    assert_eq!(first["new_transcripts"], 4, "{first:#}");
    assert_eq!(first["trained"]["version"], "v0001", "{first:#}");
    let (v1, cached, _) = rt.block_on(ask(&daemon.url, "el petróleo"));
    assert!(v1.contains("+v0001-"), "{v1}");
    assert!(
        !cached,
        "an answer of the base model was served from the cache"
    );
    let (again, cached, _) = rt.block_on(ask(&daemon.url, "el petróleo"));
    assert_eq!((again.as_str(), cached), (v1.as_str(), true));

    // Runs with nothing new on the site change nothing.
    let quiet = world.wait_for_run("a run with nothing new", Duration::from_secs(60), |r| {
        r["outcome"] == "nothing_new"
    });
    assert_eq!(quiet["new_transcripts"], 0);

    // A new transcript appears: it is scraped, trained on incrementally, and served.
    world.site.publish(transcript(5, &speech(5)));
    let second = world.wait_for_run("accepted second version", Duration::from_secs(240), |r| {
        r["outcome"] == "accepted" && r["trained"]["version"] == "v0002"
    });
    assert_eq!(second["new_transcripts"], 1, "{second:#}");
    assert_eq!(second["trained"]["parent"], "v0001", "{second:#}");
    let (v2, cached, _) = rt.block_on(ask(&daemon.url, "el petróleo"));
    assert!(v2.contains("+v0002-"), "{v2}");
    assert!(!cached, "the cache served an answer of the old version");
    assert_ne!(v1, v2);
    let metrics = rt.block_on(async {
        reqwest::get(format!("{}/metrics", daemon.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("mananera_retrain_runs_total{outcome=\"accepted\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("+v0002-"), "{metrics}");
    assert!(!base.contains("+v"), "{base}");

    // Every bot request sent during the runs was answered with a speech.
    let chats = rt.block_on(asking).unwrap();
    rt.block_on(
        telegram.wait_for(Duration::from_secs(120), "a reply in every chat", |calls| {
            chats
                .iter()
                .all(|chat| {
                    calls.iter().any(|c| {
                        c.method == "sendmessage"
                            && c.body["chat_id"] == json!(chat)
                            && c.body["text"]
                                .as_str()
                                .is_some_and(|t| !t.trim().is_empty())
                    })
                })
                .then_some(())
        }),
    );
    let refusals: Vec<String> = telegram
        .calls()
        .iter()
        .filter(|c| c.method == "sendmessage")
        .filter_map(|c| c.body["text"].as_str().map(str::to_string))
        .filter(|t| t.contains("intenta") || t.contains("ocupado") || t.contains("cargando"))
        .collect();
    assert!(refusals.is_empty(), "refused during the run: {refusals:?}");

    // The admins' bot command shows the runs and starts one; others are refused.
    let reply_to = |chat: i64, text: &str| {
        let before = telegram.calls().len();
        telegram.user_says(chat, chat, text, None);
        rt.block_on(telegram.wait_for(Duration::from_secs(30), text, |calls| {
            calls[before..]
                .iter()
                .find(|c| c.method == "sendmessage" && c.body["chat_id"] == json!(chat))
                .map(|c| c.body["text"].as_str().unwrap().to_string())
        }))
    };
    let status = reply_to(4242, "/estado");
    assert!(
        status.contains("reentrenamiento: cron \"*/2 * * * * *\" in UTC")
            && status.contains("último:"),
        "{status}"
    );
    // No scheduled run may race the admin's: the schedule moves to next New Year, and the
    // run in progress (if any) ends first.
    world.reload(
        &daemon,
        &[],
        "[nightly]\ncron = \"0 0 1 1 *\"\ntime_zone = \"UTC\"\n",
        1,
    );
    let idle_by = std::time::Instant::now() + Duration::from_secs(240);
    while world.status()["runs"]
        .as_array()
        .is_some_and(|runs| runs.iter().any(|r| r["outcome"] == "running"))
    {
        assert!(std::time::Instant::now() < idle_by, "a run did not end");
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = reply_to(4242, "/estado reentrenar");
    assert!(started.starts_with("Reentrenamiento iniciado"), "{started}");
    let refused = reply_to(9999, "/estado reentrenar");
    assert!(refused.contains("Solo los administradores"), "{refused}");

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn killed_training_worse_versions_two_triggers_and_rollback() {
    let rt = runtime();
    let world = World::new(4);
    // Off the schedule: admins start every run. A long training, so it can be killed.
    const OFF: &str = "[nightly]\nenabled = false\n";
    world.write_config(&[("epochs", "2000")], OFF);
    let daemon = world.serve(&[]);
    let (base, _, _) = rt.block_on(ask(&daemon.url, "el agua"));

    // Two runs asked for at once: one starts, the other is told one is in progress.
    let first = world.run(&["retrain", "--now"]);
    let second = world.run(&["retrain", "--now"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(second.status.code(), Some(5), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("already in progress"),
        "{}",
        stderr(&second)
    );

    // The training child is killed with SIGKILL mid-run: the run fails, the daemon serves on.
    world.wait_for_run("training", Duration::from_secs(120), |r| {
        r["phase"] == "training"
    });
    let pid = wait_for_child_pid(&world.path("daemon.log"), "train", Duration::from_secs(60));
    wait_for_text(
        &world.path("daemon.log"),
        "training started",
        Duration::from_secs(60),
    );
    signal(pid, "KILL");
    let failed = world.wait_for_run("failed run", Duration::from_secs(60), |r| {
        r["outcome"] == "failed"
    });
    assert!(
        failed["error"].as_str().unwrap().contains("SIGKILL"),
        "{failed:#}"
    );
    let (after_kill, _, _) = rt.block_on(ask(&daemon.url, "el agua"));
    assert_eq!(after_kill, base);
    assert!(
        std::fs::read_to_string(world.path("daemon.log"))
            .unwrap()
            .contains("SIGKILL")
    );

    // SIGHUP puts a short training in force; the next run trains what the killed one left.
    world.reload(&daemon, &[], OFF, 1);
    let (code, run, err) = world.retrain_and_wait();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(run["outcome"], "accepted", "{run:#}");
    assert_eq!(
        run["new_transcripts"], 0,
        "the site had nothing new: {run:#}"
    );
    let (v1, _, _) = rt.block_on(ask(&daemon.url, "el agua"));
    assert!(v1.contains("+v0001-"), "{v1}");

    // A corrupted transcript, trained hard with no tolerance: the version is rejected and
    // nothing changes.
    let garbage: String = (0..3000u32)
        .map(|i| char::from(b'a' + ((i * 7919) % 26) as u8))
        .collect();
    world.site.publish(transcript(6, &garbage));
    let hard = [
        ("learning_rate", "0.5"),
        ("tolerance", "0.0"),
        ("validation_recent", "0"),
        ("validation_fraction", "0.5"),
        ("epochs", "3"),
    ];
    world.reload(&daemon, &hard, OFF, 2);
    let (code, run, err) = world.retrain_and_wait();
    assert_eq!(code, Some(6), "{err}");
    assert_eq!(run["outcome"], "rejected", "{run:#}");
    assert_eq!(run["trained"]["version"], "v0002", "{run:#}");
    assert!(
        run["trained"]["perplexity_after"].as_f64().unwrap()
            > run["trained"]["perplexity_before"].as_f64().unwrap(),
        "{run:#}"
    );
    let (still, _, _) = rt.block_on(ask(&daemon.url, "el agua"));
    assert_eq!(still, v1);

    // A good day and normal settings: v0003 is accepted and served.
    world.site.publish(transcript(7, &speech(7)));
    world.reload(&daemon, &[], OFF, 3);
    let (code, _, err) = world.retrain_and_wait();
    assert_eq!(code, Some(0), "{err}");
    let (v3, _, _) = rt.block_on(ask(&daemon.url, "el agua"));
    assert!(v3.contains("+v0003-"), "{v3}");

    // Rollback, live: back to v0001 (v0002 was rejected), served at once.
    let out = world.run(&["--format", "json", "rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rolled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (rolled["from"].as_str(), rolled["to"].as_str()),
        (Some("v0003"), Some("v0001"))
    );
    let (back, cached, _) = rt.block_on(ask(&daemon.url, "el agua"));
    assert_eq!(back, v1);
    let _ = cached;
    // A rejected version is a bad argument (exit 2), through the daemon as on disk.
    let out = world.run(&["rollback", "v0002"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("rejected"), "{}", stderr(&out));
    let cancel = world.run(&["retrain", "--cancel"]);
    assert_eq!(cancel.status.code(), Some(2), "{}", stderr(&cancel));

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn the_service_manager_sees_ready_watchdog_reload_and_stop() {
    let world = World::new(1);
    world.write_config(&[], "[nightly]\nenabled = false\n");
    let socket_path = world.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let daemon = world.serve(&[
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ]);
    let mut seen = String::new();
    let mut read_until = |needle: &str, count: usize| {
        let mut buf = [0u8; 4096];
        while seen.matches(needle).count() < count {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {needle}: {e}; so far:\n{seen}"));
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    read_until("READY=1", 1);
    read_until("WATCHDOG=1", 3);
    signal(daemon.pid(), "HUP");
    read_until("RELOADING=1", 1);
    read_until("READY=1", 2);
    let pid = daemon.pid();
    let waiter = std::thread::spawn(move || daemon.terminate());
    read_until("STOPPING=1", 1);
    let (status, log) = waiter.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(seen.contains("STATUS=serving tiny-bloom-4h"), "{seen}");
    assert!(seen.contains("MONOTONIC_USEC="), "{seen}");
    assert!(pid > 0);
}

#[test]
fn the_admin_api_needs_a_token_and_runs_one_run_at_a_time() {
    let rt = runtime();
    let world = World::new(4);
    world.write_config(&[("epochs", "2000")], "[nightly]\nenabled = false\n");
    let open = world.serve(&[]);
    let client = reqwest::Client::new();
    let post = |url: String, token: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut request = client.post(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            daemon::send(request).await
        }
    };
    // Without an API token the admin API is off.
    let off = rt.block_on(post(format!("{}/api/admin/retrain", open.url), None));
    assert_eq!(off.status, 403, "{}", off.json);
    assert!(
        off.json["error"]
            .as_str()
            .unwrap()
            .contains("api_token_file")
    );
    let status = rt.block_on(daemon::send(client.get(format!("{}/api/status", open.url))));
    assert_eq!(status.status, 200);
    assert_eq!(status.json["schedule"], "off (nightly.enabled = false)");
    let (stopped, log) = open.terminate();
    assert!(stopped.success(), "{log}");

    let daemon = world.serve(&[("MANANERA_API_TOKEN", "s3cret")]);
    let url = |path: &str| format!("{}{path}", daemon.url);
    let anonymous = rt.block_on(daemon::send(client.get(url("/api/status"))));
    assert_eq!(anonymous.status, 401);
    let wrong = rt.block_on(post(url("/api/admin/retrain"), Some("nope")));
    assert_eq!(wrong.status, 401);

    // One run starts; a second is refused while it runs; a cancel stops it at a step, with
    // a checkpoint for the next run.
    let started = rt.block_on(post(url("/api/admin/retrain"), Some("s3cret")));
    assert_eq!(started.status, 200, "{}", started.json);
    assert_eq!(started.json["trigger"], "api");
    let again = rt.block_on(post(url("/api/admin/retrain"), Some("s3cret")));
    assert_eq!(again.status, 409, "{}", again.json);
    assert_eq!(again.json["code"], "in_progress");
    wait_for_text(
        &world.path("daemon.log"),
        "training started",
        Duration::from_secs(120),
    );
    let cancel = rt.block_on(post(url("/api/admin/cancel"), Some("s3cret")));
    assert_eq!(cancel.status, 200, "{}", cancel.json);
    let status = |rt: &tokio::runtime::Runtime| {
        rt.block_on(daemon::send(
            client.get(url("/api/status")).bearer_auth("s3cret"),
        ))
        .json
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let s = status(&rt);
        if s["runs"][0]["outcome"] != "running" {
            break s["runs"][0].clone();
        }
        assert!(Instant::now() < deadline, "the run did not stop: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(run["outcome"], "cancelled", "{run:#}");
    assert!(run["error"].as_str().unwrap().contains("api"), "{run:#}");
    assert!(
        world.path("versions/run").is_dir(),
        "no checkpoint was saved"
    );
    let nothing = rt.block_on(post(url("/api/admin/cancel"), Some("s3cret")));
    assert_eq!(nothing.status, 409, "{}", nothing.json);
    let bad = rt.block_on(daemon::send(
        client
            .post(url("/api/admin/rollback"))
            .bearer_auth("s3cret")
            .body("{\"versoin\": \"v0001\"}"),
    ));
    assert_eq!(bad.status, 400, "{}", bad.json);
    let none = rt.block_on(post(url("/api/admin/rollback"), Some("s3cret")));
    assert_eq!(none.status, 422, "{}", none.json);
    assert!(
        none.json["error"]
            .as_str()
            .unwrap()
            .contains("no version is current")
    );
    let (stopped, log) = daemon.terminate();
    assert!(stopped.success(), "{log}");
}

#[test]
fn a_run_cut_short_by_a_dead_daemon_is_recorded_and_the_missed_run_runs_at_start_up() {
    let world = World::new(4);
    world.write_config(&[("epochs", "2000")], "[nightly]\nenabled = false\n");
    let daemon = world.serve(&[]);
    let out = world.run(&["retrain", "--now"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = world.path("daemon.log");
    let child = wait_for_child_pid(&log, "train", Duration::from_secs(60));
    wait_for_text(&log, "training started", Duration::from_secs(60));
    // The daemon dies (SIGKILL), and its training with it, as systemd's control group would.
    drop(daemon);
    signal(child, "KILL");
    std::thread::sleep(Duration::from_millis(2100));

    // Back up on a schedule it has missed since (every 2 s): the missed run runs at once,
    // and trains what the interrupted one left.
    world.write_config(
        &[],
        "[nightly]\ncron = \"*/2 * * * * *\"\ntime_zone = \"UTC\"\n",
    );
    let daemon = world.serve(&[("MANANERA_NIGHTLY_ENABLED", "true")]);
    let caught_up = world.wait_for_run("the missed run", Duration::from_secs(120), |r| {
        r["trigger"] == "catch-up" && r["outcome"] != "running"
    });
    assert_eq!(caught_up["outcome"], "accepted", "{caught_up:#}");
    assert_eq!(caught_up["new_transcripts"], 0, "{caught_up:#}");
    let runs = world.status()["runs"].clone();
    let interrupted = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["outcome"] == "interrupted")
        .unwrap_or_else(|| panic!("no interrupted run in {runs:#}"));
    assert_eq!(
        interrupted["error"], "the daemon stopped while the run was training",
        "{interrupted:#}"
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn a_training_over_its_memory_cap_fails_alone() {
    let rt = runtime();
    let world = World::new(4);
    world.write_config(&[], "[nightly]\nenabled = false\nmemory_max_mib = 64\n");
    let daemon = world.serve(&[]);
    let (code, run, err) = world.retrain_and_wait();
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert_eq!(
        run["new_transcripts"], 4,
        "the scrape is not capped: {run:#}"
    );
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .starts_with("the training failed"),
        "{run:#}"
    );
    let (version, _, _) = rt.block_on(ask(&daemon.url, "el agua"));
    assert!(!version.contains("+v"), "{version}");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

/// A random model slow enough (tens of tokens per second) that a swap lands in the middle of
/// a speech.
fn slower_model(dir: &Path) -> PathBuf {
    let path = dir.join("slower");
    let status = Command::new(BIN)
        .args([
            "random-model",
            "--hidden",
            "1024",
            "--layers",
            "8",
            "--heads",
            "16",
        ])
        .args(["--vocab", "4096"])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    path
}

#[test]
fn a_swap_lets_running_speeches_finish_intact_on_the_old_model() {
    let rt = runtime();
    let world = World::new(1);
    world.write_config(
        &[],
        "[nightly]\nenabled = false\n[engine]\nquantization = \"none\"\n",
    );
    let model = slower_model(world.dir.path());
    let daemon = world.serve_model(&model, &[]);
    let greedy = |seed: u64| {
        json!({ "topic": "la refinería", "temperature": 0, "seed": seed,
                "max_new_tokens": 160, "min_new_tokens": 160, "max_words": 0 })
    };
    // The reference: the whole speech on the first model.
    let reference = rt.block_on(daemon::generate(&daemon.url, &greedy(1)));
    assert_eq!(reference.status, 200, "{}", reference.json);
    let old_version = reference.json["model_version"]
        .as_str()
        .unwrap()
        .to_string();

    // The same greedy speech (another cache key) is under way when the settings change the
    // model's quantization: a new model version is loaded and swapped in.
    let (streamed, done, new_version) = rt.block_on(async {
        let mut stream = EventStream::open(&daemon.url, &greedy(2)).await;
        let (event, first) = stream.next().await.unwrap();
        assert_eq!(event, "delta", "{first}");
        world.write_config(
            &[],
            "[nightly]\nenabled = false\n[engine]\nquantization = \"q8_0\"\n",
        );
        signal(daemon.pid(), "HUP");
        let log = world.path("daemon.log");
        let mut text = first["text"].as_str().unwrap().to_string();
        // Read the stream while the new model loads, until the swap is logged.
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("now serving a new model version")
        {
            match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                Ok(Some((event, data))) => {
                    assert_eq!(event, "delta", "the speech ended before the swap: {data}");
                    text.push_str(data["text"].as_str().unwrap());
                }
                Ok(None) => panic!("the stream closed before the swap"),
                Err(_) => {}
            }
        }
        // New requests get the new version while the old speech is still being written.
        let after = daemon::generate(
            &daemon.url,
            &json!({"topic": "el agua", "max_new_tokens": 4}),
        )
        .await;
        assert_eq!(after.status, 200, "{}", after.json);
        let new_version = after.json["model_version"].as_str().unwrap().to_string();
        let (text, _, done) = stream.finish(text).await;
        (text, done, new_version)
    });
    assert_ne!(new_version, old_version);
    assert_eq!(done["model_version"], old_version.as_str(), "{done}");
    assert_eq!(done["stop_reason"], "max_new_tokens", "{done}");
    assert_eq!(
        streamed,
        reference.json["text"].as_str().unwrap(),
        "the speech running across the swap differs from the old model's"
    );
    wait_for_text(
        &world.path("daemon.log"),
        "the replaced model finished its last speeches",
        Duration::from_secs(10),
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

/// The pid of the newest child process `task` the daemon started, from its log.
fn wait_for_child_pid(log: &Path, task: &str, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let pid = text
            .lines()
            .filter(|l| l.contains("child process started"))
            .filter(|l| {
                l.contains(&format!("task=\"{task}\"")) || l.contains(&format!("task={task} "))
            })
            .filter_map(|l| {
                l.split("pid=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .next_back();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no {task} child in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_text(log: &Path, needle: &str, within: Duration) {
    wait_for_count(log, needle, 1, within);
}

fn wait_for_count(log: &Path, needle: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} ×{count} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fresh_daemon_bootstraps_from_the_dataset_archive_and_trains_its_backlog_night_by_night() {
    // The site has one transcript; the dataset's archive holds ten older ones.
    let world = World::new(1);
    let files: Vec<(String, String)> = (1..=10)
        .map(|day| dataset_file(day, &speech(day + 10)))
        .collect();
    world.site.put_file("/mananeras.tar.gz", tar_gz(&files));
    // Each run may train 30 steps of 256 tokens (about three transcripts), with a little
    // replay of those already trained.
    world.write_config(
        &[("max_tokens", "7680"), ("replay_ratio", "0.25")],
        "[nightly]\ncron = \"*/3 * * * * *\"\ntime_zone = \"UTC\"\ntrain_budget_minutes = 5\n",
    );
    let archives = format!(
        "[{{ name = \"mananeras\", url = \"{}\" }}]",
        world.site.url("/mananeras.tar.gz")
    );
    let daemon = world.serve(&[
        ("MANANERA_NIGHTLY_ENABLED", "true"),
        ("MANANERA_NIGHTLY_FIRST_RUN", "now"),
        ("MANANERA_SCRAPE_ARCHIVES", &archives),
    ]);

    // The first run starts at once (not on the schedule), imports the history and trains
    // the newest part of it within its budget.
    let first = world.wait_for_run("the first run", Duration::from_secs(180), |r| {
        r["trigger"] == "first-run" && r["outcome"] != "running"
    });
    assert_eq!(first["outcome"], "accepted", "{first:#}");
    assert_eq!(first["new_transcripts"], 11, "{first:#}");
    let trained = &first["trained"];
    assert_eq!(trained["version"], "v0001", "{first:#}");
    assert_eq!(trained["steps"], 30, "{first:#}");
    let backlog = trained["backlog"].as_u64().unwrap();
    assert!(backlog > 0, "{first:#}");
    let rt = runtime();
    let (served, _, _) = rt.block_on(ask(&daemon.url, "el petróleo"));
    assert!(served.contains("+v0001-"), "{served}");

    // Every later night trains the next slice, until nothing is left; then a night with
    // nothing new does nothing.
    let mut left = backlog;
    let mut last = "v0001".to_string();
    while left > 0 {
        let next = format!("v{:04}", last[1..].parse::<u32>().unwrap() + 1);
        let run = world.wait_for_run(&format!("run of {next}"), Duration::from_secs(120), |r| {
            // Its version is recorded as soon as it is trained; wait for the run to end.
            r["trained"]["version"] == next.as_str() && r["outcome"] != "running"
        });
        assert_eq!(run["outcome"], "accepted", "{run:#}");
        assert_eq!(run["trained"]["parent"], last.as_str(), "{run:#}");
        let now = run["trained"]["backlog"].as_u64().unwrap();
        assert!(
            now < left,
            "the backlog did not shrink: {left} → {now}: {run:#}"
        );
        left = now;
        last = next;
    }
    let quiet = world.wait_for_run("a night with nothing new", Duration::from_secs(60), |r| {
        r["outcome"] == "nothing_new"
    });
    assert!(quiet["trained"].is_null(), "{quiet:#}");
    // Only the first run downloaded the archive; later ones were told it had not changed.
    let fetches: Vec<u16> = world
        .site
        .log()
        .into_iter()
        .filter(|(path, _)| path == "/mananeras.tar.gz")
        .map(|(_, status)| status)
        .collect();
    assert_eq!(fetches[0], 200, "{fetches:?}");
    assert!(fetches.len() >= 3, "{fetches:?}");
    assert!(fetches[1..].iter().all(|&s| s == 304), "{fetches:?}");
    // The nightly budget reached the training (the token budget ended it first).
    let log = std::fs::read_to_string(world.path("daemon.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("child process started")
            && l.contains("train --max-minutes 5 --incremental")),
        "{log}"
    );
    let versions = world.run(&["versions"]);
    assert!(
        String::from_utf8_lossy(&versions.stdout).contains(&format!("* {last}")),
        "{}",
        String::from_utf8_lossy(&versions.stdout)
    );
}

/// `[engine]` pointing at `fake` and `[publish]` into `dir`, with `hook`.
fn publishing(fake: &fake_openai::FakeOpenAi, dir: &Path, hook: &str) -> String {
    format!(
        r#"[engine]
backend = "openai"
backend_url = "{url}"
backend_poll_s = 1

[publish]
dir = "{dir}"
gguf = "f16"
hook = ["sh", "-c", {hook:?}]
hook_url = "{url}/admin/load"
wait_s = 30
"#,
        url = fake.url,
        dir = dir.display(),
    )
}

#[test]
fn an_accepted_version_is_published_the_server_told_and_served_and_a_failing_hook_keeps_the_old_one()
 {
    let world = World::new(4);
    let rt = runtime();
    let fake = rt.block_on(fake_openai::FakeOpenAi::start(&["mananera"]));
    let published = world.path("published");
    let told = world.path("hook.env");
    let good_hook = format!("env | grep ^MANANERA_ | sort > {}", told.display());
    world.write_config(&[], &publishing(&fake, &published, &good_hook));
    let daemon = world.serve(&[]);
    let served = |url: &str| {
        rt.block_on(async {
            let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
            let ready: Value = r.json().await.unwrap();
            ready["model_version"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    };
    assert_eq!(served(&daemon.url), "mananera");

    // The run trains v0001, publishes it, the hooks tell the server, the daemon serves it.
    let (code, run, err) = world.retrain_and_wait();
    assert_eq!(code, Some(0), "{err}\n{run:#}");
    assert_eq!(run["outcome"], "accepted", "{run:#}");
    assert_eq!(run["published"], "v0001", "{run:#}");
    assert_eq!(
        std::fs::read_link(published.join("current")).unwrap(),
        Path::new("v0001")
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(published.join("v0001/published.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["model_name"], "mananera-v0001", "{manifest:#}");
    assert!(published.join("v0001/merged/config.json").is_file());
    assert!(published.join("v0001/merged/tokenizer.json").is_file());
    let gguf = std::fs::read(published.join("v0001/mananera-v0001.gguf")).unwrap();
    assert_eq!(&gguf[..4], b"GGUF");
    let env = std::fs::read_to_string(&told).unwrap();
    assert!(env.contains("MANANERA_VERSION=v0001\n"), "{env}");
    assert!(
        env.contains("MANANERA_MODEL_NAME=mananera-v0001\n"),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "MANANERA_GGUF={}",
            published.join("v0001/mananera-v0001.gguf").display()
        )),
        "{env}"
    );
    assert_eq!(fake.loads().len(), 1, "the hook address was called once");
    assert_eq!(run["serving"], "mananera-v0001", "{run:#}");
    assert_eq!(served(&daemon.url), "mananera-v0001");
    let (version, _, text) = rt.block_on(ask(&daemon.url, "el agua"));
    assert_eq!(version, "mananera-v0001");
    assert!(text.starts_with("mananera-v0001:"), "{text}");

    // A failing hook: v0002's files are written, the server is not told, v0001 stays.
    world.write_config(
        &[],
        &publishing(&fake, &published, "echo unit not found >&2; exit 7"),
    );
    signal(daemon.pid(), "HUP");
    wait_for_count(
        &world.path("daemon.log"),
        "settings reloaded",
        1,
        Duration::from_secs(30),
    );
    world.site.publish(transcript(5, &speech(5)));
    let (code, run, err) = world.retrain_and_wait();
    assert_ne!(code, Some(0), "{err}\n{run:#}");
    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert_eq!(run["trained"]["version"], "v0002", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("v0002 was published but its hook failed")
            && error.contains("unit not found"),
        "{error}"
    );
    assert_eq!(fake.loads().len(), 1, "the server was not told");
    assert_eq!(served(&daemon.url), "mananera-v0001");
    assert!(published.join("v0002/published.json").is_file());
    assert!(!published.join("v0002/told").exists());

    // The hook mended: the next run has nothing to train, publishes v0002 again (its files
    // kept) and serves it.
    world.write_config(&[], &publishing(&fake, &published, &good_hook));
    signal(daemon.pid(), "HUP");
    wait_for_count(
        &world.path("daemon.log"),
        "settings reloaded",
        2,
        Duration::from_secs(30),
    );
    let (code, run, err) = world.retrain_and_wait();
    assert_eq!(code, Some(0), "{err}\n{run:#}");
    assert_eq!(run["outcome"], "nothing_new", "{run:#}");
    assert_eq!(run["published"], "v0002", "{run:#}");
    assert_eq!(served(&daemon.url), "mananera-v0002");
    assert_eq!(fake.loads().len(), 2);
    // Two versions are kept (publish.keep).
    assert!(published.join("v0001/published.json").is_file());
    daemon.terminate();
}
