//! `mananera serve` end to end: the real binary, the fixture models, loopback HTTP.

mod daemon;

use std::time::{Duration, Instant};

use daemon::{
    BIN, Daemon, EventStream, WHOLE_LENGTH, cache_command, generate, metric, send, slow_model,
    state_dir_setting, tiny_model,
};
use serde_json::{Value, json};

/// Settings that let one loopback client run several requests at once.
const UNLIMITED: &[&str] = &["limits.admins=[\"web:127.0.0.1\"]"];

fn text(reply: &Value) -> String {
    reply["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_deltas_concatenate_to_the_final_text_and_match_the_cli() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tiny_model(), &state.path().join("s"), UNLIMITED);
    let request = json!({"topic": "la refinería", "seed": 7, "max_words": 0, "max_new_tokens": 40});
    let mut stream = EventStream::open(&d.url, &request).await;
    let mut deltas = Vec::new();
    let (end, done) = loop {
        let (name, data) = stream.next().await.expect("events until done");
        if name != "delta" {
            break (name, data);
        }
        deltas.push(data["text"].as_str().unwrap().to_string());
    };
    assert_eq!(end, "done", "{done}");
    assert_eq!(done["cached"], false);
    assert!(deltas.len() > 3, "the text arrives in pieces: {deltas:?}");
    let streamed = deltas.concat();

    // The same request again is answered from the cache with the stored final text.
    let again = generate(&d.url, &request).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["cached"], true);
    assert_eq!(text(&again.json), streamed);
    assert_eq!(metric(&d.url, "mananera_cache_hits_total").await, 1.0);

    // And it is exactly what the engine writes alone (`mananera generate`, same seed).
    let out = std::process::Command::new(BIN)
        .args([
            "generate",
            "la refinería",
            "--seed",
            "7",
            "--max-words",
            "0",
        ])
        .args(["--max-new-tokens", "40", "--model"])
        .arg(tiny_model())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end_matches('\n'),
        streamed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_voice_has_its_own_speeches_in_the_cache() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tiny_model(), &state.path().join("s"), UNLIMITED);
    let ask = |voice: Option<&str>| {
        let mut request = json!({"topic": "el agua", "seed": 7, "max_new_tokens": 20});
        if let Some(voice) = voice {
            request["voice"] = json!(voice);
        }
        request
    };
    let amlo = generate(&d.url, &ask(None)).await;
    assert_eq!(amlo.status, 200, "{:?}", amlo.json);
    assert_eq!(
        amlo.json["voice"], "amlo",
        "generation.voice is the default"
    );
    assert_eq!(amlo.json["cached"], false);
    // The same topic and seed in the other voice is not the first one's speech.
    let sheinbaum = generate(&d.url, &ask(Some("sheinbaum"))).await;
    assert_eq!(sheinbaum.json["voice"], "sheinbaum");
    assert_eq!(sheinbaum.json["cached"], false, "{:?}", sheinbaum.json);
    assert_ne!(
        text(&amlo.json),
        text(&sheinbaum.json),
        "the header changes the speech"
    );
    // Each is then served from the cache, to its own voice.
    let again = generate(&d.url, &ask(Some("SHEINBAUM"))).await;
    assert_eq!(again.json["cached"], true);
    assert_eq!(text(&again.json), text(&sheinbaum.json));
    let again = generate(&d.url, &ask(Some("amlo"))).await;
    assert_eq!(again.json["cached"], true);
    assert_eq!(text(&again.json), text(&amlo.json));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_fills_its_variants_then_hits_rotate_through_them() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tiny_model(), &state.path().join("s"), UNLIMITED);
    let request = json!({"topic": "  Los   APOYOS  ", "max_new_tokens": 30});
    let mut generated = Vec::new();
    for _ in 0..3 {
        let r = generate(&d.url, &request).await;
        assert_eq!(r.json["cached"], false, "variants are still being written");
        generated.push(text(&r.json));
    }
    assert_eq!(metric(&d.url, "mananera_cache_misses_total").await, 3.0);
    // Same topic, other spacing and case: the same key. Hits serve the variants in turn.
    let same = json!({"topic": "los apoyos", "max_new_tokens": 30});
    for i in 0..4 {
        let r = generate(&d.url, &same).await;
        assert_eq!(r.json["cached"], true);
        assert_eq!(text(&r.json), generated[i % 3], "hit {i}");
    }
    assert_eq!(metric(&d.url, "mananera_cache_hits_total").await, 4.0);
    assert_eq!(metric(&d.url, "mananera_cache_entries").await, 1.0);
    assert!(metric(&d.url, "mananera_cache_hit_ratio").await > 0.5);
    assert_eq!(
        metric(
            &d.url,
            "mananera_requests_total{frontend=\"api\",outcome=\"cached\"}"
        )
        .await,
        4.0
    );
    // Other sampling settings are another key.
    let other = generate(
        &d.url,
        &json!({"topic": "los apoyos", "max_new_tokens": 31}),
    )
    .await;
    assert_eq!(other.json["cached"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_model_version_never_serves_old_entries_and_purges_them() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("s");
    let request = json!({"topic": "el petróleo", "seed": 1, "max_new_tokens": 20});
    let exact = [UNLIMITED[0], "engine.quantization=\"none\""];
    let d = Daemon::start(&tiny_model(), &dir, &exact);
    let first = generate(&d.url, &request).await;
    let old_version = first.json["model_version"].clone();
    assert_eq!(generate(&d.url, &request).await.json["cached"], true);
    let (status, _) = d.terminate();
    assert!(status.success());

    // Quantizing the weights changes what is served, so the version changes.
    let sets = [UNLIMITED[0], "engine.quantization=\"q8_0\""];
    let d = Daemon::start(&tiny_model(), &dir, &sets);
    let r = generate(&d.url, &request).await;
    assert_ne!(r.json["model_version"], old_version);
    assert_eq!(
        r.json["cached"], false,
        "an entry of the old version was served"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&d.url, "mananera_cache_entries").await != 1.0 {
        assert!(Instant::now() < deadline, "the old entry was not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_busy_and_a_cancelled_request_frees_its_slot() {
    let state = tempfile::tempdir().unwrap();
    let sets = [
        UNLIMITED[0],
        "queue.max_batch=1",
        "queue.capacity=0",
        "generation.temperature=0",
        "generation.max_words=0",
        WHOLE_LENGTH,
    ];
    let d = Daemon::start(&slow_model(), &state.path().join("s"), &sets);
    let long = json!({"topic": "uno", "max_new_tokens": 512});
    let mut running = EventStream::open(&d.url, &long).await;
    assert_eq!(running.next().await.unwrap().0, "delta");

    let busy = generate(&d.url, &json!({"topic": "dos", "max_new_tokens": 5})).await;
    assert_eq!(busy.status, 503);
    let message = busy.json["error"].as_str().unwrap();
    assert!(
        message.contains("busy") && message.contains("try again in about"),
        "{message}"
    );
    assert!(busy.retry_after.unwrap().parse::<u64>().unwrap() >= 1);

    // Walking away cancels the running generation and frees the batch for the next request.
    drop(running);
    let deadline = Instant::now() + Duration::from_secs(5);
    let next = loop {
        let r = generate(&d.url, &json!({"topic": "tres", "max_new_tokens": 5})).await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(next.status, 200, "{:?}", next.json);
    assert!(
        metric(&d.url, "mananera_generated_tokens_total").await < 400.0,
        "the abandoned generation ran on"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &d.url,
        "mananera_requests_total{frontend=\"web\",outcome=\"cancelled\"}",
    )
    .await
        != 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the cancellation was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_join_one_batch() {
    let state = tempfile::tempdir().unwrap();
    let sets = [
        UNLIMITED[0],
        "generation.temperature=0",
        "generation.max_words=0",
        WHOLE_LENGTH,
    ];
    let d = Daemon::start(&slow_model(), &state.path().join("s"), &sets);
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut s = EventStream::open(
            &d.url,
            &json!({"topic": format!("t{i}"), "max_new_tokens": 300}),
        )
        .await;
        assert_eq!(s.next().await.unwrap().0, "delta");
        streams.push(s);
    }
    // All four are decoding at once: the batch holds every one of them.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&d.url, "mananera_batch_size").await != 4.0 {
        assert!(
            Instant::now() < deadline,
            "the four requests never shared a batch"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for s in streams {
        let (_, end, _) = s.finish(String::new()).await;
        assert_eq!(end, "done");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_quotas_answer_429_and_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("s");
    let sets = ["limits.per_minute=2", "limits.per_day=3"];
    let d = Daemon::start(&tiny_model(), &dir, &sets);
    let ask = |n: usize| json!({"topic": format!("tema {n}"), "max_new_tokens": 5});
    assert_eq!(generate(&d.url, &ask(1)).await.status, 200);
    assert_eq!(generate(&d.url, &ask(2)).await.status, 200);
    let limited = generate(&d.url, &ask(3)).await;
    assert_eq!(limited.status, 429);
    assert!(
        limited.json["error"]
            .as_str()
            .unwrap()
            .contains("too many requests in the last minute")
    );
    assert!(limited.retry_after.is_some());
    let (status, _) = d.terminate();
    assert!(status.success());

    // The counts persist: still limited after a restart. With the rate lifted, the daily
    // quota (3) is what stops the fourth request.
    let d = Daemon::start(&tiny_model(), &dir, &sets);
    assert_eq!(generate(&d.url, &ask(4)).await.status, 429);
    let (status, _) = d.terminate();
    assert!(status.success());
    let d = Daemon::start(
        &tiny_model(),
        &dir,
        &["limits.per_minute=0", "limits.per_day=3"],
    );
    assert_eq!(generate(&d.url, &ask(5)).await.status, 200);
    let quota = generate(&d.url, &ask(6)).await;
    assert_eq!(quota.status, 429);
    assert!(
        quota.json["error"]
            .as_str()
            .unwrap()
            .contains("today's quota"),
        "{:?}",
        quota.json
    );
    // People read Spanish, with the reset at midnight in the quota's time zone; programs
    // read the code.
    assert_eq!(quota.json["code"], "quota");
    let message = quota.json["message"].as_str().unwrap();
    assert!(
        message.starts_with("Ya usaste los discursos de hoy; la cuota se renueva a medianoche (America/Mexico_City), en "),
        "{message}"
    );
    assert_eq!(
        metric(
            &d.url,
            "mananera_requests_total{frontend=\"api\",outcome=\"quota\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_users_are_refused_and_one_request_in_flight_per_user() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &tiny_model(),
        &state.path().join("b"),
        &["limits.block=[\"web:127.0.0.1\"]"],
    );
    let r = generate(&d.url, &json!({"topic": "x"})).await;
    assert_eq!(r.status, 403);
    assert!(r.json["error"].as_str().unwrap().contains("not allowed"));
    drop(d);

    let sets = [
        "generation.temperature=0",
        "generation.max_words=0",
        WHOLE_LENGTH,
        "limits.per_minute=0",
    ];
    let d = Daemon::start(&slow_model(), &state.path().join("f"), &sets);
    let mut running =
        EventStream::open(&d.url, &json!({"topic": "uno", "max_new_tokens": 400})).await;
    assert_eq!(running.next().await.unwrap().0, "delta");
    let second = generate(&d.url, &json!({"topic": "dos", "max_new_tokens": 5})).await;
    assert_eq!(second.status, 429);
    assert!(
        second.json["error"]
            .as_str()
            .unwrap()
            .contains("still being written")
    );
    let (_, end, _) = running.finish(String::new()).await;
    assert_eq!(end, "done");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let third = generate(&d.url, &json!({"topic": "tres", "max_new_tokens": 5})).await;
        if third.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the user's slot was not freed: {:?}",
            third.json
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_speeches_finish_keeps_the_cache_and_exits_0() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("s");
    let sets = [
        UNLIMITED[0],
        "generation.temperature=0",
        "generation.max_words=0",
        WHOLE_LENGTH,
    ];
    let d = Daemon::start(&slow_model(), &dir, &sets);
    // Entries already stored before the signal.
    for i in 0..3 {
        assert_eq!(
            generate(
                &d.url,
                &json!({"topic": format!("antes {i}"), "max_new_tokens": 10})
            )
            .await
            .status,
            200
        );
    }
    let mut streams = Vec::new();
    for i in 0..2 {
        let mut s = EventStream::open(
            &d.url,
            &json!({"topic": format!("durante {i}"), "max_new_tokens": 400}),
        )
        .await;
        assert_eq!(s.next().await.unwrap().0, "delta");
        streams.push(s);
    }
    let url = d.url.clone();
    let pid = d.pid();
    let waiter = std::thread::spawn(move || d.terminate());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        reqwest::Client::new()
            .get(format!("{url}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err(),
        "a stopping daemon accepts no new connections (pid {pid})"
    );
    for s in streams {
        let (_, end, done) = s.finish(String::new()).await;
        assert_eq!(end, "done", "{done}");
        assert_eq!(done["stop_reason"], "max_new_tokens");
    }
    let (status, log) = waiter.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("prompt cache flushed"), "{log}");

    let out = cache_command("stats", &dir, &["--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["entries"], 5, "{stats}");

    let out = cache_command("clear", &dir, &["--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["entries"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_grace_period_running_speeches_end_with_a_polite_message() {
    let state = tempfile::tempdir().unwrap();
    let sets = [
        UNLIMITED[0],
        "queue.grace_s=1",
        "generation.temperature=0",
        "generation.max_words=0",
        WHOLE_LENGTH,
        "serve.max_new_tokens=2000",
    ];
    let d = Daemon::start(&slow_model(), &state.path().join("s"), &sets);
    let mut stream =
        EventStream::open(&d.url, &json!({"topic": "largo", "max_new_tokens": 2000})).await;
    assert_eq!(stream.next().await.unwrap().0, "delta");
    let started = Instant::now();
    let waiter = std::thread::spawn(move || d.terminate());
    let (_, end, data) = stream.finish(String::new()).await;
    assert_eq!(end, "error");
    assert!(
        data["error"].as_str().unwrap().contains("please ask again"),
        "{data}"
    );
    let (status, log) = waiter.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the grace period was not enforced"
    );
    assert!(log.contains("cancelling them"), "{log}");
}

#[test]
fn a_model_that_cannot_be_loaded_stops_the_daemon_with_its_exit_code() {
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(state.path().join("no-such-model"))
        .arg("--set")
        .arg(state_dir_setting(&state.path().join("s")))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-model") && err.contains("does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_store_is_moved_aside_and_the_daemon_serves() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("s");
    let d = Daemon::start(&tiny_model(), &dir, UNLIMITED);
    assert_eq!(
        generate(&d.url, &json!({"topic": "uno", "max_new_tokens": 5}))
            .await
            .status,
        200
    );
    assert!(d.terminate().0.success());
    let db = dir.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().take(4000) {
        *b = (i * 131 % 251) as u8;
    }
    std::fs::write(&db, bytes).unwrap();

    let d = Daemon::start(&tiny_model(), &dir, UNLIMITED);
    let r = generate(&d.url, &json!({"topic": "uno", "max_new_tokens": 5})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["cached"], false);
    assert!(
        d.log().contains("unreadable: moving it aside"),
        "{}",
        d.log()
    );
    let aside: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("s.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept for inspection");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tiny_model(), &state.path().join("s"), UNLIMITED);
    let post = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(format!("{}/api/generate", d.url))
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (br#"{"topic": ""}"#.to_vec(), 400, "the topic is empty"),
        (
            br#"{"topic": "  \u200b "}"#.to_vec(),
            400,
            "the topic is empty",
        ),
        (
            json!({"topic": "x".repeat(10_000)})
                .to_string()
                .into_bytes(),
            400,
            "the limit is 200",
        ),
        (
            b"{\"topic\": \"el \xff\xfe petr\"}".to_vec(),
            400,
            "not valid UTF-8",
        ),
        (
            br#"{"topic": "a\u0007b"}"#.to_vec(),
            400,
            "control character (U+0007)",
        ),
        (
            br#"{"topic": "x", "temperature": 1e9}"#.to_vec(),
            400,
            "temperature",
        ),
        (
            br#"{"topic": "x", "temperature": 1e-300}"#.to_vec(),
            400,
            "at least 0.01",
        ),
        (
            br#"{"topic": "x", "max_words": 18446744073709551615}"#.to_vec(),
            400,
            "max_words",
        ),
        (br#"{"topic": "x", "top_p": 5}"#.to_vec(), 400, "top_p"),
        (br#"{"topic": "x", "top_k": -3}"#.to_vec(), 400, "top_k"),
        (
            br#"{"topic": "x", "max_new_tokens": 100000000}"#.to_vec(),
            400,
            "max_new_tokens",
        ),
        (
            br#"{"topic": "x", "repetition_penalty": 0}"#.to_vec(),
            400,
            "repetition_penalty",
        ),
        (
            br#"{"topic": "x", "colour": "red"}"#.to_vec(),
            400,
            "unknown field `colour`",
        ),
        (
            br#"{"topic": "x", "voice": "fox"}"#.to_vec(),
            400,
            "there is no voice \"fox\"; the voices are amlo, sheinbaum",
        ),
        (b"topic=x".to_vec(), 400, "not a valid request"),
        (vec![b' '; 100_000], 413, "serve.max_body_bytes"),
    ];
    for (body, status, message) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let r = send(post(body)).await;
        assert_eq!(r.status, status, "{shown}: {:?}", r.json);
        let error = r.json["error"].as_str().unwrap();
        assert!(error.contains(message), "{shown}: {error}");
    }
    // The unknown voice in the person's language, with a stable code.
    let r = send(post(br#"{"topic": "x", "voice": "fox"}"#.to_vec())).await;
    assert_eq!(r.json["code"], "unknown_voice");
    assert_eq!(
        r.json["message"],
        "No conozco la voz «fox». Las voces son: amlo, sheinbaum."
    );
    // Settings at their odd but valid extremes still give a speech.
    for odd in [
        json!({"topic": "x", "top_k": 1_000_000_000_000u64, "max_new_tokens": 3}),
        json!({"topic": "x", "top_p": 1e-300, "max_new_tokens": 3}),
        json!({"topic": "x", "seed": u64::MAX, "max_new_tokens": 3}),
        json!({"topic": "x", "repetition_penalty": 1e-30, "max_new_tokens": 3}),
    ] {
        let r = generate(&d.url, &odd).await;
        assert_eq!(r.status, 200, "{odd}: {:?}", r.json);
    }
    // Markup in a topic is just text.
    let r = generate(
        &d.url,
        &json!({"topic": "<script>alert(1)</script>", "max_new_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["topic"], "<script>alert(1)</script>");
    let missing = send(reqwest::Client::new().get(format!("{}/nope", d.url))).await;
    assert_eq!(missing.status, 404);
    // Still serving after all of that.
    assert_eq!(
        generate(&d.url, &json!({"topic": "fin", "max_new_tokens": 3}))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_the_page() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tiny_model(), &state.path().join("s"), UNLIMITED);
    let health = reqwest::get(format!("{}/healthz", d.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = reqwest::get(format!("{}/readyz", d.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert!(
        ready["model_version"]
            .as_str()
            .unwrap()
            .starts_with("tiny-bloom-4h-")
    );
    generate(&d.url, &json!({"topic": "x", "max_new_tokens": 3})).await;
    let metrics = reqwest::get(format!("{}/metrics", d.url)).await.unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for series in [
        "mananera_requests_total{frontend=\"api\",outcome=\"ok\"} 1",
        "mananera_request_duration_seconds_count{frontend=\"api\"} 1",
        "mananera_time_to_first_token_seconds_count 1",
        "mananera_queue_depth 0",
        "mananera_batch_size 0",
        "mananera_ready 1",
        "# TYPE mananera_tokens_per_second gauge",
        "mananera_model_info{version=\"tiny-bloom-4h-",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    let page = reqwest::get(&d.url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form id=\"form\">"));

    // The store belongs to the running daemon: the cache command says so and touches nothing.
    let out = cache_command("stats", &d.state_dir, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another process") && err.contains("stop the running daemon"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_protects_the_api_and_remote_listening_must_be_asked_for() {
    let state = tempfile::tempdir().unwrap();
    let token_file = state.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let set = format!(
        "serve.api_token_file={:?}",
        token_file.display().to_string()
    );
    let d = Daemon::start(
        &tiny_model(),
        &state.path().join("s"),
        &[UNLIMITED[0], &set],
    );
    let body = json!({"topic": "x", "max_new_tokens": 3});
    let client = reqwest::Client::new();
    let url = format!("{}/api/generate", d.url);
    let none = send(client.post(&url).json(&body)).await;
    assert_eq!(none.status, 401);
    assert!(
        none.json["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    let wrong = send(client.post(&url).bearer_auth("nope").json(&body)).await;
    assert_eq!(wrong.status, 401);
    let right = send(client.post(&url).bearer_auth("s3cret").json(&body)).await;
    assert_eq!(right.status, 200);
    assert!(!d.log().contains("s3cret"), "the token was logged");

    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--model"])
        .arg(tiny_model())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serve.listen") && err.contains("serve.allow_remote = true"),
        "{err}"
    );
}

#[test]
fn a_flood_of_slow_headers_is_cut_off_and_a_normal_request_is_answered_at_once() {
    use std::io::{Read, Write};
    let state = tempfile::tempdir().unwrap();
    let sets = [
        "serve.max_connections=100",
        "serve.header_timeout_s=1",
        "serve.idle_timeout_s=2",
    ];
    let d = Daemon::start(&tiny_model(), &state.path().join("s"), &sets);
    let host = d.url.strip_prefix("http://").unwrap().to_string();
    // 300 clients that each send half a request header and then nothing.
    let flood: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| {
            let mut stream = std::net::TcpStream::connect(&host).ok()?;
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            Some(stream)
        })
        .collect();
    assert!(flood.len() >= 200, "{} connections", flood.len());
    // Past the cap they are closed at once; the rest when their header time is up.
    let started = Instant::now();
    for mut stream in flood {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 64];
        let closed = matches!(stream.read(&mut byte), Ok(0) | Err(_))
            || String::from_utf8_lossy(&byte).starts_with("HTTP/1.1 408");
        assert!(closed, "a slow client was kept");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let asked = Instant::now();
    assert_eq!(daemon::status_of(&d.url, "/healthz"), Some(200));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_speech_that_takes_longer_than_the_idle_timeout_is_still_answered() {
    // The idle timeout is for clients that send nothing; one waiting for its speech (no
    // byte either way until it is written) is not idle.
    // Thirty decoding steps of 100 ms each: three seconds on any CPU.
    let state = tempfile::tempdir().unwrap();
    let env = [("MANANERA_FAILPOINTS", "generation.step=30*sleep(100)")];
    let d = Daemon::start_with_env(
        &tiny_model(),
        &state.path().join("s"),
        &["serve.idle_timeout_s=1"],
        &env,
    );
    let asked = Instant::now();
    let reply = generate(
        &d.url,
        &json!({"topic": "el agua", "max_new_tokens": 40, "min_new_tokens": 40, "max_words": 0}),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(
        asked.elapsed() > Duration::from_secs(2),
        "the speech took {:?}, not long enough to outlast the idle timeout",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_blocked_on_both_workers_is_seen_by_the_stall_watchdog() {
    let state = tempfile::tempdir().unwrap();
    let env = [("MANANERA_FAILPOINTS", "web.page=2*sleep(5000)")];
    let d = Daemon::start_with_env(&tiny_model(), &state.path().join("s"), &[], &env);
    assert_eq!(metric(&d.url, "mananera_runtime_stalls_total").await, 0.0);
    // Two page requests hold both of the daemon's worker threads for 5 s.
    let pages: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reqwest::get(format!("{}/", d.url))))
        .collect();
    for page in pages {
        assert_eq!(page.await.unwrap().unwrap().status(), 200);
    }
    let health = reqwest::get(format!("{}/healthz", d.url)).await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "stalled", "{health}");
    assert_eq!(metric(&d.url, "mananera_runtime_stalls_total").await, 1.0);
    assert!(metric(&d.url, "mananera_runtime_heartbeat_max_gap_seconds").await >= 3.0);
    assert_eq!(
        metric(&d.url, "mananera_slow_polls_total{task=\"http\"}").await,
        2.0
    );
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("the async runtime did not answer"), "{log}");
    assert!(log.contains("stuck_workers"), "{log}");
    assert!(log.contains("the async runtime answers again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_worker_that_dies_is_replaced_and_its_request_told() {
    let state = tempfile::tempdir().unwrap();
    let env = [("MANANERA_FAILPOINTS", "generation.step=1*panic")];
    let sets = [UNLIMITED[0], "generation.max_words=0", WHOLE_LENGTH];
    let d = Daemon::start_with_env(&tiny_model(), &state.path().join("s"), &sets, &env);
    let body = json!({"topic": "el agua", "max_new_tokens": 20});
    let first = tokio::time::timeout(Duration::from_secs(30), generate(&d.url, &body))
        .await
        .expect("the request in flight is answered, not left waiting");
    assert_ne!(first.status, 200, "{:?}", first.json);
    let error = first.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("ask again"), "{:?}", first.json);
    let second = generate(
        &d.url,
        &json!({"topic": "el petróleo", "max_new_tokens": 20}),
    )
    .await;
    assert_eq!(second.status, 200, "{:?}", second.json);
    assert!(!second.json["text"].as_str().unwrap().is_empty());
    assert_eq!(
        metric(&d.url, "mananera_generation_restarts_total").await,
        1.0
    );
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("a new one takes the queue"), "{log}");
}
