//! Polite HTTP: one request at a time per host with a delay between them, robots.txt obeyed,
//! retries with exponential backoff on timeouts and 5xx, `Retry-After` honoured, bodies
//! capped, redirects followed only within a source's hosts, conditional requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::store::Validators;

/// How politely to fetch (`[scrape]` in config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Politeness {
    /// Sent with every request; says who we are and where to complain.
    pub user_agent: String,
    /// Pause between two requests to one host (robots.txt `Crawl-delay` can lengthen it).
    pub delay_ms: u64,
    /// Limit on one request, body included.
    pub timeout_s: u64,
    /// Extra attempts after a timeout, a connection failure, a 5xx or a 429.
    pub retries: u32,
    /// First backoff between attempts; doubles each time.
    pub backoff_ms: u64,
    /// Longest `Retry-After` we wait for; a server asking for longer fails the request.
    pub max_retry_after_s: u64,
    /// Largest body accepted.
    pub max_body_bytes: u64,
    /// Redirect hops followed (within the source's hosts only).
    pub max_redirects: u32,
    /// Obey robots.txt (turn off only for sites you own).
    pub robots: bool,
}

impl Default for Politeness {
    fn default() -> Self {
        Self {
            user_agent: concat!(
                "mananera/",
                env!("CARGO_PKG_VERSION"),
                " (mañanera transcript archiver; one request at a time)"
            )
            .into(),
            delay_ms: 2000,
            timeout_s: 30,
            retries: 3,
            backoff_ms: 2000,
            max_retry_after_s: 600,
            max_body_bytes: 8 * 1024 * 1024,
            max_redirects: 5,
            robots: true,
        }
    }
}

/// A fetched page.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The page, from where it was finally found (after redirects).
    Page {
        url: Url,
        body: String,
        validators: Validators,
    },
    /// The server says the page has not changed since the validators we sent.
    NotModified,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: disallowed by the site's robots.txt")]
    Robots { url: Url },
    #[error(
        "{url}: robots.txt could not be read ({reason}); per RFC 9309 nothing is fetched from this host until it can"
    )]
    RobotsUnavailable { url: Url, reason: String },
    #[error("{url}: gone (HTTP {status})")]
    Gone { url: Url, status: u16 },
    #[error("{url}: HTTP {status}{after}")]
    Status {
        url: Url,
        status: u16,
        after: String,
    },
    #[error("{url}: timed out after {attempts} attempt(s) of {timeout_s} s")]
    Timeout {
        url: Url,
        attempts: u32,
        timeout_s: u64,
    },
    #[error("{url}: {reason} (after {attempts} attempt(s))")]
    Network {
        url: Url,
        reason: String,
        attempts: u32,
    },
    #[error("{url}: body larger than the {limit}-byte limit ({setting})")]
    TooLarge {
        url: Url,
        limit: u64,
        setting: &'static str,
    },
    #[error("{url}: not on the source's hosts; not fetched")]
    NotOnSource { url: Url },
    #[error("{from}: redirected to {to}, which is not one of the source's hosts; not followed")]
    OffHost { from: Url, to: String },
    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects { url: Url, limit: u32 },
    #[error(
        "{url}: the server asked to retry after {seconds} s, longer than scrape.max_retry_after_s ({limit} s)"
    )]
    RetryTooLate { url: Url, seconds: u64, limit: u64 },
}

impl FetchError {
    /// Whether the host itself could not be reached (DNS, connection, its robots.txt), which
    /// says nothing about the page.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Network { .. } | Self::RobotsUnavailable { .. })
    }

    /// Whether trying again later cannot help (the page is gone or forbidden to us).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Robots { .. }
                | Self::Gone { .. }
                | Self::NotOnSource { .. }
                | Self::OffHost { .. }
                | Self::TooLarge { .. }
        )
    }
}

/// robots.txt of one host, as far as we are concerned.
enum Robots {
    AllowAll,
    Rules(Box<texting_robots::Robot>),
    Unavailable(String),
}

/// Per-host state: holding the gate is the right to talk to the host.
#[derive(Default)]
struct Host {
    last_request: Option<Instant>,
    robots: Option<Robots>,
    crawl_delay: Duration,
}

/// The polite HTTP client, shared by every source.
pub struct Fetcher {
    client: reqwest::Client,
    config: Politeness,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Host>>>>,
}

/// One HTTP exchange, body read only for success.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// How much body a request may bring, and how long it may take.
#[derive(Clone, Copy)]
struct Want {
    limit: u64,
    setting: &'static str,
    timeout: Option<Duration>,
    robots: bool,
}

/// A fetched file (see [`Fetcher::get_file`]).
#[derive(Debug, Clone)]
pub enum FetchedFile {
    File {
        body: Vec<u8>,
        validators: Validators,
    },
    NotModified,
}

