//! What operators read, pinned as snapshots (insta): the help texts, refusals and `--json` shapes,
//! with ids, paths and times filtered out. A changed word shows up as a diff to review
//! (`cargo insta review`); a doubled message or a lost field fails here first.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn filters(h: &TestHost) -> Vec<(String, String)> {
    vec![
        (
            regex_escape(&h.tmp.path().display().to_string()),
            "[TMP]".into(),
        ),
        (r"\b[0-9a-f]{64}\b".into(), "[ID]".into()),
        (r"\b[0-9a-f]{12}\b".into(), "[SHORT-ID]".into()),
        (r"\b[0-9A-F]{16}\b".into(), "[KEY-ID]".into()),
        (r"\d+\.\d+s\b".into(), "[SECONDS]".into()),
        (
            r#""seconds": [0-9.e-]+"#.into(),
            r#""seconds": [SECONDS]"#.into(),
        ),
        (
            r#""(installed_at|activated_at|at)": \d+"#.into(),
            r#""$1": [TIME]"#.into(),
        ),
    ]
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

macro_rules! snap {
    ($h:expr, $name:expr, $value:expr) => {{
        let f = filters($h);
        let refs: Vec<(&str, &str)> = f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        insta::with_settings!({ filters => refs, prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!($name, $value);
        });
    }};
}

#[test]
fn help_texts() {
    let h = TestHost::new();
    for args in [
        vec!["--help"],
        vec!["activate", "--help"],
        vec!["diff", "--help"],
        vec!["rollback", "--help"],
    ] {
        let out = h.ctl(&args);
        assert_eq!(out.code, 0);
        snap!(
            &h,
            format!("help-{}", args[0].trim_start_matches('-')),
            out.stdout
        );
    }
}

#[test]
fn refusals_say_what_and_what_to_do() {
    let h = TestHost::new();
    let other = keys::generate();
    let foreign = h.bundle_with_key("1.0", 1, &Tree::demo("a"), &other, TARGET);
    let out = h.ctl(&["activate", foreign.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2);
    snap!(&h, "refusal-untrusted-key", out.stderr);
    let elsewhere = h.bundle_with_key(
        "1.0",
        1,
        &Tree::demo("a"),
        &h.key,
        "linux-aarch64-cu130-sm_121",
    );
    let out = h.ctl(&["activate", elsewhere.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2);
    snap!(&h, "refusal-other-target", out.stderr);
    let out = h.ctl(&["rollback", "--no-service"]);
    assert_eq!(out.code, 2);
    snap!(&h, "refusal-nothing-to-roll-back-to", out.stderr);
}

#[test]
fn json_reports() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let out = h.ctl(&["activate", a.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    snap!(&h, "activate-json", out.stdout);
    let out = h.ctl(&["status", "--json"]);
    snap!(&h, "status-json", out.stdout);
    let out = h.ctl(&["releases", "--json"]);
    snap!(&h, "releases-json", out.stdout);
    let out = h.ctl(&["verify", "--json"]);
    snap!(&h, "verify-json", out.stdout);
    let out = h.ctl(&["models", "--json"]);
    snap!(&h, "models-json", out.stdout);
    let out = h.ctl(&["gc", "--json"]);
    snap!(&h, "gc-json", out.stdout);
    let out = h.ctl(&["rollback", "--json", "--no-service"]);
    assert_eq!(out.code, 2);
    snap!(&h, "error-json", out.stdout);
}
