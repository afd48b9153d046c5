//! The soak benchmark, not a CI test (`scripts/soak.sh` runs it): the real daemon under a
//! bounded mixed load for `SOAK_SECONDS` (1800 by default) — 4 users each on the web API,
//! the fake Discord and the fake Telegram, asking topics from a pool of 20 (so both cache
//! hits and misses) — while faults come round every minute: a 429 storm on both platforms, a
//! dropped Discord gateway, 15 s of Discord answering 3 s late, a swallowed follow-up; and, at
//! half time, a nightly run (scrape of the fake site, LoRA fine-tune, hot swap) unless
//! `SOAK_NIGHTLY=0`. It prints a table (markdown) and fails on a watchdog trip, a duplicate
//! message or an accepted request never answered.
//!
//! `SOAK_MODEL` (default the tiny fixture) and `SOAK_TOKENS` (default 64) choose the model
//! and the speeches' length; `SOAK_THINK_MS` (1000) is each user's pause between requests;
//! `SOAK_SETS` adds `--set`s (`;`-separated).

mod daemon;
mod fake_chat;
mod fake_site;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::{BIN, Daemon, metric, state_dir_setting, tiny_model};
use fake_chat::discord::{self as dc, FakeDiscord};
use fake_chat::telegram::{self as tg, FakeTelegram};
use fake_site::{Kind, Site, speech, transcript, wordpress_source};
use serde_json::{Value, json};

/// A user waits about this long between two requests (`SOAK_THINK_MS`).
fn think() -> Duration {
    Duration::from_millis(env_or("SOAK_THINK_MS", 1000))
}

/// A request not answered in this long is lost.
const ANSWER_WITHIN: Duration = Duration::from_secs(180);
const USERS: usize = 4;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Latencies and outcomes of one front end.
#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    /// Answered with a refusal or an error a person would read.
    refused: u64,
    /// Not answered within [`ANSWER_WITHIN`].
    lost: u64,
    /// Replies that ended at a follow-up the fake never answered (the fault, not a loss).
    cut_by_fault: u64,
    latencies: Vec<f64>,
}

impl Tally {
    fn percentile(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        if l.is_empty() {
            return 0.0;
        }
        l.sort_by(f64::total_cmp);
        l[((l.len() - 1) as f64 * p).round() as usize]
    }
}

type Tallies = Arc<Mutex<HashMap<&'static str, Tally>>>;

fn record(tallies: &Tallies, frontend: &'static str, update: impl FnOnce(&mut Tally)) {
    update(tallies.lock().unwrap().entry(frontend).or_default());
}

fn topic(n: u64) -> String {
    format!("tema {}", n % 20)
}

/// Resident memory of a process, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Settings of the soak's daemon: the fake site as its source, quick training.
fn config(dir: &std::path::Path, site: &Site) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        r#"[corpus]
dir = "{corpus}"

[http]
user_agent = "mananera-soak/1.0"
delay_ms = 0
timeout_s = 5
retries = 1
backoff_ms = 10

{source}
[limits]
per_minute = 0
per_day = 0

[training]
dir = "{versions}"
block_size = 64
batch_size = 2
grad_accumulation = 2
learning_rate = 0.002
tolerance = 0.5
max_validation_blocks = 8
checkpoint_steps = 0

[nightly]
cron = "0 0 1 1 *"
time_zone = "UTC"
"#,
        corpus = dir.join("corpus").display(),
        versions = dir.join("versions").display(),
        source = wordpress_source(site),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
