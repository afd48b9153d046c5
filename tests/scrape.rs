//! `mananera scrape` end to end against loopback fakes of both transcript sites: exact
//! stored text, incremental reruns, new pages, every kind of hostile answer, robots.txt,
//! and a kill mid-run followed by a rerun.

mod fake_site;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fake_site::{Entry, Kind, Reply, Site, fixture, wordpress_source};

const GOB: &str = "/presidencia/es/articulos/version-estenografica-";

fn gob_entry(day: &str, reply: Reply) -> Entry {
    Entry {
        path: format!("{GOB}{day}"),
        listed_date: String::new(),
        timestamp: format!("{day} 10:00:00 -0600"),
        reply,
    }
}

fn wp_entry(date: (u32, u32, u32), number: u32, reply: Reply) -> Entry {
    let (y, m, d) = date;
    let month = [
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ][m as usize - 1];
    Entry {
        path: format!(
            "/{y}/{m:02}/{d:02}/version-estenografica-de-la-conferencia-de-prensa-matutina-del-presidente-andres-manuel-lopez-obrador-{number}/"
        ),
        listed_date: format!("{month} {d}, {y}"),
        timestamp: String::new(),
        reply,
    }
}

/// A WordPress page of another day: the 2019-08-02 fixture with its date and words changed.
fn wp_page(date_text: &str, words: &str) -> String {
    fixture("lopezobrador-2019-08-02.html")
        .replace("agosto 2, 2019", date_text)
        .replace("Así es, la unidad, la unidad.", words)
}

/// Both fakes, a config pointing at them and a corpus directory.
struct World {
    gob: Site,
    wp: Site,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let gob = Site::start(Kind::Gob, "127.0.0.1");
        let wp = Site::start(Kind::WordPress, "localhost");
        gob.publish(gob_entry(
            "2019-09-11",
            Reply::Article(fixture("gob-2019-09-11.html")),
        ));
        gob.publish(gob_entry(
            "2021-06-28",
            Reply::Article(fixture("gob-2021-06-28.html")),
        ));
        gob.publish(gob_entry(
            "2025-07-02",
            Reply::Article(fixture("gob-2025-07-02.html")),
        ));
        wp.publish(wp_entry(
            (2019, 8, 2),
            139,
            Reply::Article(fixture("lopezobrador-2019-08-02.html")),
        ));
        wp.publish(wp_entry(
            (2019, 8, 5),
            140,
            Reply::Article(wp_page("agosto 5, 2019", "Nueva conferencia del lunes.")),
        ));
        wp.publish(wp_entry(
            (2024, 2, 20),
            1154,
            Reply::Article(fixture("lopezobrador-2024-02-20.html")),
        ));
        let world = Self {
            gob,
            wp,
            dir: tempfile::tempdir().unwrap(),
        };
        world.write_config("");
        world
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn corpus(&self) -> PathBuf {
        self.dir.path().join("corpus")
    }

    /// Writes the test config; `gob_extra` is appended to the gob source's table.
    fn write_config(&self, gob_extra: &str) {
        let page = |title: &str, body: &str, dates: &str, patterns: &str| {
            format!(
                "title = \"{title}\"\nbody = \"{body}\"\nparagraphs = \"p\"\ndate_selectors = {dates}\ndate_patterns = {patterns}\n"
            )
        };
        let config = format!(
            r#"[corpus]
dir = "{corpus}"

[scrape]
give_up_after = 2
archives = []

[http]
user_agent = "mananera-test/1.0"
delay_ms = 0
timeout_s = 1
retries = 1
backoff_ms = 10
max_retry_after_s = 5
max_body_bytes = 1000000

[[scrape.sources]]
name = "gob"
hosts = ["127.0.0.1"]
article_pattern = '^http://127\.0\.0\.1:\d+/presidencia/es/articulos/version-estenografica-[^/?#]+$'
seeds = ["{seed}"]
{gob_extra}
[scrape.sources.recent]
item = "div.marque-news"
link = "a[href*='/articulos/version-estenografica-']"
date = "div.date-marque small"

[scrape.sources.page]
{gob_page}
{wp}"#,
            corpus = self.corpus().display(),
            seed = self.gob.url(&format!("{GOB}2021-06-28")),
            wp = wordpress_source(&self.wp),
            gob_page = page(
                "h1.bottom-buffer",
                "div.article-body",
                r#"["dl dd", "section p"]"#,
                r#"['published_on\s*=\s*"([^"]+)"']"#
            ),
        );
        std::fs::write(self.config(), config).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mananera"));
        c.arg("--config")
            .arg(self.config())
            .args(args)
            .env("MANANERA_LOG", "warn")
            .env_remove("MANANERA_CONFIG");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `scrape --format json`, returning the summary.
    fn scrape(&self, extra: &[&str]) -> (serde_json::Value, Output) {
        let mut args = vec!["--format", "json", "scrape"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
        (json, out)
    }

    /// Transcript files (id → content) and the manifest.
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        collect(
            &self.corpus().join("transcripts"),
            &self.corpus().join("transcripts"),
            &mut files,
        );
        files.insert(
            "manifest.json".into(),
            std::fs::read_to_string(self.corpus().join("manifest.json")).unwrap(),
        );
        files
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for item in std::fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            out.insert(
                path.strip_prefix(root).unwrap().display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            );
        }
    }
}

