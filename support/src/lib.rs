//! What `comfy-build` and `comfyctl` share as command-line programs: the doctor report, progress
//! bars on a terminal, logging set-up, and reading a running ComfyUI's `/object_info`. No format,
//! key or host logic lives here.

pub mod cmd;
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

/// The most comfyctl or the builder reads of one answer from a running ComfyUI (`/system_stats`,
/// `/object_info`, `/prompt`, `/history`): the app runs third-party code, and a huge answer must
/// not become root's memory. The real app's `/object_info` with five node packs is about 1 MiB.
pub const MAX_APP_ANSWER: u64 = 16 << 20;

/// The most JSON values (objects, arrays, and each element or member of them) an answer from
/// the app may hold: parsed, each costs tens of bytes, so 16 MiB of `{}` would take gigabytes.
/// The real app's `/object_info` with five node packs holds about 60,000.
pub const MAX_APP_VALUES: usize = 1_000_000;

/// Counts the values in a JSON text without parsing it: `{`, `[` and `,` outside strings.
fn json_values(body: &[u8]) -> usize {
    let (mut n, mut in_str, mut esc) = (0usize, false, false);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' | b'[' | b',' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The JSON body of an answer from the app, refused past [`MAX_APP_ANSWER`] bytes or
/// [`MAX_APP_VALUES`] values, so root's memory stays bounded whatever the app sends.
pub fn read_json(
    resp: reqwest::blocking::Response,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    use std::io::Read as _;
    if resp.content_length().is_some_and(|n| n > MAX_APP_ANSWER) {
        anyhow::bail!(
            "{what} announced {} bytes, over the {MAX_APP_ANSWER} byte limit for an answer from the app",
            resp.content_length().unwrap_or_default()
        );
    }
    let mut body = Vec::new();
    resp.take(MAX_APP_ANSWER + 1)
        .read_to_end(&mut body)
        .map_err(|e| anyhow::anyhow!("reading {what}: {e}"))?;
    if body.len() as u64 > MAX_APP_ANSWER {
        anyhow::bail!("{what} is over the {MAX_APP_ANSWER} byte limit for an answer from the app");
    }
    if json_values(&body) > MAX_APP_VALUES {
        anyhow::bail!(
            "{what} holds over {MAX_APP_VALUES} JSON values, more than an answer from the app may"
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("{what} is not JSON"))
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

/// How waiting for a starting ComfyUI ended.
#[derive(Debug)]
pub enum Started {
    /// `/system_stats` answered 200 with this JSON.
    Up(serde_json::Value),
    /// The caller's `gone` gave this reason (the process exited); with the last thing seen.
    Gone { why: String, last: String },
    /// No answer in time; the last thing seen.
    TimedOut { last: String },
}

/// Polls `GET {base}/system_stats` (ComfyUI binds its port only after every custom node imported)
/// every 200 ms until it answers, `gone` gives a reason to stop waiting, or `timeout` passes. The
/// builder's smoke start and the host's health check both wait this way.
pub fn wait_for_app(
    client: &reqwest::blocking::Client,
    base: &str,
    timeout: std::time::Duration,
    gone: &mut dyn FnMut() -> Option<String>,
) -> anyhow::Result<Started> {
    let t0 = std::time::Instant::now();
    loop {
        let last = match client.get(format!("{base}/system_stats")).send() {
            Ok(r) if r.status().is_success() => {
                return Ok(Started::Up(read_json(r, "/system_stats")?));
            }
            Ok(r) => format!("/system_stats answered {}", r.status()),
            Err(e) => format!("nothing answers on {base} ({e})"),
        };
        if let Some(why) = gone() {
            return Ok(Started::Gone { why, last });
        }
        if t0.elapsed() >= timeout {
            return Ok(Started::TimedOut { last });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `GET {base}/object_info` of a running ComfyUI, as JSON (the builder's smoke start and the
/// host's health check both read which node classes it lists).
pub fn object_info(
    client: &reqwest::blocking::Client,
    base: &str,
) -> anyhow::Result<serde_json::Value> {
    read_json(
        client
            .get(format!("{base}/object_info"))
            .send()?
            .error_for_status()?,
        "/object_info",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_values_are_counted_outside_strings() {
        assert_eq!(super::json_values(br#"{"a": [1, 2, {"b": "x,{[\"y"}]}"#), 5);
        assert_eq!(super::json_values(b"{}"), 1);
    }

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
