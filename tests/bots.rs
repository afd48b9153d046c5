//! The chat bots, end to end: the real daemon binary against loopback fakes of Discord
//! (REST + gateway) and of the Telegram Bot API.

mod daemon;
mod fake_chat;

use std::time::Duration;

use daemon::{Daemon, WHOLE_LENGTH, metric, slow_model, tiny_model};
use fake_chat::discord::{self as dc, FakeDiscord};
use fake_chat::telegram::{self as tg, FakeTelegram};
use serde_json::{Value, json};

/// A long (about 6,900 characters, 5 s) speech from the slow model: several edits, and
/// more than one message on both platforms.
const LONG: &[&str] = &[
    "generation.max_new_tokens=1200",
    "serve.max_new_tokens=1200",
    "generation.max_words=0",
    WHOLE_LENGTH,
    "generation.seed=1",
];

/// The tests of this file take turns: several daemons decoding at once on two cores slow
/// each other down far more than they would alone (each engine's thread pool waits on the
/// others'), which made speeches take minutes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound on waiting for a speech: generous, for a busy machine (a 1,200-token speech
/// takes 5 s alone).
const SPEECH_WITHIN: Duration = Duration::from_secs(240);

fn sets<'a>(extra: &'a [&'a str], more: &'a [String]) -> Vec<&'a str> {
    extra
        .iter()
        .copied()
        .chain(more.iter().map(String::as_str))
        .collect()
}

/// A counter once the worker has recorded its last step (it counts after answering).
async fn settled(daemon: &Daemon, series: &str) -> f64 {
    let mut last = metric(&daemon.url, series).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = metric(&daemon.url, series).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Consecutive changes to one reply (or chat) are at least the 1 s edit interval apart,
/// less a little for the time between the bot's clock and the fake's.
fn assert_paced(times: impl Iterator<Item = std::time::Instant>) {
    let times: Vec<_> = times.collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(950),
            "two changes {gap:?} apart"
        );
    }
}

/// The words of a text, to compare texts split into messages at spaces.
fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// Waits until the bot has registered its commands.
async fn registered(fake: &FakeDiscord) {
    fake.wait_for(Duration::from_secs(30), "registration", |calls, _| {
        calls.iter().any(|c| c.method == "PUT").then_some(())
    })
    .await;
}

/// Waits until the reply of interaction `token` has been edited once.
async fn first_edit(fake: &FakeDiscord, token: &str, within: Duration) {
    fake.wait_for(within, "a first edit", |calls, _| {
        calls
            .iter()
            .any(|c| c.method == "PATCH" && c.path.contains(token))
            .then_some(())
    })
    .await;
}

/// The speech is shown whole: several messages, none still marked as being written.
fn assert_whole(pages: &[String], log: &str) {
    assert!(
        pages.len() >= 4 && !pages.iter().any(|p| p.ends_with(" …")),
        "{pages:#?}\n{log}"
    );
}

/// The speech the daemon stored for `topic`, fetched over HTTP (a cache hit).
async fn cached_speech(daemon: &Daemon, topic: &str) -> String {
    let reply = daemon::generate(&daemon.url, &json!({ "topic": topic })).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    reply.json["text"].as_str().unwrap().to_string()
}

