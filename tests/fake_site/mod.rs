//! Loopback fakes of the two transcript sites, shaped like the real ones: gob.mx article
//! pages with a "Publicaciones Recientes" box, and a WordPress archive with a paginated
//! listing. Pages can be added while a test runs, and every request is logged.

#![allow(dead_code)] // each test binary uses part of the fake

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};

/// What the server answers on a path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// An article page; on the gob fake the recent box is inserted before `</body>`.
    Article(String),
    /// A fixed status with an empty body.
    Status(u16),
    /// `429 Retry-After: N` the first time, then the article.
    BusyOnce { retry_after: u64, then: String },
    /// Waits this long before answering (past the client's timeout).
    Slow(Duration),
    /// `302` to another location.
    Redirect(String),
    /// A body of this many bytes.
    Huge(usize),
    /// The anti-bot challenge page.
    Challenge,
}

/// One listed transcript: path, listing date text, recent-box timestamp, reply.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub listed_date: String,
    pub timestamp: String,
    pub reply: Reply,
}

/// The shape of the site.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Gob,
    WordPress,
}

#[derive(Default)]
struct SiteState {
    /// Newest first.
    entries: Vec<Entry>,
    robots: String,
    /// Status robots.txt answers with (200 unless a test says otherwise).
    robots_status: u16,
    /// Extra delay on every article response, to make runs long enough to kill.
    article_delay: Duration,
    busy_served: HashMap<String, bool>,
    log: Vec<(String, u16)>,
    /// The listing answers with the challenge page.
    challenge_listing: bool,
    /// Files served as they are (a dataset archive), with an ETag.
    files: HashMap<String, Vec<u8>>,
}

/// A running fake site.
pub struct Site {
    pub addr: SocketAddr,
    pub host: &'static str,
    state: Arc<Mutex<SiteState>>,
    _runtime: tokio::runtime::Runtime,
}

/// The `[[scrape.sources]]` table of the WordPress fake `site` (the test settings' copy of
/// config.toml's `lopezobrador` source, on loopback).
pub fn wordpress_source(site: &Site) -> String {
    format!(
        r#"[[scrape.sources]]
name = "lopezobrador"
hosts = ["localhost"]
article_pattern = '^http://localhost:\d+/\d{{4}}/\d{{2}}/\d{{2}}/version-estenografica-de-la-conferencia-de-prensa-matutina[^/?#]*/?$'

[scrape.sources.listing]
start = "{listing}"
item = "article"
link = "h2.entry-title a"
date = "span.entry-date"
next = "a[class*=next]"

[scrape.sources.page]
title = "h1.entry-title"
body = "div.entry-content"
paragraphs = "p"
date_selectors = ["span.entry-date"]
date_patterns = []
"#,
        listing = site.url("/secciones/version-estenografica/"),
    )
}

/// A saved page of `tests/fixtures/pages`.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pages")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Site {
    /// Starts a fake on 127.0.0.1; `host` is the name the scraper uses for it
    /// (`127.0.0.1` or `localhost`), so two fakes count as two hosts.
    pub fn start(kind: Kind, host: &'static str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(SiteState {
            robots: "User-agent: *\nDisallow: /private/\n".into(),
            robots_status: 200,
            ..Default::default()
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            Router::new()
                .fallback(serve)
                .with_state((kind, host, addr.port(), state.clone()));
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            host,
            state,
            _runtime: runtime,
        }
    }

    /// `http://host:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.addr.port())
    }

    /// Publishes `entry` as the newest transcript.
    pub fn publish(&self, entry: Entry) {
        self.state.lock().unwrap().entries.insert(0, entry);
    }

    /// Serves `bytes` at `path` (with an ETag, answering `If-None-Match` with 304).
    pub fn put_file(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), bytes);
    }

    pub fn set_robots(&self, robots: &str) {
        self.state.lock().unwrap().robots = robots.into();
    }

    pub fn set_robots_status(&self, status: u16) {
        self.state.lock().unwrap().robots_status = status;
    }

    pub fn set_article_delay(&self, delay: Duration) {
        self.state.lock().unwrap().article_delay = delay;
    }

    pub fn set_challenge_listing(&self, on: bool) {
        self.state.lock().unwrap().challenge_listing = on;
    }

    /// Every request so far, as (path, status).
    pub fn log(&self) -> Vec<(String, u16)> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

type AppState = (Kind, &'static str, u16, Arc<Mutex<SiteState>>);

async fn serve(
    State((kind, host, port, state)): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let path = uri.path().to_string();
    let (reply, delay) = route(kind, host, port, &state, &path);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = match reply {
        Routed::Html(html) => {
            let etag = format!("\"{:x}\"", fxhash(&html));
            if headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == etag.as_bytes())
            {
                status(304)
            } else {
                let mut r = Response::new(Body::from(html));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r.headers_mut()
                    .insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
                r
            }
        }
        Routed::Text(text) => Response::new(Body::from(text)),
        Routed::File(bytes) => {
            let etag = format!("\"{:x}\"", fxhash_bytes(&bytes));
            if headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == etag.as_bytes())
            {
                status(304)
            } else {
                let mut r = Response::new(Body::from(bytes));
                r.headers_mut()
                    .insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
                r
            }
        }
        Routed::Status(code) => status(code),
        Routed::Busy(seconds) => {
            let mut r = status(429);
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).unwrap(),
            );
            r
        }
        Routed::Redirect(to) => {
            let mut r = status(302);
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_str(&to).unwrap());
            r
        }
    };
    state
        .lock()
        .unwrap()
        .log
        .push((path, response.status().as_u16()));
    response
}

fn status(code: u16) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

/// A stable content hash for ETags.
fn fxhash(s: &str) -> u64 {
    fxhash_bytes(s.as_bytes())
}

