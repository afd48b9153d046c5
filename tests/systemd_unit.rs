//! The shipped unit, as systemd itself reads it: `systemd-analyze verify` (with ExecStart
//! pointing at the binary under test, since verify checks that it exists) and the
//! `systemd-analyze security` exposure rating, which must stay "OK" or better (≤ 4.9).

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../systemd/mananera.service");
const INSTALLED_BINARY: &str = "/usr/local/bin/mananera";

/// The unit with ExecStart on the binary under test, in a directory of its own.
fn unit_for_this_build() -> tempfile::TempDir {
    assert!(
        UNIT.contains(INSTALLED_BINARY),
        "the unit no longer runs {INSTALLED_BINARY}"
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = UNIT.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_mananera"));
    std::fs::write(dir.path().join("mananera.service"), unit).unwrap();
    dir
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package `systemd`; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_a_warning() {
    let dir = unit_for_this_build();
    let (ok, text) = analyze(&["verify"], &dir.path().join("mananera.service"));
    assert!(ok && text.trim().is_empty(), "{text}");
}

#[test]
fn the_unit_rates_ok_or_better_in_systemd_analyze_security() {
    let (ok, text) = analyze(
        &["security", "--offline=true", "--no-pager"],
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/mananera.service"),
    );
    assert!(ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating in:\n{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unreadable rating: {line}"));
    assert!(score <= 4.9, "exposure {score} is worse than OK: {line}");
    assert!(
        score <= 1.5,
        "the unit got less strict than its documented 1.2: {line}"
    );
}