impl Fetcher {
    /// A client with `config`'s timeouts and user agent; redirects are handled here.
    pub fn new(config: &Politeness) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(&config.user_agent)
            .timeout(Duration::from_secs(config.timeout_s.max(1)))
            .connect_timeout(Duration::from_secs(config.timeout_s.clamp(1, 30)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            config: config.clone(),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    fn host(&self, url: &Url) -> Arc<tokio::sync::Mutex<Host>> {
        let key = format!("{}://{}", url.scheme(), url.authority());
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(key).or_default().clone()
    }

    /// GETs `url`, following redirects that stay on `hosts`; sends `validators` as
    /// `If-None-Match` / `If-Modified-Since`.
    pub async fn get(
        &self,
        url: &Url,
        hosts: &[String],
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        Ok(
            match self.fetch(url, hosts, validators, self.page()).await? {
                Raw::Body {
                    url,
                    body,
                    validators,
                } => Fetched::Page {
                    url,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    validators,
                },
                Raw::NotModified => Fetched::NotModified,
            },
        )
    }

    /// What a page may bring: `scrape.max_body_bytes` within the client's timeout, robots.txt
    /// obeyed.
    fn page(&self) -> Want {
        Want {
            limit: self.config.max_body_bytes,
            setting: "scrape.max_body_bytes",
            timeout: None,
            robots: true,
        }
    }

    /// GETs one large file named by configuration (a dataset archive), as [`Fetcher::get`]
    /// does a page, but with its own size cap (`setting` names it) and `timeout` for the
    /// whole download. robots.txt is not consulted: this is one configured download a
    /// night, conditional when validators are known, not crawling.
    pub async fn get_file(
        &self,
        url: &Url,
        hosts: &[String],
        validators: Option<&Validators>,
        limit: (u64, &'static str),
        timeout: Duration,
    ) -> Result<FetchedFile, FetchError> {
        let want = Want {
            limit: limit.0,
            setting: limit.1,
            timeout: Some(timeout),
            robots: false,
        };
        Ok(match self.fetch(url, hosts, validators, want).await? {
            Raw::Body {
                body, validators, ..
            } => FetchedFile::File { body, validators },
            Raw::NotModified => FetchedFile::NotModified,
        })
    }

    async fn fetch(
        &self,
        url: &Url,
        hosts: &[String],
        validators: Option<&Validators>,
        want: Want,
    ) -> Result<Raw, FetchError> {
        let mut url = url.clone();
        for _ in 0..=self.config.max_redirects {
            if !url.host_str().is_some_and(|h| hosts.iter().any(|o| o == h)) {
                return Err(FetchError::NotOnSource { url });
            }
            let host = self.host(&url);
            let mut host = host.lock().await;
            if want.robots {
                self.check_robots(&mut host, &url).await?;
            }
            let exchange = self.exchange(&mut host, &url, validators, want).await?;
            drop(host);
            let status = exchange.status;
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = exchange
                    .headers
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| FetchError::Status {
                        url: url.clone(),
                        status: status.as_u16(),
                        after: " without a Location".into(),
                    })?;
                let next = url.join(location).map_err(|_| FetchError::OffHost {
                    from: url.clone(),
                    to: location.to_string(),
                })?;
                if !next
                    .host_str()
                    .is_some_and(|h| hosts.iter().any(|o| o == h))
                {
                    return Err(FetchError::OffHost {
                        from: url.clone(),
                        to: next.to_string(),
                    });
                }
                tracing::debug!(from = %url, to = %next, "following redirect");
                url = next;
                continue;
            }
            return match status.as_u16() {
                304 => Ok(Raw::NotModified),
                200..=299 => {
                    let header = |name| {
                        exchange
                            .headers
                            .get(name)
                            .and_then(|v: &header::HeaderValue| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let validators = Validators {
                        etag: header(header::ETAG),
                        last_modified: header(header::LAST_MODIFIED),
                    };
                    Ok(Raw::Body {
                        url,
                        body: exchange.body,
                        validators,
                    })
                }
                404 | 410 => Err(FetchError::Gone {
                    url,
                    status: status.as_u16(),
                }),
                code => Err(FetchError::Status {
                    url,
                    status: code,
                    after: String::new(),
                }),
            };
        }
        Err(FetchError::TooManyRedirects {
            url,
            limit: self.config.max_redirects,
        })
    }

    /// Loads the host's robots.txt on first use and checks `url` against it.
    async fn check_robots(&self, host: &mut Host, url: &Url) -> Result<(), FetchError> {
        if !self.config.robots {
            return Ok(());
        }
        if host.robots.is_none() {
            let mut robots_url = url.clone();
            robots_url.set_path("/robots.txt");
            robots_url.set_query(None);
            robots_url.set_fragment(None);
            // robots.txt itself is not subject to robots.txt.
            let want = Want {
                robots: false,
                ..self.page()
            };
            let robots = match self.exchange(host, &robots_url, None, want).await {
                Ok(e) if e.status.is_success() => {
                    let agent = self
                        .config
                        .user_agent
                        .split('/')
                        .next()
                        .unwrap_or("mananera");
                    match texting_robots::Robot::new(agent, &e.body) {
                        Ok(robot) => Robots::Rules(Box::new(robot)),
                        // An unparsable file sets no rules.
                        Err(_) => Robots::AllowAll,
                    }
                }
                // 4xx (and redirects we do not chase): no rules.
                Ok(_) => Robots::AllowAll,
                // 5xx (after the retries) and unreachable hosts.
                Err(e) => Robots::Unavailable(e.to_string()),
            };
            if let Robots::Rules(robot) = &robots
                && let Some(delay) = robot.delay
            {
                host.crawl_delay = Duration::from_secs_f32(delay.clamp(0.0, 60.0));
            }
            host.robots = Some(robots);
        }
        match &host.robots {
            Some(Robots::Rules(robot)) if !robot.allowed(url.as_str()) => {
                Err(FetchError::Robots { url: url.clone() })
            }
            Some(Robots::Unavailable(reason)) => Err(FetchError::RobotsUnavailable {
                url: url.clone(),
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// One request with retries: waits the host's delay before every attempt, backs off
    /// exponentially on timeouts, connection failures and 5xx, and waits out `Retry-After`.
    async fn exchange(
        &self,
        host: &mut Host,
        url: &Url,
        validators: Option<&Validators>,
        want: Want,
    ) -> Result<Exchange, FetchError> {
        let attempts = self.config.retries + 1;
        let mut backoff = Duration::from_millis(self.config.backoff_ms);
        for attempt in 1..=attempts {
            let delay = Duration::from_millis(self.config.delay_ms).max(host.crawl_delay);
            if let Some(last) = host.last_request {
                tokio::time::sleep_until((last + delay).into()).await;
            }
            let result = self.attempt(url, validators, want).await;
            host.last_request = Some(Instant::now());
            let last = attempt == attempts;
            let wait = match result {
                Ok(e)
                    if e.status == StatusCode::TOO_MANY_REQUESTS
                        || e.status == StatusCode::SERVICE_UNAVAILABLE =>
                {
                    let asked = retry_after(&e.headers);
                    if let Some(seconds) = asked
                        .map(|d| d.as_secs())
                        .filter(|&s| s > self.config.max_retry_after_s)
                    {
                        return Err(FetchError::RetryTooLate {
                            url: url.clone(),
                            seconds,
                            limit: self.config.max_retry_after_s,
                        });
                    }
                    if last {
                        return Err(FetchError::Status {
                            url: url.clone(),
                            status: e.status.as_u16(),
                            after: format!(" after {attempts} attempt(s)"),
                        });
                    }
                    asked.unwrap_or(backoff)
                }
                Ok(e) if e.status.is_server_error() => {
                    if last {
                        return Err(FetchError::Status {
                            url: url.clone(),
                            status: e.status.as_u16(),
                            after: format!(" after {attempts} attempt(s)"),
                        });
                    }
                    backoff
                }
                Ok(e) => return Ok(e),
                Err(AttemptError::TooLarge) => {
                    return Err(FetchError::TooLarge {
                        url: url.clone(),
                        limit: want.limit,
                        setting: want.setting,
                    });
                }
                Err(AttemptError::Timeout) if last => {
                    return Err(FetchError::Timeout {
                        url: url.clone(),
                        attempts,
                        timeout_s: want.timeout.map_or(self.config.timeout_s, |t| t.as_secs()),
                    });
                }
                Err(AttemptError::Other(reason)) if last => {
                    return Err(FetchError::Network {
                        url: url.clone(),
                        reason,
                        attempts,
                    });
                }
                Err(_) => backoff,
            };
            tracing::info!(%url, attempt, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            backoff *= 2;
        }
        unreachable!("the last attempt returns")
    }

    async fn attempt(
        &self,
        url: &Url,
        validators: Option<&Validators>,
        want: Want,
    ) -> Result<Exchange, AttemptError> {
        let mut request = self.client.get(url.clone());
        if let Some(timeout) = want.timeout {
            request = request.timeout(timeout);
        }
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &v.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, lm);
            }
        }
        let mut response = request.send().await.map_err(AttemptError::from)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        if status.is_success() {
            let limit = want.limit;
            if response.content_length().is_some_and(|n| n > limit) {
                return Err(AttemptError::TooLarge);
            }
            while let Some(chunk) = response.chunk().await.map_err(AttemptError::from)? {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(AttemptError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
        }
        Ok(Exchange {
            status,
            headers,
            body,
        })
    }
}

/// What [`Fetcher::fetch`] got.
enum Raw {
    Body {
        url: Url,
        body: Vec<u8>,
        validators: Validators,
    },
    NotModified,
}

enum AttemptError {
    Timeout,
    TooLarge,
    Other(String),
}

impl From<reqwest::Error> for AttemptError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            return Self::Timeout;
        }
        // reqwest's Display hides the cause ("error sending request"); show the chain.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        Self::Other(reason)
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(retry_after(&headers("120")), Some(Duration::from_secs(120)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&headers(&soon)).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon")), None);
    }
}