fn source<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == name)
        .unwrap()
}

fn counts(summary: &serde_json::Value, name: &str) -> (u64, u64, usize) {
    let s = source(summary, name);
    (
        s["new"].as_u64().unwrap(),
        s["duplicates"].as_u64().unwrap(),
        s["failed"].as_array().unwrap().len(),
    )
}

fn body(file: &str) -> &str {
    file.split_once("\n\n").unwrap().1.trim_end()
}

#[test]
fn a_first_run_stores_every_transcript_exactly_and_a_rerun_fetches_nothing() {
    let w = World::new();
    let (summary, out) = w.scrape(&[]);
    assert!(out.status.success(), "{summary}");
    assert_eq!(counts(&summary, "gob"), (3, 0, 0), "{summary}");
    assert_eq!(counts(&summary, "lopezobrador"), (3, 0, 0), "{summary}");
    assert_eq!(summary["transcripts"], 6);

    let files = w.snapshot();
    let expected = [
        (
            "gob/2019/2019-09-11--version-estenografica-2019-09-11.txt",
            "gob-2019-09-11",
        ),
        (
            "gob/2021/2021-06-28--version-estenografica-2021-06-28.txt",
            "gob-2021-06-28",
        ),
        (
            "gob/2025/2025-07-02--version-estenografica-2025-07-02.txt",
            "gob-2025-07-02",
        ),
        // Slugs are cut at 80 characters.
        (
            "lopezobrador/2019/2019-08-02--version-estenografica-de-la-conferencia-de-prensa-matutina-del-presidente-andres.txt",
            "lopezobrador-2019-08-02",
        ),
        (
            "lopezobrador/2024/2024-02-20--version-estenografica-de-la-conferencia-de-prensa-matutina-del-presidente-andres.txt",
            "lopezobrador-2024-02-20",
        ),
    ];
    for (id, page) in expected {
        let file = files
            .get(id)
            .unwrap_or_else(|| panic!("{id} missing; have {:?}", files.keys()));
        assert_eq!(
            body(file),
            fixture(&format!("{page}.expected.txt")).trim_end(),
            "{id}"
        );
    }
    let sheinbaum = &files["gob/2025/2025-07-02--version-estenografica-2025-07-02.txt"];
    assert!(
        sheinbaum.contains("speaker: Claudia Sheinbaum Pardo\n"),
        "{sheinbaum}"
    );
    assert!(
        sheinbaum.contains(&format!(
            "url: {}\n",
            w.gob.url(&format!("{GOB}2025-07-02"))
        )),
        "{sheinbaum}"
    );

    // The rerun finds nothing new and downloads no article again: unchanged pages answer 304.
    w.gob.clear_log();
    w.wp.clear_log();
    let (again, out) = w.scrape(&[]);
    assert!(out.status.success(), "{again}");
    assert_eq!(counts(&again, "gob"), (0, 0, 0));
    assert_eq!(counts(&again, "lopezobrador"), (0, 0, 0));
    for (path, status) in w.gob.log().into_iter().chain(w.wp.log()) {
        assert!(
            status == 304 || path == "/robots.txt",
            "{path} fetched again with {status}"
        );
    }
    assert_eq!(w.snapshot(), files, "a rerun changes nothing");
}

