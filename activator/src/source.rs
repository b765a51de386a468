//! Where a bundle comes from: a local path, or an http(s) URL downloaded into `state/downloads/`
//! with resume (HTTP Range), a size limit and a progress bar. A cut download keeps its partial file,
//! and the next attempt continues from there.

use crate::host::refuse;
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// What the fetch did, for reports.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Fetched {
    pub path: PathBuf,
    /// Bytes transferred in this run (0 for a local file).
    pub downloaded: u64,
    pub resumed_from: u64,
    /// Set for a delta download: the bundle's full size, of which `downloaded` bytes were fetched.
    pub delta: Option<u64>,
}

/// The HTTP client of every download. reqwest's blocking timeout bounds the wait for the headers
/// and for each read of the body: a stall detector, not a limit on the whole download. Redirects
/// from https to plain http are refused (they would hand the download to anyone on the path).
pub fn http_client(stall: Duration) -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(stall)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else if downgrades(attempt.previous(), attempt.url()) {
                let to = attempt.url().to_string();
                attempt.error(format!("refusing a redirect from https to {to}"))
            } else {
                attempt.follow()
            }
        }))
        .build()?)
}

/// True when a redirect to `next` leaves https after any of `previous` used it.
fn downgrades(previous: &[reqwest::Url], next: &reqwest::Url) -> bool {
    previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https"
}

/// Resolves a source to a local file.
/// `stall`: the longest wait for the response or for any part of its body.
pub fn fetch(source: &str, downloads: &Path, max_bytes: u64, stall: Duration) -> Result<Fetched> {
    if !is_url(source) {
        let p = PathBuf::from(source);
        if !p.is_file() {
            bail!("no bundle at {source}: give a .bundle file or an http(s) URL");
        }
        return Ok(Fetched {
            path: p,
            ..Default::default()
        });
    }
    fs_err::create_dir_all(downloads)?;
    let key = hex::encode(&Sha256::digest(source.as_bytes())[..8]);
    let done = downloads.join(format!("{key}.bundle"));
    let part = downloads.join(format!("{key}.bundle.part"));
    // Two activations of the same URL share one download, one after the other.
    let guard = fs_err::File::create(downloads.join(format!("{key}.lock")))?;
    guard
        .file()
        .lock()
        .with_context(|| format!("waiting for another download of {source}"))?;
    let have = fs_err::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let client = http_client(stall)?;
    let mut req = client.get(source);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().with_context(|| format!("fetching {source}"))?;
    let status = resp.status();
    let (mut file, start) = match status.as_u16() {
        206 => (fs_err::OpenOptions::new().append(true).open(&part)?, have),
        200 => (fs_err::File::create(&part)?, 0),
        416 if have > 0 => {
            // Already complete: the server has nothing past what we hold.
            fs_err::rename(&part, &done)?;
            return Ok(Fetched {
                path: done,
                downloaded: 0,
                resumed_from: have,
                delta: None,
            });
        }
        _ => bail!("fetching {source}: server answered {status}"),
    };
    let total = resp.content_length().map(|n| n + start);
    if let Some(t) = total {
        if t > max_bytes {
            return refuse(format!(
                "{source} is {t} bytes, over this host's limit of {max_bytes} (max_download_bytes in comfyctl.toml)"
            ));
        }
    }
    let pb = support::bytes_bar(total.unwrap_or(0), "download");
    pb.set_position(start);
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                file.sync_all()?;
                let timed_out = e.kind() == std::io::ErrorKind::TimedOut
                    || e.get_ref()
                        .and_then(|i| i.downcast_ref::<reqwest::Error>())
                        .is_some_and(reqwest::Error::is_timeout);
                if timed_out {
                    bail!(
                        "download of {source} stalled: nothing received for {}s after {} bytes; run the same command again to resume",
                        stall.as_secs(),
                        start + got
                    );
                }
                bail!("download of {source} cut after {} bytes ({e}); run the same command again to resume", start + got);
            }
        };
        got += n as u64;
        if start + got > max_bytes {
            drop(file);
            let _ = fs_err::remove_file(&part);
            return refuse(format!(
                "{source} sent more than this host's limit of {max_bytes} bytes"
            ));
        }
        file.write_all(&buf[..n])?;
        pb.set_position(start + got);
    }
    pb.finish_and_clear();
    file.sync_all()?;
    if let Some(t) = total {
        if start + got != t {
            bail!("download of {source} stopped at {} of {t} bytes; run the same command again to resume", start + got);
        }
    }
    fs_err::rename(&part, &done)?;
    Ok(Fetched {
        path: done,
        downloaded: got,
        resumed_from: start,
        delta: None,
    })
}

#[cfg(test)]
mod tests {
    use super::downgrades;
    use reqwest::Url;

    #[test]
    fn redirects_never_leave_https() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(downgrades(
            &[u("https://mirror/a.bundle")],
            &u("http://evil/a.bundle")
        ));
        assert!(downgrades(
            &[u("https://a/x"), u("https://b/x")],
            &u("http://c/x")
        ));
        assert!(!downgrades(&[u("https://a/x")], &u("https://b/x")));
        assert!(!downgrades(&[u("http://a/x")], &u("http://b/x")));
        assert!(!downgrades(&[u("http://a/x")], &u("https://b/x")));
    }
}
