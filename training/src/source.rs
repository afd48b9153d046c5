//! A transcript site as configuration (`[[scrape.sources]]`): where its transcripts are
//! listed, how its pages are laid out. A site change is a config change; a new mirror is a
//! new entry.

use regex::Regex;
use scraper::Selector;
use serde::{Deserialize, Serialize};
use url::Url;

/// One site, as written in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Short name used in the corpus layout, logs and `--source`.
    pub name: String,
    /// Hosts this source may fetch from and be redirected to; links elsewhere are ignored.
    pub hosts: Vec<String>,
    /// Regular expression over a URL that says "this is a conference transcript".
    pub article_pattern: String,
    /// Pages to start discovery from (fetched on every run).
    #[serde(default)]
    pub seeds: Vec<String>,
    /// A paginated archive listing, walked newest first.
    #[serde(default)]
    pub listing: Option<ListingConfig>,
    /// A box of recent links on every article page ("Publicaciones Recientes").
    #[serde(default)]
    pub recent: Option<LinksConfig>,
    /// How an article page is laid out.
    pub page: PageConfig,
}

/// A paginated archive listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingConfig {
    /// First (newest) page of the listing.
    pub start: String,
    /// The entries on a page.
    #[serde(flatten)]
    pub links: LinksConfig,
    /// The link to the next (older) page.
    pub next: String,
}

/// A list of dated links on a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// CSS selector of one entry.
    pub item: String,
    /// CSS selector, inside an entry, of its link.
    pub link: String,
    /// CSS selector, inside an entry, of the text holding its date (optional).
    #[serde(default)]
    pub date: String,
}

/// Where the parts of an article page are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// CSS selector of the title.
    pub title: String,
    /// CSS selector of the transcript body.
    pub body: String,
    /// CSS selector, inside the body, of a paragraph (descendants at any depth).
    #[serde(default = "default_paragraphs")]
    pub paragraphs: String,
    /// CSS selectors tried in order; the first element whose text holds a date gives it.
    #[serde(default)]
    pub date_selectors: Vec<String>,
    /// Regular expressions over the raw page, tried after the selectors; the first capture
    /// group holds the date.
    #[serde(default)]
    pub date_patterns: Vec<String>,
}

fn default_paragraphs() -> String {
    "p".into()
}