#[test]
fn new_pages_on_either_site_are_picked_up_by_the_next_run() {
    let w = World::new();
    w.scrape(&[]);
    let sheinbaum = fixture("gob-2025-07-02.html")
        .replace("02 de julio de 2025", "03 de julio de 2025")
        .replace(
            "Hoy vamos a hablar del Plan México",
            "Hoy vamos a hablar del agua",
        );
    w.gob
        .publish(gob_entry("2025-07-03", Reply::Article(sheinbaum)));
    w.wp.publish(wp_entry(
        (2024, 2, 21),
        1155,
        Reply::Article(wp_page("febrero 21, 2024", "Un miércoles nuevo.")),
    ));
    // The same transcript re-published under another address is stored once.
    w.gob.publish(gob_entry(
        "2021-06-28-bis",
        Reply::Article(fixture("gob-2021-06-28.html")),
    ));
    w.wp.clear_log();
    let (summary, out) = w.scrape(&[]);
    assert!(out.status.success(), "{summary}");
    assert_eq!(counts(&summary, "gob"), (1, 1, 0), "{summary}");
    assert_eq!(counts(&summary, "lopezobrador"), (1, 0, 0), "{summary}");
    let files = w.snapshot();
    assert!(
        files["gob/2021/2021-06-28--version-estenografica-2021-06-28.txt"]
            .contains("\nalias: http://127.0.0.1:")
    );
    let new = files
        .iter()
        .find(|(id, _)| id.contains("2025-07-03"))
        .unwrap()
        .1;
    assert!(body(new).contains("Hoy vamos a hablar del agua"), "{new}");
    // The WordPress walk stopped at the newest entry it already had: page 2 was not fetched.
    assert!(
        !w.wp.log().iter().any(|(p, _)| p.contains("/page/2/")),
        "{:?}",
        w.wp.log()
    );
}

#[test]
fn full_rechecks_every_known_page_conditionally() {
    let w = World::new();
    w.scrape(&[]);
    let before = w.snapshot();
    w.gob.clear_log();
    w.wp.clear_log();
    let (summary, out) = w.scrape(&["--full"]);
    assert!(out.status.success(), "{summary}");
    for name in ["gob", "lopezobrador"] {
        let s = source(&summary, name);
        assert_eq!(
            (s["new"].as_u64(), s["unchanged"].as_u64()),
            (Some(0), Some(3)),
            "{summary}"
        );
    }
    // Every known article was asked for again, and answered 304 Not Modified.
    let articles: Vec<(String, u16)> =
        w.wp.log()
            .into_iter()
            .filter(|(p, _)| p.contains("version-estenografica-de-la"))
            .collect();
    assert_eq!(articles.len(), 3, "{articles:?}");
    assert!(
        articles.iter().all(|(_, status)| *status == 304),
        "{articles:?}"
    );
    assert!(
        w.wp.log().iter().any(|(p, _)| p.contains("/page/2/")),
        "the whole listing is walked"
    );
    assert_eq!(w.snapshot(), before);
}

