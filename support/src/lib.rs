//! What `comfy-build` and `comfyctl` share as command-line programs: the doctor report, progress
//! bars on a terminal, logging set-up, child processes, exit status. No format, key, host or
//! ComfyUI logic lives here (ComfyUI's is the `comfyui` crate's).

pub mod cmd;
pub mod diff;
pub mod doctor;

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

/// `s` made safe to print on a terminal as text: like [`term_safe`], but line breaks and tabs
/// stay as they are (multi-line errors and reports keep their shape).
pub fn term_safe_text(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// The version of both programs' `--json` contract (fields, their meaning, exit codes): every
/// JSON document carries it as `schema_version`. Removing a field or changing its meaning raises
/// it; fields are only ever added without.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The first 12 characters of an id, digest or commit (how both programs name releases, stages
/// and sources to people); the whole string when it is shorter.
pub fn short_id(id: &str) -> &str {
    let mut end = id.len().min(12);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// The lowercase hex SHA-256 of everything `r` yields (a model file, a download), read in 1 MiB
/// pieces.
pub fn sha256_hex(mut r: impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// True when `e` is a refusal (a bad bundle, signature or key, or whatever `also` says is one,
/// such as the activator's own refusals) rather than a failure of this machine (I/O, a tool).
pub fn is_refusal(
    e: &anyhow::Error,
    also: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<bundle::Error>()
            .is_some_and(bundle::Error::is_refusal)
            || c.downcast_ref::<keys::Error>()
                .is_some_and(|k| !matches!(k, keys::Error::Io(_)))
            || also(c)
    })
}

/// The exit status of a failed command, the same for both programs: 2 refused, 1 failed.
pub fn exit_code(
    e: &anyhow::Error,
    also: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> u8 {
    if is_refusal(e, also) {
        2
    } else {
        1
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn text_keeps_its_lines_but_not_its_escapes() {
        assert_eq!(
            super::term_safe_text("line 1\n\tline 2 \u{1b}[2J\u{9b}31m"),
            "line 1\n\tline 2 \\u{1b}[2J\\u{9b}31m"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::term_safe("venv/lib/ok.py"), "venv/lib/ok.py");
        assert_eq!(
            super::term_safe("a\u{1b}]0;pwned\u{7}b\nc"),
            "a\\u{1b}]0;pwned\\u{7}b\\u{a}c"
        );
    }
}