#[ignore = "a benchmark of SOAK_SECONDS (30 minutes by default): scripts/soak.sh runs it"]
fn soak() {
    // The fake site runs on a runtime of its own: started before the soak's.
    let site = Site::start(Kind::WordPress, "localhost");
    for day in 1..=4 {
        site.publish(transcript(day, &speech(day)));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(soak_with(&site));
}

async fn soak_with(site: &Site) {
    let seconds: u64 = env_or("SOAK_SECONDS", 1800);
    let tokens: u64 = env_or("SOAK_TOKENS", 64);
    let nightly = env_or("SOAK_NIGHTLY", 1) != 0;
    let model = std::env::var("SOAK_MODEL").map_or_else(|_| tiny_model(), PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let settings = config(dir.path(), site);
    let discord = FakeDiscord::start().await;
    let telegram = FakeTelegram::start().await;
    let mut sets = vec![
        format!("discord.api_proxy={:?}", discord.rest_url),
        format!("discord.guilds=[{}]", dc::GUILD_ID),
        format!("telegram.api_url={:?}", telegram.url),
        "telegram.poll_timeout_s=10".to_string(),
        format!("generation.max_new_tokens={tokens}"),
        format!("serve.max_new_tokens={tokens}"),
        "generation.max_words=0".to_string(),
        // The fake site is the only source; the nightly run comes at half time.
        "scrape.archives=[]".to_string(),
        "nightly.first_run=\"scheduled\"".to_string(),
    ];
    sets.extend(
        std::env::var("SOAK_SETS")
            .unwrap_or_default()
            .split(';')
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let settings_path = settings.display().to_string();
    let env = [
        ("MANANERA_CONFIG", settings_path.as_str()),
        ("MANANERA_NIGHTLY_ENABLED", "true"),
        ("MANANERA_DISCORD_TOKEN", "discord-soak-token"),
        ("MANANERA_TELEGRAM_TOKEN", "123:telegram-soak-token"),
    ];
    let daemon = Daemon::start_with_env(&model, &dir.path().join("state"), &sets, &env);
    discord
        .wait_for(Duration::from_secs(60), "registration", |calls, _| {
            calls.iter().any(|c| c.method == "PUT").then_some(())
        })
        .await;
    telegram
        .wait_for(Duration::from_secs(60), "long polling", |calls| {
            calls.iter().any(|c| c.method == "getupdates").then_some(())
        })
        .await;

    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let rss_start = rss_mb(daemon.pid());
    let tallies: Tallies = Arc::default();
    let mut users = Vec::new();
    for u in 0..USERS {
        users.push(tokio::spawn(web_user(
            daemon.url.clone(),
            u,
            until,
            Arc::clone(&tallies),
        )));
        users.push(tokio::spawn(discord_user(
            discord.clone(),
            u,
            until,
            Arc::clone(&tallies),
        )));
        users.push(tokio::spawn(telegram_user(
            telegram.clone(),
            u,
            until,
            Arc::clone(&tallies),
        )));
    }
    // The faults, and the health read every 5 s.
    let mut max_gap: f64 = 0.0;
    let mut rss_max: f64 = rss_start;
    let mut nightly_outcome = String::from("not run");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while Instant::now() < until {
        tick.tick().await;
        let t = started.elapsed().as_secs();
        match t % 60 {
            10..15 => {
                discord.refuse_edits(5);
                telegram.refuse("editmessagetext", 5);
            }
            20..25 => discord.drop_connection(),
            30..35 => discord.delay_answers(Duration::from_secs(3)),
            45..50 => discord.delay_answers(Duration::ZERO),
            50..55 => discord.swallow_followups(1),
            _ => {}
        }
        if nightly && nightly_outcome == "not run" && t >= seconds / 2 {
            let (settings, state) = (settings.clone(), dir.path().join("state"));
            nightly_outcome = tokio::task::spawn_blocking(move || retrain(&settings, &state))
                .await
                .unwrap();
        }
        max_gap =
            max_gap.max(metric(&daemon.url, "mananera_runtime_heartbeat_max_gap_seconds").await);
        rss_max = rss_max.max(rss_mb(daemon.pid()));
    }
    discord.delay_answers(Duration::ZERO);
    for user in users {
        user.await.unwrap();
    }
    let rss_end = rss_mb(daemon.pid());
    let stalls = metric(&daemon.url, "mananera_runtime_stalls_total").await;
    let slow_polls = metric_sum(&daemon.url, "mananera_slow_polls_total").await;
    let store_timeouts = metric_sum(&daemon.url, "mananera_store_timeouts_total").await;
    let (duplicates_discord, cut) = discord_duplicates(&discord.calls());
    record(&tallies, "discord", |t| t.cut_by_fault = cut);
    let duplicates_telegram = telegram_duplicates(&telegram.calls());
    let (status, log) = daemon.terminate();
    let undelivered = log.matches("a reply could not be delivered whole").count();

    println!(
        "\n| front end | sent | answered | refused | lost | cut by a swallowed follow-up | p50 s | p99 s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let tallies = tallies.lock().unwrap();
    for name in ["web", "discord", "telegram"] {
        let t = tallies.get(name).unwrap();
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            t.sent,
            t.answered,
            t.refused,
            t.lost,
            t.cut_by_fault,
            t.percentile(0.5),
            t.percentile(0.99)
        );
    }
    println!(
        "\n{seconds} s, {tokens} tokens a speech, model {}; runtime heartbeat max gap {max_gap:.3} s; watchdog trips {stalls}; slow polls {slow_polls}; store timeouts {store_timeouts}; RSS start {rss_start:.0} MB, max {rss_max:.0} MB, end {rss_end:.0} MB; duplicates: discord {duplicates_discord}, telegram {duplicates_telegram}; replies the bots gave up on: {undelivered}; nightly run: {nightly_outcome}; exit {status}",
        model.display()
    );
    assert!(status.success(), "{log}");
    assert_eq!(stalls, 0.0, "watchdog trips");
    assert_eq!(duplicates_discord + duplicates_telegram, 0, "duplicates");
    for (name, t) in tallies.iter() {
        assert_eq!(t.lost, 0, "{name}: accepted requests never answered");
    }
}

/// Sum of every series of a labelled counter.
async fn metric_sum(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// `mananera retrain --now --wait` against the daemon (its control socket is in `state`):
/// the run's outcome.
fn retrain(settings: &std::path::Path, state: &std::path::Path) -> String {
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(settings)
        .args(["--set", &state_dir_setting(state)])
        .args(["--format", "json", "retrain", "--now", "--wait"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    match run["outcome"].as_str() {
        Some(outcome) => outcome.to_string(),
        None => format!("no run: {}", String::from_utf8_lossy(&out.stderr).trim()),
    }
}

/// A web user from its own loopback address (so the limits see a person of its own).
async fn web_user(url: String, u: usize, until: Instant, tallies: Tallies) {
    let address: std::net::IpAddr = format!("127.0.0.{}", 10 + u).parse().unwrap();
    let client = reqwest::Client::builder()
        .local_address(address)
        .timeout(ANSWER_WITHIN)
        .build()
        .unwrap();
    let mut n = u as u64 * 5;
    while Instant::now() < until {
        tokio::time::sleep(think()).await;
        n += 1;
        let asked = Instant::now();
        record(&tallies, "web", |t| t.sent += 1);
        let answer = client
            .post(format!("{url}/api/generate"))
            .json(&json!({ "topic": topic(n) }))
            .send()
            .await;
        let seconds = asked.elapsed().as_secs_f64();
        match answer {
            Ok(response) if response.status() == 200 => record(&tallies, "web", |t| {
                t.answered += 1;
                t.latencies.push(seconds);
            }),
            Ok(_) => record(&tallies, "web", |t| t.refused += 1),
            Err(_) => record(&tallies, "web", |t| t.lost += 1),
        }
    }
}

/// A Discord user asking one speech after another, each shown whole before the next.
async fn discord_user(fake: FakeDiscord, u: usize, until: Instant, tallies: Tallies) {
    let user = format!("{}", 900 + u);
    let mut n = u as u64 * 7;
    while Instant::now() < until {
        tokio::time::sleep(think()).await;
        n += 1;
        let asked = Instant::now();
        record(&tallies, "discord", |t| t.sent += 1);
        let token = fake.slash("mañanera", Some(&topic(n)), &user, true);
        let shown = settled(ANSWER_WITHIN, || {
            let pages = dc::final_pages(&fake.calls(), &token);
            let whole = pages
                .last()
                .is_some_and(|p| !p.is_empty() && !p.ends_with(" …"));
            whole.then(|| pages.join(" "))
        })
        .await;
        let seconds = asked.elapsed().as_secs_f64();
        match shown {
            Some(_) => record(&tallies, "discord", |t| {
                t.answered += 1;
                t.latencies.push(seconds);
            }),
            // A reply that ended at a swallowed follow-up is counted apart, at the end.
            None if swallowed(&fake.calls(), &token) => {}
            None => record(&tallies, "discord", |t| t.lost += 1),
        }
    }
}

/// A Telegram user in a private chat of its own.
async fn telegram_user(fake: FakeTelegram, u: usize, until: Instant, tallies: Tallies) {
    let chat = 8000 + u as i64;
    let mut n = u as u64 * 11;
    while Instant::now() < until {
        tokio::time::sleep(think()).await;
        n += 1;
        let asked = Instant::now();
        let after = fake.calls().len();
        record(&tallies, "telegram", |t| t.sent += 1);
        fake.user_says(chat, chat, &format!("/mananera {}", topic(n)), None);
        let shown = settled(ANSWER_WITHIN, || {
            let messages = tg::final_messages(&fake.calls(), chat, after);
            let whole = messages
                .last()
                .is_some_and(|m| !m.is_empty() && !m.ends_with(" …"));
            whole.then(|| messages.join(" "))
        })
        .await;
        let seconds = asked.elapsed().as_secs_f64();
        match shown {
            Some(_) => record(&tallies, "telegram", |t| {
                t.answered += 1;
                t.latencies.push(seconds);
            }),
            None => record(&tallies, "telegram", |t| t.lost += 1),
        }
    }
}

/// The first value of `check` that stays the same for 2 s (a reply between two of its
/// messages looks whole for a moment), or `None` after `within`.
async fn settled(within: Duration, check: impl Fn() -> Option<String>) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut seen: Option<(String, Instant)> = None;
    while Instant::now() < deadline {
        match (check(), &seen) {
            (Some(now), Some((before, since))) if *before == now => {
                if since.elapsed() >= Duration::from_secs(2) {
                    return Some(now);
                }
            }
            (Some(now), _) => seen = Some((now, Instant::now())),
            (None, _) => seen = None,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// True when the reply of `token` created a follow-up the fake never answered.
fn swallowed(calls: &[dc::Call], token: &str) -> bool {
    calls
        .iter()
        .any(|c| c.method == "POST" && c.path.ends_with(token) && c.swallowed)
}

/// Follow-ups posted twice with the same text for one reply, and replies cut by a swallowed
/// follow-up.
fn discord_duplicates(calls: &[dc::Call]) -> (u64, u64) {
    let mut posts: HashMap<(String, String), u64> = HashMap::new();
    let mut cut = 0;
    for c in calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.contains("/webhooks/"))
    {
        let content = c.body["content"].as_str().unwrap_or_default().to_string();
        *posts.entry((c.path.clone(), content)).or_default() += 1;
        cut += u64::from(c.swallowed);
    }
    (posts.values().map(|n| n - 1).sum(), cut)
}

/// Messages sent twice with the same text as replies to the same message.
fn telegram_duplicates(calls: &[tg::Call]) -> u64 {
    let mut sent: HashMap<(String, String), u64> = HashMap::new();
    for c in calls.iter().filter(|c| c.method == "sendmessage") {
        let key = (
            format!(
                "{}:{}",
                c.body["chat_id"], c.body["reply_parameters"]["message_id"]
            ),
            c.body["text"].as_str().unwrap_or_default().to_string(),
        );
        *sent.entry(key).or_default() += 1;
    }
    sent.values().map(|n| n - 1).sum()
}