fn discord_daemon(
    fake: &FakeDiscord,
    state: &std::path::Path,
    model: &std::path::Path,
    extra: &[&str],
) -> Daemon {
    let proxy = format!("discord.api_proxy={:?}", fake.rest_url);
    let guilds = format!("discord.guilds=[{}]", dc::GUILD_ID);
    let more = [proxy, guilds];
    Daemon::start_with_env(
        model,
        state,
        &sets(extra, &more),
        &[("MANANERA_DISCORD_TOKEN", "discord-test-token")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_registers_defers_streams_paced_and_continues_past_2000_characters() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = discord_daemon(&fake, &dir.path().join("state"), &slow_model(), LONG);

    // Registration: per guild, bulk overwrite, the documented schema.
    let registered = fake
        .wait_for(
            Duration::from_secs(30),
            "command registration",
            |calls, _| calls.iter().find(|c| c.method == "PUT").cloned(),
        )
        .await;
    assert!(
        registered.path.ends_with(&format!(
            "/applications/{}/guilds/{}/commands",
            dc::APP_ID,
            dc::GUILD_ID
        )),
        "{}",
        registered.path
    );
    let command = registered
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mañanera")
        .unwrap()
        .clone();
    let option = &command["options"][0];
    assert_eq!(
        (
            option["name"].clone(),
            option["type"].clone(),
            option["required"].clone(),
            option["max_length"].clone()
        ),
        (json!("tema"), json!(3), json!(true), json!(200)),
        "{command}"
    );
    // The voice: an optional choice among the configured voices, the default first.
    let voice = &command["options"][1];
    assert_eq!(voice["name"], "voz", "{command}");
    assert_ne!(voice["required"], json!(true), "{command}");
    let choices: Vec<&str> = voice["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_str().unwrap())
        .collect();
    assert_eq!(choices, ["amlo", "sheinbaum"], "{command}");
    assert!(!command["description"].as_str().unwrap().is_empty());

    // The speech: deferred at once, edited at most once a second, continued in follow-ups.
    let asked = std::time::Instant::now();
    let token = fake.slash("mañanera", Some("@everyone el agua <@&1234>"), "111", true);
    let callback = fake
        .wait_for(Duration::from_secs(3), "deferred response", |calls, _| {
            calls
                .iter()
                .find(|c| c.path.contains(&token) && c.path.ends_with("/callback"))
                .cloned()
        })
        .await;
    assert_eq!(callback.body["type"], 5, "{:?}", callback.body);
    assert!(callback.at - asked < Duration::from_secs(3));
    let final_pages = fake
        .wait_for(SPEECH_WITHIN, "the whole speech", |calls, _| {
            let pages = dc::final_pages(calls, &token);
            (pages.len() >= 4 && !pages.iter().any(|p| p.ends_with(" …"))).then_some(pages)
        })
        .await;
    let stored = cached_speech(&daemon, "@everyone el agua <@&1234>").await;
    assert_eq!(words(&final_pages.join(" ")), words(&stored));
    assert!(stored.chars().count() > 6000);

    let calls = fake.calls();
    let edits: Vec<&dc::Call> = calls
        .iter()
        .filter(|c| c.path.contains(&token) && !c.path.ends_with("/callback"))
        .collect();
    assert!(edits.len() >= 5, "{} edits", edits.len());
    assert_paced(edits.iter().map(|c| c.at));
    for call in &edits {
        let content = call.body["content"].as_str().unwrap();
        assert!(
            content.chars().count() <= 2000,
            "{} characters",
            content.chars().count()
        );
        assert_eq!(
            call.body["allowed_mentions"]["parse"],
            json!([]),
            "{:?}",
            call.body
        );
        for key in ["users", "roles"] {
            let listed = &call.body["allowed_mentions"][key];
            assert!(listed.is_null() || listed == &json!([]), "{:?}", call.body);
        }
    }

    // The same topic again is a cache hit: answered without the model.
    let tokens_before = settled(&daemon, "mananera_generated_tokens_total").await;
    let hits_before = metric(&daemon.url, "mananera_cache_hits_total").await;
    let token = fake.slash("mañanera", Some("@everyone el agua <@&1234>"), "112", true);
    let pages = fake
        .wait_for(SPEECH_WITHIN, "the cached speech", |calls, _| {
            let pages = dc::final_pages(calls, &token);
            (pages.len() >= 4).then_some(pages)
        })
        .await;
    assert_eq!(words(&pages.join(" ")), words(&stored));
    assert_eq!(
        metric(&daemon.url, "mananera_generated_tokens_total").await,
        tokens_before
    );
    assert_eq!(
        metric(&daemon.url, "mananera_cache_hits_total").await,
        hits_before + 1.0
    );
    assert!(
        metric(
            &daemon.url,
            "mananera_requests_total{frontend=\"discord\",outcome=\"cached\"}"
        )
        .await
            >= 1.0
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("discord-test-token"), "the token was logged");
    assert!(log.contains("bots=discord"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_honours_429_and_keeps_answering_across_a_reconnect() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = discord_daemon(&fake, &dir.path().join("state"), &slow_model(), LONG);
    fake.wait_for(
        Duration::from_secs(30),
        "READY and registration",
        |calls, _| calls.iter().any(|c| c.method == "PUT").then_some(()),
    )
    .await;

    // The second edit is refused with 429 (retry after 2 s): the next one waits.
    fake.refuse_edits(0);
    let token = fake.slash("mañanera", Some("la refinería"), "201", true);
    fake.wait_for(Duration::from_secs(10), "a first edit", |calls, _| {
        calls
            .iter()
            .any(|c| c.path.contains(&token) && c.method == "PATCH")
            .then_some(())
    })
    .await;
    fake.refuse_edits(1);

    // Meanwhile the gateway asks for a reconnect: the bot resumes the same session.
    fake.reconnect();
    let resume = fake
        .wait_for(SPEECH_WITHIN, "RESUME", |_, frames| {
            frames.iter().find(|f| f.op == 6).cloned()
        })
        .await;
    assert_eq!(resume.d["session_id"], "session-1");
    assert_eq!(resume.d["token"], "Bot discord-test-token");
    assert!(resume.connection >= 2);
    assert!(resume.d["seq"].as_u64().unwrap() >= 1);

    // The speech accepted before the reconnect still finishes.
    let pages = fake
        .wait_for(SPEECH_WITHIN, "the whole speech", |calls, _| {
            let pages = dc::final_pages(calls, &token);
            (pages.len() >= 4 && !pages.iter().any(|p| p.ends_with(" …"))).then_some(pages)
        })
        .await;
    assert_eq!(
        words(&pages.join(" ")),
        words(&cached_speech(&daemon, "la refinería").await)
    );
    let calls: Vec<dc::Call> = fake
        .calls()
        .into_iter()
        .filter(|c| {
            c.path.contains(&token) && c.method.starts_with("PATCH")
                || c.method == "POST" && c.path.ends_with(&token)
        })
        .collect();
    let refused = calls
        .iter()
        .position(|c| c.method == "PATCH 429")
        .expect("a 429");
    let after = calls[refused + 1].at - calls[refused].at;
    assert!(
        after >= Duration::from_secs(2),
        "retried {after:?} after a 429 asking for 2 s"
    );

    // And a new command on the resumed session is answered.
    let token = fake.slash("mañanera", Some("el aeropuerto"), "202", true);
    fake.wait_for(
        Duration::from_secs(5),
        "an answer after the reconnect",
        |calls, _| {
            calls
                .iter()
                .any(|c| c.path.contains(&token) && c.path.ends_with("/callback"))
                .then_some(())
        },
    )
    .await;
    drop(daemon);
}

/// The interaction's first response, once it comes.
async fn first_response(fake: &FakeDiscord, token: &str) -> Value {
    fake.wait_for(
        Duration::from_secs(10),
        "an interaction response",
        |calls, _| {
            calls
                .iter()
                .find(|c| c.path.contains(token) && c.path.ends_with("/callback"))
                .map(|c| c.body.clone())
        },
    )
    .await
}

/// An ephemeral notice's text; panics if the response is not one.
fn ephemeral(response: &Value) -> String {
    assert_eq!(response["type"], 4, "{response}");
    assert_eq!(response["data"]["flags"], 64, "{response}");
    assert_eq!(
        response["data"]["allowed_mentions"]["parse"],
        json!([]),
        "{response}"
    );
    response["data"]["content"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_bad_input_floods_and_admins_get_clear_answers_while_others_are_served() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Telegram is configured but its server is down: Discord and the web page carry on.
    let telegram = format!("telegram.api_url={:?}", "http://127.0.0.1:9");
    let more = [
        format!("discord.api_proxy={:?}", fake.rest_url),
        "limits.admins=[\"discord:1\"]".to_string(),
        "limits.per_minute=20".to_string(),
        telegram,
    ];
    let daemon = Daemon::start_with_env(
        &tiny_model(),
        &dir.path().join("state"),
        &sets(&[], &more),
        &[
            ("MANANERA_DISCORD_TOKEN", "discord-test-token"),
            ("MANANERA_TELEGRAM_TOKEN", "123:telegram-test-token"),
        ],
    );
    let registered = fake
        .wait_for(Duration::from_secs(30), "registration", |calls, _| {
            calls.iter().find(|c| c.method == "PUT").cloned()
        })
        .await;
    assert!(
        registered
            .path
            .ends_with(&format!("/applications/{}/commands", dc::APP_ID)),
        "global: {}",
        registered.path
    );

    let cases: &[(Option<&str>, &str)] = &[
        (None, "El tema está vacío"),
        (Some(""), "El tema está vacío"),
        (Some(&"a".repeat(250)), "el límite es 200"),
        (Some("😀😀😀"), ""),
        (Some("\u{200b}\u{200b}"), "El tema está vacío"),
        (Some("\u{202e}\u{200f}"), "El tema está vacío"),
        (Some("**negritas** <b>html</b> `código`"), ""),
        (Some("<@123> @everyone @here <#456>"), ""),
    ];
    for (i, (topic, expect)) in cases.iter().enumerate() {
        let user = format!("30{i}");
        let token = fake.slash("mañanera", *topic, &user, true);
        let response = first_response(&fake, &token).await;
        if expect.is_empty() {
            assert_eq!(response["type"], 5, "{topic:?}: {response}");
        } else {
            let text = ephemeral(&response);
            assert!(text.contains(expect), "{topic:?}: {text}");
        }
    }

    // An unknown voice (a client with an old command list) is refused with the voices.
    let token = fake.slash_option("mañanera", Some(("voz", "fox")), "399", true);
    let text = ephemeral(&first_response(&fake, &token).await);
    assert_eq!(
        text, "No conozco la voz «fox». Las voces son: amlo, sheinbaum.",
        "{text}"
    );

    // A flood from one person: every interaction gets an answer, most of them refusals.
    let tokens: Vec<String> = (0..50)
        .map(|_| fake.slash("mañanera", Some("el tren maya"), "400", true))
        .collect();
    let mut refused = 0;
    for token in &tokens {
        let response = first_response(&fake, token).await;
        if response["type"] == 4 {
            let text = ephemeral(&response);
            assert!(
                text.contains("en el último minuto")
                    || text.contains("todavía se está escribiendo"),
                "{text}"
            );
            refused += 1;
        }
    }
    assert!(refused >= 30, "{refused} of 50 refused");
    // Someone else is still served.
    let token = fake.slash("mañanera", Some("el tren maya"), "401", true);
    assert_eq!(first_response(&fake, &token).await["type"], 5);
    fake.wait_for(SPEECH_WITHIN, "the other person's speech", |calls, _| {
        let pages = dc::final_pages(calls, &token);
        (!pages[0].is_empty() && !pages[0].ends_with(" …")).then_some(())
    })
    .await;

    // The status command: admins only.
    let token = fake.slash("mañanera-estado", None, "402", true);
    assert!(ephemeral(&first_response(&fake, &token).await).contains("administradores"));
    let token = fake.slash("mañanera-estado", None, "1", true);
    let status = ephemeral(&first_response(&fake, &token).await);
    assert!(status.contains("modelo: tiny-bloom-4h"), "{status}");
    assert!(status.contains("discord, telegram"), "{status}");
    // Its admin actions: only admins, and a cancel with no run says so.
    let token = fake.slash_option(
        "mañanera-estado",
        Some(("accion", "reentrenar")),
        "402",
        true,
    );
    assert!(ephemeral(&first_response(&fake, &token).await).contains("administradores"));
    let token = fake.slash_option("mañanera-estado", Some(("accion", "cancelar")), "1", true);
    let cancel = ephemeral(&first_response(&fake, &token).await);
    assert_eq!(
        cancel, "No se pudo: no hay ningún reentrenamiento en curso que cancelar.",
        "{cancel}"
    );

    // Direct messages are answered; the telegram outage is only logged.
    let token = fake.slash("mañanera", Some("el petróleo"), "403", false);
    assert_eq!(first_response(&fake, &token).await["type"], 5);
    let health = reqwest::get(format!("{}/healthz", daemon.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("telegram: the bot failed"), "{log}");
    assert!(
        !log.contains("telegram-test-token") && !log.contains("discord-test-token"),
        "a token was logged"
    );
}

fn telegram_daemon(
    fake: &FakeTelegram,
    state: &std::path::Path,
    model: &std::path::Path,
    extra: &[&str],
) -> Daemon {
    let more = [
        format!("telegram.api_url={:?}", fake.url),
        "telegram.poll_timeout_s=2".to_string(),
    ];
    Daemon::start_with_env(
        model,
        state,
        &sets(extra, &more),
        &[("MANANERA_TELEGRAM_TOKEN", "123:telegram-test-token")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_registers_types_streams_paced_and_continues_past_4096_characters() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = telegram_daemon(&fake, &dir.path().join("state"), &slow_model(), LONG);
    let commands = fake
        .wait_for(Duration::from_secs(30), "setMyCommands", |calls| {
            calls.iter().find(|c| c.method == "setmycommands").cloned()
        })
        .await;
    let names: Vec<&str> = commands.body["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mananera", "help", "start", "estado"]);
    assert_eq!(commands.token, "123:telegram-test-token");
    fake.wait_for(Duration::from_secs(10), "long polling", |calls| {
        calls.iter().any(|c| c.method == "getupdates").then_some(())
    })
    .await;

    // A private chat: plain text is a topic.
    let start = fake.calls().len();
    let asked = std::time::Instant::now();
    fake.user_says(42, 42, "el agua *negritas* <b>x</b> _y_", None);
    let texts = fake
        .wait_for(SPEECH_WITHIN, "the whole speech", |calls| {
            let texts = tg::final_messages(calls, 42, start);
            (texts.len() >= 2 && !texts.iter().any(|t| t.ends_with(" …"))).then_some(texts)
        })
        .await;
    let stored = cached_speech(&daemon, "el agua *negritas* <b>x</b> _y_").await;
    assert_eq!(words(&texts.join(" ")), words(&stored));
    let calls = fake.calls()[start..].to_vec();
    let writes: Vec<&tg::Call> = calls
        .iter()
        .filter(|c| c.method == "sendmessage" || c.method == "editmessagetext")
        .collect();
    assert!(writes.len() >= 4, "{} writes", writes.len());
    assert_paced(writes.iter().map(|c| c.at));
    for write in &writes {
        assert!(write.body["text"].as_str().unwrap().chars().count() <= 4096);
        assert!(
            write.body.get("parse_mode").is_none_or(Value::is_null),
            "{:?}",
            write.body
        );
    }
    let typing: Vec<&tg::Call> = calls
        .iter()
        .filter(|c| c.method == "sendchataction")
        .collect();
    assert_eq!(typing[0].body["action"], "typing");
    assert!(typing[0].at - asked < Duration::from_secs(2));
    assert!(
        typing.len() >= 2,
        "typing shown {} times during a {:?} speech",
        typing.len(),
        writes.last().unwrap().at - asked
    );
    for pair in typing.windows(2) {
        // Telegram shows "typing…" for 5 s after each call.
        assert!(
            pair[1].at - pair[0].at < Duration::from_secs(5),
            "typing lapsed"
        );
    }

    // In a group: plain text is ignored; the command (addressed or not) and replies are not.
    let start = fake.calls().len();
    fake.user_says(-100, 7, "hola a todos", None);
    fake.user_says(-100, 7, "/mananera@otro_bot el agua", None);
    fake.user_says(-100, 8, "/mananera@mananera_bot la sequía", None);
    fake.wait_for(SPEECH_WITHIN, "the group's speech", |calls| {
        let texts = tg::final_messages(calls, -100, start);
        (!texts.is_empty() && !texts[0].ends_with(" …") && texts.len() >= 2).then_some(())
    })
    .await;
    let replied_to: Vec<i64> = fake.calls()[start..]
        .iter()
        .filter(|c| c.method == "sendmessage")
        .map(|c| c.body["reply_parameters"]["message_id"].as_i64().unwrap())
        .collect();
    assert!(!replied_to.is_empty());
    let id_of_command = replied_to[0];
    assert!(
        replied_to.iter().all(|&id| id == id_of_command),
        "{replied_to:?}"
    );

    // The same topic again: a cache hit, without the model.
    let tokens_before = settled(&daemon, "mananera_generated_tokens_total").await;
    let start = fake.calls().len();
    fake.user_says(43, 43, "el agua *negritas* <b>x</b> _y_", None);
    let texts = fake
        .wait_for(SPEECH_WITHIN, "the cached speech", |calls| {
            let texts = tg::final_messages(calls, 43, start);
            (texts.len() >= 2).then_some(texts)
        })
        .await;
    assert_eq!(words(&texts.join(" ")), words(&stored));
    assert_eq!(
        metric(&daemon.url, "mananera_generated_tokens_total").await,
        tokens_before
    );
    assert!(
        metric(
            &daemon.url,
            "mananera_requests_total{frontend=\"telegram\",outcome=\"cached\"}"
        )
        .await
            >= 1.0
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("telegram-test-token"), "the token was logged");
}

/// The bot's replies to chat `chat` since call number `after`.
fn replies(fake: &FakeTelegram, chat: i64, after: usize) -> Vec<String> {
    fake.calls()[after..]
        .iter()
        .filter(|c| c.method == "sendmessage" && c.body["chat_id"] == json!(chat))
        .map(|c| c.body["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_honours_429_and_answers_bad_input_and_floods_clearly() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = telegram_daemon(
        &fake,
        &dir.path().join("state"),
        &slow_model(),
        &[
            "generation.max_new_tokens=600",
            "serve.max_new_tokens=600",
            "generation.max_words=0",
            WHOLE_LENGTH,
            "limits.admins=[\"telegram:1\"]",
        ],
    );
    fake.wait_for(Duration::from_secs(30), "long polling", |calls| {
        calls.iter().any(|c| c.method == "getupdates").then_some(())
    })
    .await;

    // 429 on an edit: nothing is written to that chat for the 2 s asked.
    fake.refuse("editmessagetext", 1);
    let start = fake.calls().len();
    fake.user_says(50, 50, "/mananera la refinería", None);
    fake.wait_for(SPEECH_WITHIN, "the speech", |calls| {
        let texts = tg::final_messages(calls, 50, start);
        (!texts.is_empty()
            && !texts[0].ends_with(" …")
            && calls.iter().any(|c| c.method == "editmessagetext 429"))
        .then_some(())
    })
    .await;
    let calls = fake.calls()[start..].to_vec();
    let writes: Vec<&tg::Call> = calls
        .iter()
        .filter(|c| c.method.starts_with("editmessagetext") || c.method == "sendmessage")
        .collect();
    let refused = writes
        .iter()
        .position(|c| c.method == "editmessagetext 429")
        .unwrap();
    let after = writes[refused + 1].at - writes[refused].at;
    assert!(
        after >= Duration::from_secs(2),
        "wrote {after:?} after a 429 asking for 2 s"
    );

    // Bad topics get a clear answer each.
    let cases: &[(&str, &str)] = &[
        ("/mananera", "Falta el tema"),
        ("/mañanera    ", "Falta el tema"),
        (
            &format!("/mananera {}", "a".repeat(250)),
            "el límite es 200",
        ),
        ("\u{200b}\u{200b}", "El tema está vacío"),
        ("\u{202e}\u{200f}", "El tema está vacío"),
        // An unknown voice is refused with the voices there are.
        (
            "/mananera [fox] el agua",
            "No conozco la voz «fox». Las voces son: amlo, sheinbaum.",
        ),
        ("/start", "/mananera"),
        ("/estado", "administradores"),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let chat = 60 + i as i64;
        let start = fake.calls().len();
        fake.user_says(chat, chat, text, None);
        let reply = fake
            .wait_for(Duration::from_secs(10), "a reply", |calls| {
                calls[start..]
                    .iter()
                    .find(|c| c.method == "sendmessage" && c.body["chat_id"] == json!(chat))
                    .map(|c| c.body["text"].as_str().unwrap().to_string())
            })
            .await;
        assert!(reply.contains(expect), "{text:?}: {reply}");
    }
    let start = fake.calls().len();
    fake.user_says(1, 1, "/estado", None);
    let status = fake
        .wait_for(Duration::from_secs(10), "the status", |calls| {
            calls[start..]
                .iter()
                .find(|c| c.method == "sendmessage")
                .map(|c| c.body["text"].as_str().unwrap().to_string())
        })
        .await;
    assert!(
        status.contains("modelo: m-") && status.contains("bots: telegram"),
        "{status}"
    );

    // Emoji, markup and mentions are topics like any other.
    for (i, text) in [
        "😀😀😀",
        "@everyone <a href='x'>y</a> **z**",
        "/mananera sheinbaum: el agua",
    ]
    .iter()
    .enumerate()
    {
        let chat = 80 + i as i64;
        let start = fake.calls().len();
        fake.user_says(chat, chat, text, None);
        fake.wait_for(SPEECH_WITHIN, "a speech", |calls| {
            let texts = tg::final_messages(calls, chat, start);
            (!texts.is_empty() && !texts[0].ends_with(" …")).then_some(())
        })
        .await;
    }

    // A flood of 50 from one person: one speech, one refusal notice, nothing else; another
    // person is still served.
    let start = fake.calls().len();
    for _ in 0..50 {
        fake.user_says(90, 90, "el tren maya", None);
    }
    fake.user_says(91, 91, "el tren maya", None);
    fake.wait_for(SPEECH_WITHIN, "the other person's speech", |calls| {
        let texts = tg::final_messages(calls, 91, start);
        (!texts.is_empty() && !texts[0].ends_with(" …")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flood = replies(&fake, 90, start);
    let notices: Vec<&String> = flood
        .iter()
        .filter(|t| t.contains("todavía se está escribiendo") || t.contains("minuto"))
        .collect();
    assert!(!notices.is_empty(), "{flood:?}");
    assert!(
        notices.len() <= 2,
        "{} notices for one flood",
        notices.len()
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_reidentifies_after_a_dropped_connection_and_an_invalid_session_and_finishes_speeches_at_shutdown()
 {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A grace period no loaded test machine can exhaust: the speech must finish.
    let grace = [LONG, &["queue.grace_s=300"]].concat();
    let daemon = discord_daemon(&fake, &dir.path().join("state"), &slow_model(), &grace);
    registered(&fake).await;

    // The network drops the connection and the session cannot be resumed.
    fake.refuse_next_resume();
    fake.drop_connection();
    fake.wait_for(Duration::from_secs(30), "a second IDENTIFY", |_, frames| {
        (frames.iter().filter(|f| f.op == 2).count() >= 2).then_some(())
    })
    .await;
    let frames = fake.frames();
    assert!(frames.iter().any(|f| f.op == 6), "a RESUME was tried first");
    // READY of the new session: registration runs again and changes nothing.
    fake.wait_for(Duration::from_secs(10), "registration again", |calls, _| {
        (calls.iter().filter(|c| c.method == "PUT").count() >= 2).then_some(())
    })
    .await;
    let puts: Vec<Value> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "PUT")
        .map(|c| c.body.clone())
        .collect();
    assert_eq!(puts[0], puts[1]);

    // A speech asked on the new session; SIGTERM while it is written: it is finished
    // and shown whole before the daemon exits.
    let token = fake.slash("mañanera", Some("la soberanía"), "501", true);
    first_edit(&fake, &token, Duration::from_secs(10)).await;
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    let pages = dc::final_pages(&fake.calls(), &token);
    assert_whole(&pages, &log);
    assert!(pages.join(" ").split_whitespace().count() >= 1100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_webhook_mode_takes_updates_with_the_secret_only() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The token comes from systemd's credentials directory.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(
        credentials.join("telegram-token"),
        "123:telegram-test-token\n",
    )
    .unwrap();
    let more = [
        format!("telegram.api_url={:?}", fake.url),
        format!("telegram.webhook_url={:?}", "https://bot.example/tg/hook"),
        format!("telegram.webhook_listen={:?}", format!("127.0.0.1:{port}")),
    ];
    let daemon = Daemon::start_with_env(
        &tiny_model(),
        &dir.path().join("state"),
        &sets(&[], &more),
        &[("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap())],
    );
    let set = fake
        .wait_for(Duration::from_secs(30), "setWebhook", |calls| {
            calls.iter().find(|c| c.method == "setwebhook").cloned()
        })
        .await;
    assert_eq!(set.token, "123:telegram-test-token");
    assert_eq!(set.body["url"], "https://bot.example/tg/hook");
    let secret = set.body["secret_token"]
        .as_str()
        .expect("a secret")
        .to_string();
    assert!(secret.len() >= 16);
    assert!(
        !fake.calls().iter().any(|c| c.method == "getupdates"),
        "no polling in webhook mode"
    );

    let client = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{port}/tg/hook");
    let forged = client
        .post(&hook)
        .json(&fake.update_for(70, "el agua"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "a post without the secret is refused");
    let start = fake.calls().len();
    let posted = client
        .post(&hook)
        .header("X-Telegram-Bot-Api-Secret-Token", &secret)
        .json(&fake.update_for(71, "el agua"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    fake.wait_for(SPEECH_WITHIN, "a speech", |calls| {
        let texts = tg::final_messages(calls, 71, start);
        (!texts.is_empty() && !texts[0].ends_with(" …")).then_some(())
    })
    .await;
    assert!(
        replies(&fake, 70, 0).is_empty(),
        "the forged update was answered"
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("telegram-test-token"), "the token was logged");
}

/// The longest time between two consecutive calls of `method` at or after `from`.
fn longest_gap(calls: &[tg::Call], method: &str, from: std::time::Instant) -> Duration {
    let times: Vec<_> = calls
        .iter()
        .filter(|c| c.method == method && c.at >= from)
        .map(|c| c.at)
        .collect();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_stalls_nobody_the_bot_keeps_polling_and_every_speech_is_answered() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The first cache read parks the store's thread for 15 s, as a stalled disk would.
    let daemon_env = [
        ("MANANERA_TELEGRAM_TOKEN", "123:telegram-test-token"),
        ("MANANERA_FAILPOINTS", "store.cache=1*sleep(15000)"),
    ];
    let sets = [
        format!("telegram.api_url={:?}", fake.url),
        "telegram.poll_timeout_s=1".to_string(),
        "generation.max_new_tokens=40".to_string(),
        "limits.per_minute=0".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let daemon =
        Daemon::start_with_env(&tiny_model(), &dir.path().join("state"), &sets, &daemon_env);
    fake.wait_for(Duration::from_secs(30), "long polling", |calls| {
        calls.iter().any(|c| c.method == "getupdates").then_some(())
    })
    .await;
    let timeouts = "mananera_store_timeouts_total{op=\"cache_lookup\"}";
    let before = metric(&daemon.url, timeouts).await;
    let asked = std::time::Instant::now();
    let chats: Vec<i64> = (0..4).map(|n| 7100 + n).collect();
    for &chat in &chats {
        fake.user_says(chat, chat, &format!("/mananera tema {chat}"), None);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every speech is answered while the store is still parked.
    fake.wait_for(Duration::from_secs(12), "a speech in every chat", |calls| {
        chats
            .iter()
            .all(|&chat| {
                let pages = tg::final_messages(calls, chat, 0);
                pages
                    .last()
                    .is_some_and(|p| !p.is_empty() && !p.ends_with(" …"))
            })
            .then_some(())
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    // The bot kept polling every second or two the whole time.
    let calls = fake.calls();
    let gap = longest_gap(&calls, "getupdates", asked);
    assert!(gap < Duration::from_secs(3), "getUpdates {gap:?} apart");
    assert_eq!(metric(&daemon.url, timeouts).await, before + 4.0);
    // The store is still parked: an open incident, in /metrics and status.
    let open = r#"mananera_incident_open{dependency="state_store"}"#;
    assert_eq!(metric(&daemon.url, open).await, 1.0);
    let status =
        daemon::send(reqwest::Client::new().get(format!("{}/api/status", daemon.url))).await;
    assert_eq!(
        status.json["failing"][0]["dependency"], "state_store",
        "{:?}",
        status.json
    );
    assert_eq!(
        metric(&daemon.url, "mananera_runtime_stalls_total").await,
        0.0
    );
    let max_gap = metric(&daemon.url, "mananera_runtime_heartbeat_max_gap_seconds").await;
    assert!(
        max_gap < 3.0,
        "the runtime answered its probe {max_gap} s late"
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("failing; logged once until it recovers")
            .count(),
        1,
        "one incident, logged once: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_a_followup_never_answered_is_not_sent_twice_and_others_are_served() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = discord_daemon(&fake, &dir.path().join("state"), &slow_model(), LONG);
    registered(&fake).await;
    fake.swallow_followups(1);
    let lost = fake.slash("mañanera", Some("el agua"), "301", true);
    let posted = fake
        .wait_for(SPEECH_WITHIN, "the first follow-up", |calls, _| {
            calls
                .iter()
                .find(|c| c.method == "POST" && c.path.ends_with(&lost))
                .map(|c| c.at)
        })
        .await;
    // Another person's speech is written whole meanwhile.
    let other = fake.slash("mañanera", Some("el petróleo"), "302", true);
    let pages = fake
        .wait_for(SPEECH_WITHIN, "the other speech", |calls, _| {
            let pages = dc::final_pages(calls, &other);
            (pages.len() >= 4 && !pages.iter().any(|p| p.ends_with(" …"))).then_some(pages)
        })
        .await;
    assert_eq!(
        words(&pages.join(" ")),
        words(&cached_speech(&daemon, "el petróleo").await)
    );
    // Past the writer's deadline the unanswered reply has ended, with its follow-up sent once.
    let after = posted + Duration::from_secs(20);
    tokio::time::sleep_until(after.into()).await;
    let calls = fake.calls();
    let lost_calls: Vec<&dc::Call> = calls.iter().filter(|c| c.path.contains(&lost)).collect();
    let posts = lost_calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with(&lost))
        .count();
    assert_eq!(posts, 1, "{lost_calls:#?}");
    assert!(
        lost_calls.iter().all(|c| c.at <= posted),
        "nothing was sent for that reply after the unanswered follow-up: {lost_calls:#?}"
    );
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("it may have been posted"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_answering_3_s_late_still_shows_whole_speeches_even_at_sigterm() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let daemon = discord_daemon(&fake, &state, &slow_model(), LONG);
    registered(&fake).await;
    fake.delay_answers(Duration::from_secs(3));
    let token = fake.slash("mañanera", Some("la refinería"), "401", true);
    first_edit(&fake, &token, SPEECH_WITHIN).await;
    // Stopped while the speech is being shown, far behind the model: every page still comes.
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    let pages = dc::final_pages(&fake.calls(), &token);
    assert_whole(&pages, &log);
    // The speech, as the daemon stored it, read back after a restart.
    fake.delay_answers(Duration::ZERO);
    let again = discord_daemon(&fake, &state, &slow_model(), LONG);
    assert_eq!(
        words(&pages.join(" ")),
        words(&cached_speech(&again, "la refinería").await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_quiet_long_polls_longer_than_17_s_never_fail() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        format!("telegram.api_url={:?}", fake.url),
        "telegram.poll_timeout_s=20".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(
        &tiny_model(),
        &dir.path().join("state"),
        &sets,
        &[("MANANERA_TELEGRAM_TOKEN", "123:telegram-test-token")],
    );
    // No update for 45 s: each poll is held for its whole 20 s and answered empty.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let polls: Vec<std::time::Instant> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "getupdates")
        .map(|c| c.at)
        .collect();
    assert!(polls.len() >= 2, "{} polls", polls.len());
    for pair in polls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (Duration::from_secs(19)..Duration::from_secs(23)).contains(&gap),
            "polls {gap:?} apart: {}",
            daemon.log()
        );
    }
    // And a message then is answered at once.
    let asked = std::time::Instant::now();
    fake.user_says(7200, 7200, "/mananera el agua", None);
    fake.wait_for(Duration::from_secs(10), "the speech", |calls| {
        calls
            .iter()
            .any(|c| c.method == "sendmessage" && c.body["chat_id"] == json!(7200))
            .then_some(())
    })
    .await;
    assert!(asked.elapsed() < Duration::from_secs(5));
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("getUpdates"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_5xx_with_garbage_is_logged_once_retried_and_the_speech_still_shown_whole() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = discord_daemon(&fake, &dir.path().join("state"), &slow_model(), LONG);
    registered(&fake).await;
    fake.break_edits(4);
    let token = fake.slash("mañanera", Some("el litio"), "701", true);
    // The web API answers meanwhile.
    let asked = std::time::Instant::now();
    let web = daemon::generate(
        &daemon.url,
        &json!({"topic": "otro tema", "max_new_tokens": 20}),
    )
    .await;
    assert_eq!(web.status, 200, "{:?}", web.json);
    assert!(asked.elapsed() < Duration::from_secs(30));
    // While the edits fail (the second of four: two retries, 2 s apart, are still to come),
    // /metrics and status say so.
    fake.wait_for(SPEECH_WITHIN, "a second broken edit", |calls, _| {
        (calls.iter().filter(|c| c.method == "PATCH 500").count() >= 2).then_some(())
    })
    .await;
    // The fake has answered the second edit; the daemon counts it once serenity has read
    // that answer, a moment later: wait for it (the next retry is 2 s away).
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let status = loop {
        let status =
            daemon::send(reqwest::Client::new().get(format!("{}/api/status", daemon.url))).await;
        let counted = status.json["failing"][0]["failed_calls"].as_u64();
        if counted.is_some_and(|n| n >= 2) || std::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let open = r#"mananera_incident_open{dependency="discord_rest"}"#;
    assert_eq!(daemon::metric(&daemon.url, open).await, 1.0);
    let failing = &status.json["failing"][0];
    assert_eq!(failing["dependency"], "discord_rest", "{:?}", status.json);
    assert!(failing["failed_calls"].as_u64().unwrap() >= 2, "{failing}");
    assert!(
        failing["error"]
            .as_str()
            .unwrap()
            .contains("a message could not be shown"),
        "{failing}"
    );
    let pages = fake
        .wait_for(SPEECH_WITHIN, "the whole speech", |calls, _| {
            let pages = dc::final_pages(calls, &token);
            (pages.len() >= 4 && !pages.iter().any(|p| p.ends_with(" …"))).then_some(pages)
        })
        .await;
    assert_eq!(
        words(&pages.join(" ")),
        words(&cached_speech(&daemon, "el litio").await)
    );
    let broken = fake
        .calls()
        .iter()
        .filter(|c| c.method == "PATCH 500")
        .count();
    assert_eq!(broken, 4);
    assert_eq!(daemon::metric(&daemon.url, open).await, 0.0);
    let counted = |series: &str| format!(r#"{series}{{dependency="discord_rest"}}"#);
    assert_eq!(
        daemon::metric(
            &daemon.url,
            &counted("mananera_incident_failed_calls_total")
        )
        .await,
        4.0
    );
    assert_eq!(
        daemon::metric(&daemon.url, &counted("mananera_incidents_total")).await,
        1.0
    );
    let status =
        daemon::send(reqwest::Client::new().get(format!("{}/api/status", daemon.url))).await;
    assert_eq!(status.json["failing"], json!([]), "{:?}", status.json);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    let opened = log
        .lines()
        .filter(|l| l.contains("discord's REST API") && l.contains("failing; logged once"))
        .count();
    assert_eq!(opened, 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("discord's REST API") && l.contains("failed_calls=4")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_shards_as_recommended_or_as_set_and_answers_on_any_shard() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let fake = FakeDiscord::start().await;
    fake.recommend_shards(2);
    let dir = tempfile::tempdir().unwrap();
    let fixed = [
        "generation.seed=1",
        WHOLE_LENGTH,
        "generation.max_new_tokens=40",
        "generation.max_words=0",
    ];
    let daemon = discord_daemon(&fake, &dir.path().join("state"), &tiny_model(), &fixed);
    // "auto": the two shards Discord recommends identify, each with its id and the total
    // (serenity waits 5 s between the two).
    fake.wait_for(Duration::from_secs(30), "two shards", |_, frames| {
        (frames.iter().filter(|f| f.op == 2).count() >= 2).then_some(())
    })
    .await;
    let mut shards = fake.identified_shards();
    shards.sort_unstable();
    assert_eq!(shards, [(0, 2), (1, 2)]);
    // Shard 1 gets the interaction; it is answered all the same.
    registered(&fake).await;
    fake.dispatch_to_shard(1);
    let token = fake.slash("mañanera", Some("el agua"), "111", true);
    let pages = fake
        .wait_for(SPEECH_WITHIN, "the speech", |calls, _| {
            let pages = dc::final_pages(calls, &token);
            (!pages[0].is_empty() && !pages.iter().any(|p| p.ends_with(" …"))).then_some(pages)
        })
        .await;
    assert_eq!(
        words(&pages.join(" ")),
        words(&cached_speech(&daemon, "el agua").await)
    );
    // The commands were registered once, by shard 0.
    let puts = fake.calls().iter().filter(|c| c.method == "PUT").count();
    assert_eq!(puts, 1, "{:#?}", fake.calls());
    daemon.terminate();

    // A count: exactly that many, whatever Discord recommends.
    let fake = FakeDiscord::start().await;
    let daemon = discord_daemon(
        &fake,
        &dir.path().join("state2"),
        &tiny_model(),
        &["discord.shards=3"],
    );
    fake.wait_for(Duration::from_secs(40), "three shards", |_, frames| {
        (frames.iter().filter(|f| f.op == 2).count() >= 3).then_some(())
    })
    .await;
    let mut shards = fake.identified_shards();
    shards.sort_unstable();
    assert_eq!(shards, [(0, 3), (1, 3), (2, 3)]);
    daemon.terminate();
}