#[test]
fn hostile_answers_are_failures_with_reasons_and_the_rest_is_stored() {
    let w = World::new();
    let busy_page = fixture("gob-broken-2025-07-03.html");
    w.gob.publish(gob_entry(
        "2025-07-03-busy",
        Reply::BusyOnce {
            retry_after: 1,
            then: busy_page,
        },
    ));
    w.gob
        .publish(gob_entry("2025-07-04-challenge", Reply::Challenge));
    w.gob
        .publish(gob_entry("2025-07-05-gone", Reply::Status(404)));
    w.gob
        .publish(gob_entry("2025-07-06-error", Reply::Status(500)));
    w.gob.publish(gob_entry(
        "2025-07-07-slow",
        Reply::Slow(Duration::from_secs(3)),
    ));
    let started = Instant::now();
    let (summary, out) = w.scrape(&[]);
    assert_eq!(out.status.code(), Some(4), "{summary}");
    let gob = source(&summary, "gob");
    // The seed and the busy page; the box shows the five newest entries only, so the
    // older pages are out of its reach, as on the real site.
    assert_eq!(gob["new"], 2, "{summary}");
    assert!(
        w.snapshot()
            .keys()
            .any(|id| id.starts_with("gob/2025/2025-07-03--"))
    );
    let failed: BTreeMap<String, String> = gob["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["url"]
                    .as_str()
                    .unwrap()
                    .rsplit('-')
                    .next()
                    .unwrap()
                    .to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        failed["challenge"].contains("anti-bot challenge"),
        "{failed:?}"
    );
    assert!(failed["gone"].contains("gone (HTTP 404)"), "{failed:?}");
    assert!(
        failed["error"].contains("HTTP 500 after 2 attempt(s)"),
        "{failed:?}"
    );
    assert!(
        failed["slow"].contains("timed out after 2 attempt(s)"),
        "{failed:?}"
    );
    assert_eq!(failed.len(), 4, "{failed:?}");
    // Retry-After: 1 was waited out before the second request.
    let busy: Vec<_> = w
        .gob
        .log()
        .into_iter()
        .filter(|(p, _)| p.ends_with("busy"))
        .collect();
    assert_eq!(busy.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [429, 200]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("some pages or sources failed (gob)"),
        "{stderr}"
    );

    // Transient failures are retried next run; permanent ones (404) are not.
    w.gob.publish(gob_entry(
        "2025-07-08-moved",
        Reply::Redirect("http://evil.example/x".into()),
    ));
    w.gob
        .publish(gob_entry("2025-07-09-huge", Reply::Huge(2_000_000)));
    w.gob.clear_log();
    let (summary, _) = w.scrape(&[]);
    let reasons: Vec<String> = source(&summary, "gob")["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {}", f["url"], f["reason"]))
        .collect();
    let text = reasons.join("\n");
    assert!(
        text.contains("moved") && text.contains("not one of the source's hosts; not followed"),
        "{text}"
    );
    assert!(
        text.contains("huge") && text.contains("larger than the 1000000-byte limit"),
        "{text}"
    );
    assert!(
        text.contains("challenge") && text.contains("error") && text.contains("slow"),
        "{text}"
    );
    assert!(
        !w.gob.log().iter().any(|(p, _)| p.ends_with("gone")),
        "404 pages are not retried"
    );
    assert!(
        !w.gob.log().iter().any(|(p, _)| p.contains("evil")),
        "no request off the source's hosts"
    );
    // Pages failing two runs in a row are set aside, so the next run is clean.
    assert_eq!(text.matches("set aside").count(), 3, "{text}");
    w.gob.clear_log();
    let (summary, out) = w.scrape(&[]);
    assert!(out.status.success(), "{summary}");
    for page in ["challenge", "error", "slow", "moved", "huge"] {
        assert!(
            !w.gob.log().iter().any(|(p, _)| p.ends_with(page)),
            "{page} fetched again"
        );
    }
}

#[test]
fn a_challenge_listing_is_reported_never_read_as_nothing_new() {
    let w = World::new();
    w.wp.set_challenge_listing(true);
    let (summary, out) = w.scrape(&["--source", "lopezobrador"]);
    assert_eq!(out.status.code(), Some(4));
    let errors = source(&summary, "lopezobrador")["errors"].to_string();
    assert!(errors.contains("anti-bot challenge"), "{errors}");
    assert_eq!(
        summary["sources"].as_array().unwrap().len(),
        1,
        "--source picks one source"
    );
}

#[test]
fn robots_txt_is_obeyed() {
    let w = World::new();
    w.gob.set_robots(&format!(
        "User-agent: mananera-test\nDisallow: {GOB}2019-09-11\n"
    ));
    let (summary, _) = w.scrape(&["--source", "gob"]);
    let failed = source(&summary, "gob")["failed"].to_string();
    assert!(
        failed.contains("disallowed by the site's robots.txt"),
        "{failed}"
    );
    assert!(
        !w.gob.log().iter().any(|(p, _)| p.ends_with("2019-09-11")),
        "{:?}",
        w.gob.log()
    );
    assert_eq!(source(&summary, "gob")["new"], 2);
}

