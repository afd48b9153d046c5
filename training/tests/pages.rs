//! Every fixture page cleans to exactly its `.expected.txt`: speaker turns, continuations,
//! dropped notes. The two real gob.mx pages' expectations were checked against an
//! independent re-implementation of the rules.

use std::path::PathBuf;

use mananera_training::Cleaning;
use mananera_training::page::{Page, PageError};
use mananera_training::scrape::ScrapeConfig;
use mananera_training::source::Source;
use mananera_training::speakers::default_speakers;
use mananera_training::turns::CleaningRules;

fn pages_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pages")
}

fn source(name: &str) -> Source {
    let config = ScrapeConfig::default();
    let config = config.sources.iter().find(|s| s.name == name).unwrap();
    Source::new(config).unwrap()
}

fn clean(file: &str) -> Result<String, String> {
    let html = std::fs::read_to_string(pages_dir().join(file)).unwrap();
    let page = Page::parse(&html);
    page.check_challenge(&ScrapeConfig::default().challenge_titles)
        .map_err(|e| e.to_string())?;
    let source = source(file.split('-').next().unwrap());
    let article = page.article(&source, &html).map_err(|e| e.to_string())?;
    let cleaning = Cleaning::new(&default_speakers(), &CleaningRules::default()).unwrap();
    cleaning
        .clean(article.date, article.paragraphs)
        .map(|c| c.text)
}

fn expected(file: &str) -> String {
    let path = pages_dir().join(file.replace(".html", ".expected.txt"));
    std::fs::read_to_string(path)
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn every_fixture_page_cleans_to_its_expected_text() {
    let mut checked = 0;
    for item in std::fs::read_dir(pages_dir()).unwrap() {
        let name = item.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".html") && name != "challenge.html" {
            assert_eq!(clean(&name).unwrap(), expected(&name), "{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "every page has an expectation");
}

#[test]
fn the_real_pages_keep_only_the_president_and_know_their_dates() {
    let html = std::fs::read_to_string(pages_dir().join("gob-2019-09-11.html")).unwrap();
    let article = Page::parse(&html).article(&source("gob"), &html).unwrap();
    assert_eq!(article.date, jiff::civil::date(2019, 9, 11));
    assert_eq!(
        article.title,
        "Versión estenográfica de la conferencia de prensa matutina | Miércoles 11 de septiembre, 2019"
    );
    let text = clean("gob-2019-09-11.html").unwrap();
    assert!(text.starts_with(
        "Buenos días. Ánimo.\nBueno, el día de hoy vamos a dar una muy buena noticia"
    ));
    // Bartlett's, Calvillo's and the reporters' words are gone.
    assert!(!text.contains("Voy a hacer una narración breve"));
    assert!(!text.contains("Carlos Pozos"));
    assert!(text.ends_with("pero sí estamos actuando en general.\nMuy bien, muchas gracias."));
}

#[test]
fn a_challenge_page_is_reported_as_such() {
    let html = std::fs::read_to_string(pages_dir().join("challenge.html")).unwrap();
    let err = Page::parse(&html)
        .check_challenge(&ScrapeConfig::default().challenge_titles)
        .unwrap_err();
    assert_eq!(err, PageError::Challenge("Challenge Validation".into()));
}

#[test]
fn a_page_of_another_layout_names_the_selector_that_failed() {
    let html = std::fs::read_to_string(pages_dir().join("lopezobrador-2019-08-02.html")).unwrap();
    let err = Page::parse(&html)
        .article(&source("gob"), &html)
        .unwrap_err();
    assert!(err.to_string().contains("div.article-body"), "{err}");
}
