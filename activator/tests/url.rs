//! `comfyctl activate URL` against a real HTTP server on loopback: a plain download, one cut halfway
//! and resumed with Range, and servers that lie about the size.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy)]
enum Mode {
    Honest,
    /// The first response stops after this many body bytes.
    CutFirst(usize),
    /// Content-Length and body are half the file.
    ShortLength,
    /// Claims an enormous Content-Length.
    HugeLength,
    /// Ignores Range headers.
    NoRanges,
    /// Answers every Range request with a 206 whose body has no length and does not end (it
    /// stops at 512 MiB so the server thread ends); whole-file requests are honest.
    EndlessRanges,
    /// Sends the headers and the first 1000 bytes, then nothing for a minute.
    Stall,
}

/// Serves `body` until the test ends; returns the URL and the Range headers it saw.
fn serve(body: Vec<u8>, mode: Mode) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/demo.bundle", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_owned());
                }
            }
            seen2
                .lock()
                .unwrap()
                .push(range.as_ref().map(|r| r.trim_end_matches('-').to_owned()));
            // `a-`, `a-b` and `-n` (the last n bytes), as HTTP has them.
            let (start, end) = match range.as_deref() {
                None => (0, body.len()),
                Some(r) => match r.split_once('-').unwrap() {
                    ("", n) => (body.len() - n.parse::<usize>().unwrap(), body.len()),
                    (a, "") => (a.parse().unwrap(), body.len()),
                    (a, b) => (a.parse().unwrap(), b.parse::<usize>().unwrap() + 1),
                },
            };
            let rest = &body[start.min(body.len())..end.min(body.len())];
            let (status, len, send): (&str, u64, &[u8]) = match mode {
                Mode::ShortLength => ("200 OK", (body.len() / 2) as u64, &body[..body.len() / 2]),
                Mode::HugeLength => ("200 OK", 100 << 30, &body[..1000]),
                Mode::CutFirst(cut) if n == 0 => ("200 OK", body.len() as u64, &body[..cut]),
                Mode::NoRanges => ("200 OK", body.len() as u64, &body[..]),
                _ if range.is_some() => ("206 Partial Content", rest.len() as u64, rest),
                _ => ("200 OK", body.len() as u64, &body[..]),
            };
            let content_range = if status.starts_with("206") {
                format!(
                    "Content-Range: bytes {start}-{}/{}\r\n",
                    end - 1,
                    body.len()
                )
            } else {
                String::new()
            };
            if matches!(mode, Mode::Stall) {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..1000]);
                let _ = stream.flush();
                std::thread::sleep(std::time::Duration::from_secs(60));
                continue;
            }
            if matches!(mode, Mode::EndlessRanges) && range.is_some() {
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\n{content_range}Connection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let junk = vec![0x5au8; 1 << 16];
                for _ in 0..(512 << 20) / junk.len() {
                    if stream.write_all(&junk).is_err() {
                        break;
                    }
                }
                continue;
            }
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n{content_range}Connection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(send);
            let _ = stream.flush();
        }
    });
    (url, seen)
}