#[test]
fn a_robots_txt_that_errors_means_stay_away_and_one_that_is_missing_means_no_rules() {
    let w = World::new();
    w.gob.set_robots_status(503);
    w.wp.set_robots_status(404);
    let (summary, out) = w.scrape(&[]);
    assert_eq!(out.status.code(), Some(4), "{summary}");
    let gob = source(&summary, "gob");
    assert_eq!(gob["new"], 0, "{summary}");
    let failed = gob["failed"].to_string();
    assert!(
        failed.contains("robots.txt could not be read") && failed.contains("HTTP 503"),
        "{summary}"
    );
    assert!(
        w.gob.log().iter().all(|(p, _)| p == "/robots.txt"),
        "nothing but robots.txt is asked of a host whose robots.txt fails: {:?}",
        w.gob.log()
    );
    assert_eq!(counts(&summary, "lopezobrador"), (3, 0, 0), "{summary}");
    // The page was not the problem: it stays pending, and is stored once the host recovers.
    w.gob.set_robots_status(200);
    let (summary, out) = w.scrape(&[]);
    assert!(out.status.success(), "{summary}");
    assert_eq!(counts(&summary, "gob"), (3, 0, 0), "{summary}");
}

#[test]
fn since_bounds_the_walk() {
    let w = World::new();
    let (summary, out) = w.scrape(&["--since", "2024-01-01"]);
    assert!(out.status.success(), "{summary}");
    assert_eq!(counts(&summary, "lopezobrador"), (1, 0, 0), "{summary}");
    assert_eq!(counts(&summary, "gob"), (1, 0, 0), "{summary}");
    // Without the bound, the next run completes the archive.
    let (summary, _) = w.scrape(&[]);
    assert_eq!(counts(&summary, "lopezobrador"), (2, 0, 0), "{summary}");
}

#[test]
fn a_run_killed_at_any_point_then_rerun_gives_the_same_corpus() {
    let reference = World::new();
    reference.scrape(&[]);
    let want = reference.snapshot();
    for kill_after in [1, 3, 5] {
        let w = World::new();
        w.gob.set_article_delay(Duration::from_millis(150));
        w.wp.set_article_delay(Duration::from_millis(150));
        let mut child = w
            .command(&["scrape"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while count_transcripts(&w.corpus()) < kill_after && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        w.gob.set_article_delay(Duration::ZERO);
        w.wp.set_article_delay(Duration::ZERO);
        let (summary, out) = w.scrape(&[]);
        assert!(out.status.success(), "{summary}");
        let got = w.snapshot();
        // Same files with the same text; only the fakes' ports differ in the URLs.
        let normalize =
            |files: &BTreeMap<String, String>, world: &World| -> BTreeMap<String, String> {
                files
                    .iter()
                    .map(|(k, v)| {
                        let v = v
                            .replace(&world.gob.addr.port().to_string(), "GOB")
                            .replace(&world.wp.addr.port().to_string(), "WP");
                        (k.clone(), v)
                    })
                    .collect()
            };
        assert_eq!(
            normalize(&got, &w),
            normalize(&want, &reference),
            "killed after {kill_after} transcript(s)"
        );
    }
}

fn count_transcripts(corpus: &Path) -> usize {
    let mut files = BTreeMap::new();
    let root = corpus.join("transcripts");
    if root.exists() {
        collect(&root, &root, &mut files);
    }
    files.keys().filter(|k| k.ends_with(".txt")).count()
}

#[test]
fn a_corpus_in_use_is_refused() {
    let w = World::new();
    std::fs::create_dir_all(w.corpus()).unwrap();
    let lock = std::fs::File::create(w.corpus().join(".lock")).unwrap();
    lock.lock().unwrap();
    let out = w.run(&["corpus", "stats"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another mananera process"));
}

#[test]
fn bad_arguments_and_settings_are_named() {
    let w = World::new();
    let out = w.run(&["scrape", "--source", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--source nope: no such source; configured: gob, lopezobrador"),
        "{err}"
    );

    let out = w.run(&["scrape", "--since", "2024-13-01"]);
    assert_eq!(out.status.code(), Some(2));

    let config = std::fs::read_to_string(w.config()).unwrap();
    std::fs::write(w.config(), config.replacen("div.article-body", "div[", 1)).unwrap();
    let out = w.run(&["scrape"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scrape.sources[gob].page.body") && err.contains("not a CSS selector"),
        "{err}"
    );
    assert!(
        !w.corpus().exists(),
        "nothing is touched when the settings are wrong"
    );
}
