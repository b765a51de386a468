//! Talking to a running ComfyUI: waiting for it to start, reading `/object_info`, and reading
//! any answer in bounded memory (the app runs third-party code; root reads what it says).

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
}