#[test]
fn plain_download_activates() {
    let h = TestHost::new();
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    let (url, seen) = serve(fs_err::read(&b).unwrap(), Mode::Honest);
    let out = h.ctl(&["activate", &url, "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["id"], h.id_of(&b).as_str());
    assert_eq!(
        r["fetch"]["downloaded"],
        fs_err::metadata(&b).unwrap().len()
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        downloads(&h),
        Vec::<String>::new(),
        "the download is gone once installed"
    );
}

/// What `state/downloads` holds, but for the empty per-URL lock files (gc removes them after an hour).
fn downloads(h: &TestHost) -> Vec<String> {
    let dir = h.install().join("state/downloads");
    let mut v: Vec<String> = fs_err::read_dir(&dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn refused_and_leftover_downloads_do_not_pile_up() {
    let h = TestHost::new();
    // Signed by a key this host does not trust: refused, and its download removed.
    let other = keys::generate();
    let b = h.bundle_with_key("1.0", 1, &Tree::demo("a"), &other, TARGET);
    let (url, _) = serve(fs_err::read(&b).unwrap(), Mode::Honest);
    let out = h.ctl(&["activate", &url, "--no-service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(downloads(&h), Vec::<String>::new());
    // What a killed activation leaves (a whole bundle, a delta copy) and an old partial go with
    // gc; a recent partial stays, so the same command still resumes it.
    let dir = h.install().join("state/downloads");
    for f in [
        "0123.bundle",
        "delta-99.bundle",
        "old.bundle.part",
        "new.bundle.part",
    ] {
        fs_err::write(dir.join(f), vec![0u8; 1000]).unwrap();
    }
    let ago = |secs: u64| std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
    for (f, age) in [
        ("old.bundle.part", 8 * 24 * 3600),
        ("0123.bundle", 2 * 3600),
        ("delta-99.bundle", 2 * 3600),
    ] {
        fs_err::File::options()
            .write(true)
            .open(dir.join(f))
            .unwrap()
            .set_modified(ago(age))
            .unwrap();
    }
    // Written a minute ago: an activation may still be using it (downloads run outside the lock).
    fs_err::write(dir.join("busy.bundle"), vec![0u8; 10]).unwrap();
    let out = h.ctl(&["gc", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["removed_downloads"], 3, "{r}");
    assert_eq!(r["download_bytes"], 3000, "{r}");
    assert_eq!(downloads(&h), ["busy.bundle", "new.bundle.part"]);
}

#[test]
fn cut_download_resumes_with_range() {
    let h = TestHost::new();
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    let bytes = fs_err::read(&b).unwrap();
    let half = bytes.len() / 2;
    let (url, seen) = serve(bytes.clone(), Mode::CutFirst(half));
    let out = h.ctl(&["activate", &url, "--no-service"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("run the same command again to resume"),
        "{}",
        out.stderr
    );
    assert!(h.current().is_none());
    let out = h.ctl(&["activate", &url, "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["fetch"]["resumed_from"], half as u64);
    assert_eq!(r["fetch"]["downloaded"], (bytes.len() - half) as u64);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [None, Some(half.to_string())]
    );
    assert_eq!(h.current(), Some(h.id_of(&b)));
}

#[test]
fn servers_that_lie_about_size_are_refused() {
    let h = TestHost::new();
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    let (url, _) = serve(fs_err::read(&b).unwrap(), Mode::ShortLength);
    let out = h.ctl(&["activate", &url, "--no-service"]);
    assert_eq!(
        out.code, 2,
        "a short body is a truncated bundle: {}",
        out.stderr
    );
    assert!(out.stderr.contains("truncated"), "{}", out.stderr);
    let (url, _) = serve(fs_err::read(&b).unwrap(), Mode::HugeLength);
    let out = h.ctl(&["activate", &url, "--no-service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("over this host's limit"),
        "{}",
        out.stderr
    );
    assert!(h.current().is_none());
}

#[test]
fn delta_fetch_reads_only_the_frames_the_host_lacks() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    let (url_a, _) = serve(fs_err::read(&a).unwrap(), Mode::Honest);
    assert_eq!(h.ctl(&["activate", &url_a, "--no-service"]).code, 0);
    let size = fs_err::metadata(&b).unwrap().len();
    let (url_b, seen) = serve(fs_err::read(&b).unwrap(), Mode::Honest);
    // The diff and the dry run say beforehand what the delta will download, and keep nothing.
    let d = h.ctl(&["diff", &url_b, "--json"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let predicted = d.json()["download_bytes"].as_u64().unwrap();
    let plan = h.ctl(&["activate", &url_b, "--dry-run", "--no-service", "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert_eq!(plan.json()["diff"]["download_bytes"], predicted);
    assert_eq!(downloads(&h), Vec::<String>::new());
    assert_eq!(h.current(), Some(h.id_of(&a)));
    let out = h.ctl(&["activate", &url_b, "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["fetch"]["delta"], size);
    let fetched = r["fetch"]["downloaded"].as_u64().unwrap();
    assert_eq!(
        fetched, predicted,
        "the diff's figure is what the delta fetched"
    );
    let share = fetched as f64 / size as f64;
    println!(
        "delta fetch: {fetched} of {size} bytes ({:.1}%) in {} requests",
        100.0 * share,
        seen.lock().unwrap().len()
    );
    assert!(share <= 0.05, "fetched {:.1}% of the bundle", 100.0 * share);
    assert_eq!(h.current(), Some(h.id_of(&b)));
    assert_eq!(h.ctl(&["verify"]).code, 0);
    // A server without Range support still works: the whole bundle is fetched.
    let c = h.bundle("1.2", 3, &Tree::demo("c"));
    let (url_c, _) = serve(fs_err::read(&c).unwrap(), Mode::NoRanges);
    let out = h.ctl(&["activate", &url_c, "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["fetch"]["delta"], serde_json::Value::Null);
    assert_eq!(h.current(), Some(h.id_of(&c)));
}

#[test]
fn an_endless_range_answer_costs_only_what_was_asked_for() {
    let h = TestHost::new();
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    assert_eq!(
        h.ctl(&["activate", a.to_str().unwrap(), "--no-service"])
            .code,
        0
    );
    // With a release installed, a URL is tried as a delta: every Range answer is endless.
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    let (url, seen) = serve(fs_err::read(&b).unwrap(), Mode::EndlessRanges);
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(env!("CARGO_BIN_EXE_comfyctl"))
        .arg("--root")
        .arg(&h.root)
        .args(["activate", &url, "--no-service", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The delta was given up after 17 bytes of the footer's answer, and the whole bundle fetched.
    assert!(stderr.contains("asked for 16 bytes"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["fetch"]["delta"], serde_json::Value::Null);
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "one range request, one full download"
    );
    let rss: u64 = stderr
        .rsplit("maxrss_kb=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rss < 200 << 10, "peak RSS {rss} KiB");
    assert_eq!(h.current(), Some(h.id_of(&b)));
}

#[test]
fn a_stalled_download_stops_and_frees_the_lock() {
    let h = TestHost::new();
    h.config_line("stall_secs = 2");
    let b = h.bundle("1.0", 1, &Tree::demo("a"));
    let (url, _) = serve(fs_err::read(&b).unwrap(), Mode::Stall);
    let t0 = std::time::Instant::now();
    let out = h.ctl(&["activate", &url, "--no-service"]);
    let took = t0.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("stalled: nothing received for 2s after 1000 bytes"),
        "{}",
        out.stderr
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "the stalled download held on for {took:?}"
    );
    // The lock is free again: another command runs at once.
    assert_eq!(h.ctl(&["status"]).code, 0);
    assert!(h.current().is_none());
}

#[test]
fn a_stalled_download_never_holds_the_activation_lock() {
    let h = TestHost::new();
    h.config_line("stall_secs = 30");
    let a = h.bundle("1.0", 1, &Tree::demo("a"));
    let b = h.bundle("1.1", 2, &Tree::demo("b"));
    h.activate_ok(&a);
    h.activate_ok(&b);
    let c = h.bundle("1.2", 3, &Tree::demo("c"));
    let (url, _) = serve(fs_err::read(&c).unwrap(), Mode::Stall);
    // The server stalls the full download of c (a delta is tried first, then the whole file).
    let mut slow = h
        .command(&["activate", &url, "--no-service"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the download should still be stalled"
    );
    // Meanwhile the operator rolls back: at once, not after the stall (lock_wait_secs = 2).
    let t0 = std::time::Instant::now();
    let out = h.ctl(&["rollback", "--no-service"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(h.current(), Some(h.id_of(&a)));
    let _ = slow.kill();
    let _ = slow.wait();
}
