//! `mananera corpus import|stats|export` end to end: the plain-text dataset and saved pages
//! through the same speaker rules, idempotent re-imports, exports for other tools, and a
//! corpus that survives a lost manifest, stray temporary files and hand-damaged files.

mod fake_site;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn mananera(corpus: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mananera"))
        .args(args)
        .arg("--corpus-dir")
        .arg(corpus)
        .arg("--config")
        .arg(fixtures().join("../../config.toml"))
        .env("MANANERA_LOG", "warn")
        .env_remove("MANANERA_CONFIG")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)))
}

fn import(corpus: &Path, paths: &[PathBuf]) -> (serde_json::Value, Output) {
    let mut args = vec![
        "--format".to_string(),
        "json".into(),
        "corpus".into(),
        "import".into(),
    ];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mananera(corpus, &args);
    (json(&out), out)
}

fn transcript(corpus: &Path, id: &str) -> String {
    let file = std::fs::read_to_string(corpus.join("transcripts").join(id)).unwrap();
    file.split_once("\n\n").unwrap().1.trim_end().to_string()
}

#[test]
fn the_dataset_imports_through_the_speaker_rules_and_reimports_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let (report, out) = import(&corpus, &[fixtures().join("mananeras")]);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["files"], 3, "{report}");
    assert_eq!(
        (report["new"].as_u64(), report["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert!(report["mb_per_s"].as_f64().unwrap() > 0.0);

    let amlo =
        "mananeras/2019/2019-08-02--version-estenografica-de-la-conferencia-de-prensa-matutina.txt";
    assert_eq!(
        transcript(&corpus, amlo),
        "Así es, la unidad, la unidad.\nMuchas gracias.\n\nVa muy bien la refinería. Se termina en tiempo."
    );
    let file = std::fs::read_to_string(corpus.join("transcripts").join(amlo)).unwrap();
    assert!(file.contains("\nurl: import:mananeras/articulos/2019/agosto/02--version-estenografica-de-la-conferencia-de-prensa-matutina.txt\n"), "{file}");
    assert!(
        file.contains(
            "\nalias: import:mananeras/articulos/2019/agosto/05--version-estenografica-copia.txt\n"
        ),
        "{file}"
    );
    let sheinbaum = "mananeras/2024/2024-10-02--version-estenografica-de-la-conferencia-de-prensa-de-la-presidenta.txt";
    assert_eq!(
        transcript(&corpus, sheinbaum),
        "Buenos días a todas y a todos. Es mi primera mañanera.\n\nMuy contenta, con mucha responsabilidad."
    );

    let before = std::fs::read(corpus.join("manifest.json")).unwrap();
    let (again, out) = import(&corpus, &[fixtures().join("mananeras/articulos/2019")]);
    assert!(out.status.success());
    assert_eq!(
        (again["new"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(2)),
        "{again}"
    );
    assert_eq!(
        std::fs::read(corpus.join("manifest.json")).unwrap(),
        before,
        "re-import is idempotent"
    );

    let stats = json(&mananera(&corpus, &["--format", "json", "corpus", "stats"]));
    let rows = stats["sources"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{stats}"); // mananeras + all
    assert_eq!(rows[0]["source"], "mananeras");
    assert_eq!(rows[0]["transcripts"], 2);
    assert_eq!(rows[0]["first"], "2019-08-02");
    assert_eq!(rows[0]["last"], "2024-10-02");
    assert_eq!(rows[1]["source"], "all");
    let text = mananera(&corpus, &["corpus", "stats"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("mananeras"));
}

#[test]
fn saved_pages_import_and_a_challenge_page_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let pages = fixtures().join("pages");
    let files: Vec<PathBuf> = [
        "gob-2019-09-11.html",
        "gob-2025-07-02.html",
        "lopezobrador-2024-02-20.html",
        "challenge.html",
    ]
    .iter()
    .map(|f| pages.join(f))
    .collect();
    let (report, out) = import(&corpus, &files);
    assert_eq!(out.status.code(), Some(4), "{report}");
    assert_eq!(report["new"], 3, "{report}");
    let failed = report["failed"].to_string();
    assert!(
        failed.contains("challenge.html") && failed.contains("anti-bot challenge"),
        "{failed}"
    );
    // The page's own address identifies it, so a later scrape of it is not a new transcript.
    let id = "gob/2019/2019-09-11--version-estenografica-de-la-conferencia-de-prensa-matutina-miercoles-11-de-septi.txt";
    let file = std::fs::read_to_string(corpus.join("transcripts").join(id)).unwrap();
    assert!(file.contains("url: http://www.gob.mx/presidencia/es/articulos/version-estenografica-de-la-conferencia-de-prensa-matutina-miercoles-11-de-septiembre-2019\n"), "{file}");
    assert_eq!(
        transcript(&corpus, id),
        std::fs::read_to_string(pages.join("gob-2019-09-11.expected.txt"))
            .unwrap()
            .trim_end()
    );
}

#[test]
fn files_that_are_not_transcripts_fail_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let (report, out) = import(&corpus, &[fixtures().join("mananeras-bad")]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        report["failed"]
            .to_string()
            .contains("not in the mananeras dataset format"),
        "{report}"
    );
    let missing = mananera(&corpus, &["corpus", "import", "/nonexistent/path"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/path"));
}

#[test]
fn export_writes_chunks_as_text_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    import(
        &corpus,
        &[
            fixtures().join("pages/gob-2019-09-11.html"),
            fixtures().join("mananeras"),
        ],
    );
    let out = mananera(&corpus, &["--format", "jsonl", "corpus", "export"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 40, "{}", lines.len());
    for line in &lines {
        let text = line["text"].as_str().unwrap();
        assert!(!text.is_empty() && text.chars().count() <= 1000, "{text}");
        for key in ["date", "source", "url", "speaker"] {
            assert!(line[key].is_string(), "{line}");
        }
    }
    assert_eq!(lines[0]["date"], "2019-08-02", "oldest first");
    let stats = json(&mananera(&corpus, &["--format", "json", "corpus", "stats"]));
    let all = stats["sources"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(all["chunks"].as_u64().unwrap() as usize, lines.len());

    let text = mananera(&corpus, &["corpus", "export"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("Así es, la unidad, la unidad. Muchas gracias. Va muy bien la refinería."),
        "{text}"
    );
}

#[test]
fn the_manifest_is_rebuilt_from_the_files_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    import(&corpus, &[fixtures().join("mananeras")]);
    let stats = |corpus: &Path| json(&mananera(corpus, &["--format", "json", "corpus", "stats"]));
    let want = stats(&corpus);

    // A crash between a transcript write and the manifest write, or a lost manifest.
    std::fs::remove_file(corpus.join("manifest.json")).unwrap();
    std::fs::write(
        corpus.join("transcripts/mananeras/2019/.tmpXYZ"),
        "half a file",
    )
    .unwrap();
    assert_eq!(stats(&corpus), want);
    assert!(
        !corpus.join("transcripts/mananeras/2019/.tmpXYZ").exists(),
        "leftover temp files are removed"
    );
    std::fs::write(corpus.join("manifest.json"), "{ not json").unwrap();
    assert_eq!(stats(&corpus), want);

    // A hand-damaged transcript is named, and nothing is deleted.
    let id = corpus.join("transcripts/mananeras/2024/2024-10-02--version-estenografica-de-la-conferencia-de-prensa-de-la-presidenta.txt");
    std::fs::write(&id, "date: someday\n\ntext\n").unwrap();
    let out = mananera(&corpus, &["corpus", "stats"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2024-10-02--version") && err.contains("line 1: date"),
        "{err}"
    );
    assert!(id.exists());
}

/// The fixture dataset as GitHub's archive of the repository: `mananeras-main/articulos/…`.
fn fixture_archive() -> Vec<u8> {
    let root = fixtures().join("mananeras");
    let mut files = Vec::new();
    let mut stack = vec![root.join("articulos")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(&root).unwrap().display().to_string();
                let content = std::fs::read_to_string(&path).unwrap();
                files.push((format!("mananeras-main/{relative}"), content));
            }
        }
    }
    files.sort();
    files.push(("mananeras-main/readme.md".into(), "# mananeras".into()));
    fake_site::tar_gz(&files)
}

#[test]
fn the_dataset_archive_imports_like_its_files_and_bad_archives_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let archive = dir.path().join("mananeras-main.tar.gz");
    let bytes = fixture_archive();
    std::fs::write(&archive, &bytes).unwrap();
    let (report, out) = import(&corpus, std::slice::from_ref(&archive));
    assert!(out.status.success(), "{report}");
    assert_eq!(report["files"], 3, "{report}");
    assert_eq!(
        (report["new"].as_u64(), report["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    // The same transcripts as the files: importing those changes nothing.
    let before = std::fs::read(corpus.join("manifest.json")).unwrap();
    let (again, out) = import(&corpus, &[fixtures().join("mananeras")]);
    assert!(out.status.success(), "{again}");
    assert_eq!(
        (again["new"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(std::fs::read(corpus.join("manifest.json")).unwrap(), before);

    // Refused whole, with the reason; the corpus is as it was.
    let refused = |name: &str, content: &[u8], phrase: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = mananera(&corpus, &["corpus", "import", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(phrase), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(std::fs::read(corpus.join("manifest.json")).unwrap(), before);
    };
    refused(
        "cut.tar.gz",
        &bytes[..bytes.len() / 2],
        "not a complete .tar.gz",
    );
    refused(
        "other.tar.gz",
        &fake_site::tar_gz(&[("proyecto/src/main.rs".into(), "fn main() {}".into())]),
        "not the mananeras dataset",
    );
    refused("dataset.zip", b"PK\x03\x04", "zip archives are not read");

    // By URL: a configured archive's checksum and size cap hold.
    let site = fake_site::Site::start(fake_site::Kind::WordPress, "localhost");
    site.put_file("/mananeras.tar.gz", bytes.clone());
    let url = site.url("/mananeras.tar.gz");
    let with = |settings: &str| {
        let set =
            format!("scrape.archives=[{{ name = \"mananeras\", url = \"{url}\", {settings} }}]");
        let out = mananera(&corpus, &["--set", &set, "corpus", "import", &url]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = with(&format!("sha256 = \"{}\"", "0".repeat(64)));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SHA-256"), "{stderr}");
    let (code, stderr) = with("max_bytes = 100");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("100-byte limit"), "{stderr}");
    assert_eq!(std::fs::read(corpus.join("manifest.json")).unwrap(), before);
    let (code, stderr) = with("sha256 = \"\"");
    assert_eq!(code, Some(0), "{stderr}");
}
