//! Reading one fetched page: is it an anti-bot challenge, which dated links does it carry,
//! and, for an article, its title, date, canonical address and paragraphs.

use jiff::civil::Date;
use scraper::{ElementRef, Html, Node, Selector};
use url::Url;

use crate::date::find_date;
use crate::source::{Links, Source};
use crate::turns::Paragraph;

/// Why a page could not be read as a transcript.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PageError {
    /// The site answered with an anti-bot page instead of content.
    #[error(
        "the site answered with an anti-bot challenge page ({0:?}) instead of content; it cannot be scraped with plain HTTP right now"
    )]
    Challenge(String),
    /// The configured body selector matched nothing.
    #[error(
        "no transcript body: selector {0:?} matched nothing (the page layout may have changed; fix page.body in the source's config)"
    )]
    NoBody(String),
    /// No date anywhere the config says to look.
    #[error(
        "no date found (looked at {0}); fix page.date_selectors / page.date_patterns in the source's config"
    )]
    NoDate(String),
}

/// A dated link found on a page.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Absolute address.
    pub url: Url,
    /// The date shown next to it, when the config says where and it parses.
    pub date: Option<Date>,
}

/// An article page, parsed.
#[derive(Debug, Clone)]
pub struct Article {
    /// The page's headline.
    pub title: String,
    /// Day of the conference.
    pub date: Date,
    /// The page's own idea of its address (`og:url` / canonical link), if on the source.
    pub canonical: Option<Url>,
    /// The body's paragraphs, split at `<br>`.
    pub paragraphs: Vec<Paragraph>,
}

/// A parsed HTML page.
pub struct Page {
    html: Html,
}

impl Page {
    /// Parses `html` (any HTML, broken or not).
    pub fn parse(html: &str) -> Self {
        Self {
            html: Html::parse_document(html),
        }
    }

    /// `Err(Challenge)` when the page's title is one of `markers`.
    pub fn check_challenge(&self, markers: &[String]) -> Result<(), PageError> {
        let title = select_text(&self.html.root_element(), &selector("title"));
        match markers
            .iter()
            .find(|m| title.as_deref().is_some_and(|t| t.contains(m.as_str())))
        {
            Some(marker) => Err(PageError::Challenge(marker.clone())),
            None => Ok(()),
        }
    }

    /// The dated links of a listing or recent box, resolved against `base`, in page order.
    pub(crate) fn links(&self, links: &Links, base: &Url) -> Vec<Link> {
        let mut out = Vec::new();
        for item in self.html.select(&links.item) {
            let Some(href) = item
                .select(&links.link)
                .find_map(|a| a.value().attr("href"))
            else {
                continue;
            };
            let Ok(url) = base.join(href.trim()) else {
                continue;
            };
            let date = links
                .date
                .as_ref()
                .and_then(|d| select_text(&item, d))
                .and_then(|t| find_date(&t));
            out.push(Link { url, date });
        }
        out
    }

    /// The `href` of the first element matching `next`, resolved against `base`.
    pub(crate) fn next_link(&self, next: &Selector, base: &Url) -> Option<Url> {
        self.html
            .select(next)
            .find_map(|a| a.value().attr("href"))
            .and_then(|href| base.join(href.trim()).ok())
    }

    /// Reads the page as an article of `source`.
    pub fn article(&self, source: &Source, raw: &str) -> Result<Article, PageError> {
        let root = self.html.root_element();
        let body = self
            .html
            .select(&source.body)
            .next()
            .ok_or_else(|| PageError::NoBody(source.config.page.body.clone()))?;
        let date = source
            .date_selectors
            .iter()
            .flat_map(|s| self.html.select(s))
            .find_map(|e| find_date(&element_text(&e)))
            .or_else(|| {
                source.date_patterns.iter().find_map(|p| {
                    p.captures(raw)
                        .and_then(|c| c.get(1))
                        .and_then(|m| find_date(m.as_str()))
                })
            })
            .ok_or_else(|| {
                let mut places = source.config.page.date_selectors.clone();
                places.extend(source.config.page.date_patterns.iter().cloned());
                PageError::NoDate(places.join(", "))
            })?;
        let title = select_text(&root, &source.title).unwrap_or_default();
        let canonical = [
            ("meta[property='og:url']", "content"),
            ("link[rel=canonical]", "href"),
        ]
        .iter()
        .find_map(|(css, attr)| {
            self.html
                .select(&selector(css))
                .find_map(|e| e.value().attr(attr))
                .and_then(|u| Url::parse(u.trim()).ok())
        })
        .filter(|u| source.owns(u));
        let mut paragraphs = Vec::new();
        for p in body.select(&source.paragraphs) {
            paragraph_lines(p, &mut paragraphs);
        }
        Ok(Article {
            title,
            date,
            canonical,
            paragraphs,
        })
    }
}

/// A selector written in this file (always valid).
fn selector(css: &str) -> Selector {
    Selector::parse(css).unwrap_or_else(|_| unreachable!("built-in selector {css} is valid"))
}

/// Normalised text of the first element under `scope` matching `selector`.
fn select_text(scope: &ElementRef<'_>, selector: &Selector) -> Option<String> {
    scope
        .select(selector)
        .next()
        .map(|e| element_text(&e))
        .filter(|t| !t.is_empty())
}

/// All text of an element, normalised.
fn element_text(element: &ElementRef<'_>) -> String {
    crate::text::normalize(&element.text().collect::<String>())
}

/// Splits one paragraph element into lines at `<br>` and records, per line, whether every
/// visible letter is bold (`<strong>`/`<b>`).
fn paragraph_lines(p: ElementRef<'_>, out: &mut Vec<Paragraph>) {
    let mut text = String::new();
    let mut all_bold = true;
    let flush = |text: &mut String, all_bold: &mut bool, out: &mut Vec<Paragraph>| {
        if !text.trim().is_empty() {
            out.push(Paragraph {
                label: None,
                text: std::mem::take(text),
                all_bold: *all_bold,
            });
        }
        text.clear();
        *all_bold = true;
    };
    for node in p.descendants() {
        match node.value() {
            Node::Element(e) if e.name() == "br" => flush(&mut text, &mut all_bold, out),
            Node::Text(t) => {
                let hidden = node.ancestors().take_while(|a| a.id() != p.id()).any(|a| {
                    a.value()
                        .as_element()
                        .is_some_and(|e| matches!(e.name(), "script" | "style" | "template"))
                });
                if hidden {
                    continue;
                }
                if t.chars().any(char::is_alphanumeric) {
                    let bold = node.ancestors().take_while(|a| a.id() != p.id()).any(|a| {
                        a.value()
                            .as_element()
                            .is_some_and(|e| matches!(e.name(), "strong" | "b"))
                    }) || p.value().name() == "strong"
                        || p.value().name() == "b";
                    all_bold &= bold;
                }
                text.push_str(t);
            }
            _ => {}
        }
    }
    flush(&mut text, &mut all_bold, out);
}
