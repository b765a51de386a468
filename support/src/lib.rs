//! What `comfy-build` and `comfyctl` share as command-line programs: the doctor report, progress
//! bars on a terminal, logging set-up, and reading a running ComfyUI's `/object_info`. No format,
//! key or host logic lives here.

pub mod diff;
pub mod doctor;
pub mod workflow;

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;

/// `s` made safe to print on a terminal: control characters (an escape sequence in a file name
/// from a bundle could set the terminal's title or hide text) are shown escaped, `\u{1b}`.
pub fn term_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A byte-count bar on stderr, hidden when stderr is not a terminal (scripts and CI logs stay clean).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// Logging to stderr: warnings by default, `-v` debug, `-vv` trace, or `RUST_LOG`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `GET {base}/object_info` of a running ComfyUI, as JSON (the builder's smoke start and the
/// host's health check both read which node classes it lists).
pub fn object_info(
    client: &reqwest::blocking::Client,
    base: &str,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let body = client
        .get(format!("{base}/object_info"))
        .send()?
        .error_for_status()?
        .bytes()?;
    serde_json::from_slice(&body).context("/object_info is not JSON")
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::term_safe("venv/lib/ok.py"), "venv/lib/ok.py");
        assert_eq!(
            super::term_safe("a\u{1b}]0;pwned\u{7}b\nc"),
            "a\\u{1b}]0;pwned\\u{7}b\\u{a}c"
        );
    }
}