fn fxhash_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

enum Routed {
    Html(String),
    Text(String),
    Status(u16),
    Busy(u64),
    Redirect(String),
    File(Vec<u8>),
}

fn route(
    kind: Kind,
    host: &str,
    port: u16,
    state: &Mutex<SiteState>,
    path: &str,
) -> (Routed, Duration) {
    let mut s = state.lock().unwrap();
    if path == "/robots.txt" {
        return match s.robots_status {
            200 => (Routed::Text(s.robots.clone()), Duration::ZERO),
            code => (Routed::Status(code), Duration::ZERO),
        };
    }
    if let Some(bytes) = s.files.get(path) {
        return (Routed::File(bytes.clone()), Duration::ZERO);
    }
    if kind == Kind::WordPress && path.starts_with("/secciones/version-estenografica/") {
        if s.challenge_listing {
            return (Routed::Html(fixture("challenge.html")), Duration::ZERO);
        }
        let page: usize = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(1);
        return (
            Routed::Html(listing(&s.entries, page, host, port)),
            Duration::ZERO,
        );
    }
    let Some(entry) = s.entries.iter().find(|e| e.path == path).cloned() else {
        return (Routed::Status(404), Duration::ZERO);
    };
    let delay = s.article_delay;
    let routed = match entry.reply {
        Reply::Article(html) => Routed::Html(match kind {
            Kind::Gob => html.replacen("</body>", &format!("{}</body>", recent_box(&s.entries)), 1),
            Kind::WordPress => html,
        }),
        Reply::Status(code) => Routed::Status(code),
        Reply::BusyOnce { retry_after, then } => {
            if s.busy_served.insert(path.to_string(), true).is_some() {
                Routed::Html(then)
            } else {
                Routed::Busy(retry_after)
            }
        }
        Reply::Slow(d) => return (Routed::Html(fixture("gob-2025-07-02.html")), d),
        Reply::Redirect(to) => Routed::Redirect(to),
        Reply::Huge(n) => Routed::Html(format!("<html><body>{}</body></html>", "x".repeat(n))),
        Reply::Challenge => Routed::Html(fixture("challenge.html")),
    };
    (routed, delay)
}

/// gob.mx's "Publicaciones Recientes": the five newest entries.
fn recent_box(entries: &[Entry]) -> String {
    let mut html = String::from("<div class=\"recent\"><h3>Publicaciones Recientes</h3>");
    for e in entries.iter().take(5) {
        html += &format!(
            "<div class=\"marque-news\"><div class=\"date-marque\"><small>{}</small></div><a href=\"{}\">Versión estenográfica</a></div>",
            e.timestamp, e.path
        );
    }
    html + "</div><div class=\"marque-news\"><a href=\"/presidencia/es/prensa/comunicado-123\">Comunicado</a></div>"
}

/// A WordPress listing page: two entries per page, plus a speech that is not a conference.
fn listing(entries: &[Entry], page: usize, host: &str, port: u16) -> String {
    let per_page = 2;
    let mut html = String::from(
        "<html><head><title>Versión estenográfica | Archivo</title></head><body><main>",
    );
    let start = (page - 1) * per_page;
    for e in entries.iter().skip(start).take(per_page) {
        html += &format!(
            "<article><h2 class=\"entry-title\"><a href=\"http://{host}:{port}{}\">Versión estenográfica</a></h2><span class=\"entry-date\"><a href=\"#\">{}</a></span></article>",
            e.path, e.listed_date
        );
    }
    html += "<article><h2 class=\"entry-title\"><a href=\"/2024/01/01/discurso-del-presidente/\">Discurso</a></h2><span class=\"entry-date\">enero 1, 2024</span></article>";
    if start + per_page < entries.len() {
        html += &format!(
            "<a class=\"next page-numbers\" href=\"/secciones/version-estenografica/page/{}/\">Siguiente</a>",
            page + 1
        );
    }
    html + "</main></body></html>"
}

/// A day's transcript on the fake WordPress site: the fixture page with `lines` lines of
/// the Spanish corpus (or other words) as the president's speech.
pub fn transcript(day: u32, words: &str) -> Entry {
    let page = fixture("lopezobrador-2019-08-02.html")
        .replace("agosto 2, 2019", &format!("marzo {day}, 2023"))
        .replace("Así es, la unidad, la unidad.", words);
    Entry {
        path: format!(
            "/2023/03/{day:02}/version-estenografica-de-la-conferencia-de-prensa-matutina-del-presidente-andres-manuel-lopez-obrador-{day}/"
        ),
        listed_date: format!("marzo {day}, 2023"),
        timestamp: String::new(),
        reply: Reply::Article(page),
    }
}

/// A file of the plain-text dataset: a conference of August `day`, 2019, where the
/// president says `words`, at its place in the dataset.
pub fn dataset_file(day: u32, words: &str) -> (String, String) {
    (
        format!(
            "mananeras-main/articulos/2019/agosto/{day:02}--conferencia-de-prensa-matutina.txt"
        ),
        format!(
            "Versión estenográfica de la conferencia de prensa matutina del presidente Andrés Manuel López Obrador\nPresidencia de la República\n{day:02} de agosto de 2019\n---\nMODERADOR\nBuenos días.\n---\nPRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR\n{words}\n"
        ),
    )
}

/// A `.tar.gz` of `(path, content)` files, as GitHub serves a repository.
pub fn tar_gz(files: &[(String, String)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// 40 lines of real speech, different for each day.
pub fn speech(day: u32) -> String {
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus_es.txt"),
    )
    .unwrap();
    let lines: Vec<&str> = corpus.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = (day as usize * 40) % (lines.len() - 40);
    lines[start..start + 40].join(" ")
}