/// The sources shipped in `config.toml`.
pub fn default_sources() -> Vec<SourceConfig> {
    vec![
        SourceConfig {
            name: "gob".into(),
            hosts: vec!["www.gob.mx".into(), "gob.mx".into()],
            article_pattern: r"^https://(?:www\.)?gob\.mx/presidencia/es/articulos/version-estenografica-[^/?#]+(?:\?idiom=es)?$".into(),
            seeds: vec![
                "https://www.gob.mx/presidencia/es/articulos/version-estenografica-conferencia-de-prensa-del-presidente-andres-manuel-lopez-obrador-del-28-de-junio-de-2021".into(),
            ],
            listing: None,
            recent: Some(LinksConfig {
                item: "div.marque-news".into(),
                link: "a[href*='/articulos/version-estenografica-']".into(),
                date: "div.date-marque small".into(),
            }),
            page: PageConfig {
                title: "h1.bottom-buffer".into(),
                body: "div.article-body".into(),
                paragraphs: default_paragraphs(),
                date_selectors: vec!["dl dd".into(), "section p".into()],
                date_patterns: vec![r#"published_on\s*=\s*"([^"]+)""#.into()],
            },
        },
        SourceConfig {
            name: "lopezobrador".into(),
            hosts: vec!["lopezobrador.org.mx".into(), "www.lopezobrador.org.mx".into()],
            article_pattern: r"^https://(?:www\.)?lopezobrador\.org\.mx/\d{4}/\d{2}/\d{2}/version-estenografica-de-la-conferencia-de-prensa-matutina[^/?#]*/?$".into(),
            seeds: Vec::new(),
            listing: Some(ListingConfig {
                start: "https://lopezobrador.org.mx/secciones/version-estenografica/".into(),
                links: LinksConfig {
                    item: "article".into(),
                    link: "h2.entry-title a".into(),
                    date: "span.entry-date".into(),
                },
                next: "a[class*=next]".into(),
            }),
            recent: None,
            page: PageConfig {
                title: "h1.entry-title".into(),
                body: "div.entry-content".into(),
                paragraphs: default_paragraphs(),
                date_selectors: vec!["span.entry-date".into(), "time.entry-date".into()],
                date_patterns: vec![r#"article:published_time"\s+content="([^"]+)""#.into()],
            },
        },
    ]
}

/// A mistake in a source's configuration, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("scrape.sources[{source_name}].{key}: {problem}")]
pub struct SourceConfigError {
    source_name: String,
    key: String,
    problem: String,
}

/// A [`SourceConfig`] with its selectors and patterns compiled.
#[derive(Debug, Clone)]
pub struct Source {
    /// The configuration this was compiled from.
    pub config: SourceConfig,
    pub(crate) article_pattern: Regex,
    pub(crate) seeds: Vec<Url>,
    pub(crate) listing: Option<(Url, Links, Selector)>,
    pub(crate) recent: Option<Links>,
    pub(crate) title: Selector,
    pub(crate) body: Selector,
    pub(crate) paragraphs: Selector,
    pub(crate) date_selectors: Vec<Selector>,
    pub(crate) date_patterns: Vec<Regex>,
}

/// [`LinksConfig`] compiled.
#[derive(Debug, Clone)]
pub(crate) struct Links {
    pub item: Selector,
    pub link: Selector,
    pub date: Option<Selector>,
}

impl Source {
    /// Compiles `config`, naming any selector, pattern or URL that is not valid.
    pub fn new(config: &SourceConfig) -> Result<Self, SourceConfigError> {
        let fail = |key: &str, problem: String| SourceConfigError {
            source_name: config.name.clone(),
            key: key.into(),
            problem,
        };
        if config.name.is_empty()
            || !config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(fail(
                "name",
                format!(
                    "{:?} must be letters, digits, - or _ (it names a folder)",
                    config.name
                ),
            ));
        }
        if config.hosts.is_empty() {
            return Err(fail(
                "hosts",
                "list at least one host the source lives on".into(),
            ));
        }
        let selector = |key: &str, css: &str| {
            Selector::parse(css)
                .map_err(|e| fail(key, format!("{css:?} is not a CSS selector: {e}")))
        };
        let regex = |key: &str, pattern: &str| {
            Regex::new(pattern).map_err(|e| fail(key, format!("not a regular expression: {e}")))
        };
        let url = |key: &str, text: &str| -> Result<Url, SourceConfigError> {
            let url =
                Url::parse(text).map_err(|e| fail(key, format!("{text:?} is not a URL: {e}")))?;
            let host = url.host_str().unwrap_or_default();
            if !config.hosts.iter().any(|h| h == host) {
                return Err(fail(
                    key,
                    format!("{text} is not on the source's hosts {:?}", config.hosts),
                ));
            }
            Ok(url)
        };
        let links = |key: &str, c: &LinksConfig| -> Result<Links, SourceConfigError> {
            Ok(Links {
                item: selector(&format!("{key}.item"), &c.item)?,
                link: selector(&format!("{key}.link"), &c.link)?,
                date: (!c.date.is_empty())
                    .then(|| selector(&format!("{key}.date"), &c.date))
                    .transpose()?,
            })
        };
        let listing = match &config.listing {
            Some(l) => Some((
                url("listing.start", &l.start)?,
                links("listing", &l.links)?,
                selector("listing.next", &l.next)?,
            )),
            None => None,
        };
        if listing.is_none() && config.recent.is_none() && config.seeds.is_empty() {
            return Err(fail(
                "listing",
                "no way to discover transcripts: configure a listing, a recent box or seeds".into(),
            ));
        }
        Ok(Self {
            config: config.clone(),
            article_pattern: regex("article_pattern", &config.article_pattern)?,
            seeds: config
                .seeds
                .iter()
                .map(|s| url("seeds", s))
                .collect::<Result<_, _>>()?,
            listing,
            recent: config
                .recent
                .as_ref()
                .map(|r| links("recent", r))
                .transpose()?,
            title: selector("page.title", &config.page.title)?,
            body: selector("page.body", &config.page.body)?,
            paragraphs: selector("page.paragraphs", &config.page.paragraphs)?,
            date_selectors: config
                .page
                .date_selectors
                .iter()
                .map(|s| selector("page.date_selectors", s))
                .collect::<Result<_, _>>()?,
            date_patterns: config
                .page
                .date_patterns
                .iter()
                .map(|p| regex("page.date_patterns", p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether `url` is on one of this source's hosts.
    pub fn owns(&self, url: &Url) -> bool {
        url.host_str()
            .is_some_and(|h| self.config.hosts.iter().any(|o| o == h))
    }

    /// Whether `url` is a transcript of this source.
    pub fn is_article(&self, url: &Url) -> bool {
        self.owns(url) && self.article_pattern.is_match(url.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sources_compile() {
        for config in default_sources() {
            Source::new(&config).unwrap();
        }
    }

    #[test]
    fn a_bad_selector_is_named() {
        let mut config = default_sources().remove(0);
        config.page.body = "div[".into();
        let err = Source::new(&config).unwrap_err().to_string();
        assert!(err.contains("scrape.sources[gob].page.body"), "{err}");
    }

    #[test]
    fn articles_are_recognised_only_on_the_source_hosts() {
        let source = Source::new(&default_sources().remove(1)).unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(source.is_article(&url("https://lopezobrador.org.mx/2024/02/20/version-estenografica-de-la-conferencia-de-prensa-matutina-del-presidente-andres-manuel-lopez-obrador-1234/")));
        assert!(!source.is_article(&url(
            "https://lopezobrador.org.mx/2024/02/20/discurso-del-presidente/"
        )));
        assert!(!source.is_article(&url("https://evil.example/2024/02/20/version-estenografica-de-la-conferencia-de-prensa-matutina/")));
    }
}
