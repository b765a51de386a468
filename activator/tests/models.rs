//! Model files a release declares: `comfyctl models` says which the host's model store lacks,
//! `--fetch` downloads them from a local server (resuming a stalled download, refusing wrong
//! bytes, never replacing a file of the same name, never writing through a link), and
//! activation warns, or refuses by policy, while one is missing.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// The requests a server saw: path and the start of its Range, if any.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `files` (path -> bytes) with Range support. The first request for a path in `stall`
/// sends half the body and then nothing; every request's Range header is recorded.
fn serve(files: HashMap<String, Vec<u8>>, stall: &'static [&'static str]) -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut range = None;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().trim_end_matches('-').to_owned());
                }
            }
            let stalled_before = log.lock().unwrap().iter().any(|(p, _)| *p == path);
            log.lock().unwrap().push((path.clone(), range.clone()));
            let Some(body) = files.get(path.trim_start_matches("/models/")) else {
                let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            };
            let from: usize = range.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
            let part = &body[from.min(body.len())..];
            let head = if from > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                )
            };
            let _ = s.write_all(head.as_bytes());
            if !stalled_before && stall.iter().any(|x| path.ends_with(x)) {
                let _ = s.write_all(&part[..part.len() / 2]);
                let _ = s.flush();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(30));
                    drop(s);
                });
                continue;
            }
            let _ = s.write_all(part);
        }
    });
    (port, seen)
}

fn model(path: &str, body: &[u8]) -> bundle::ModelFile {
    bundle::ModelFile {
        path: path.into(),
        sha256: hex::encode(Sha256::digest(body)),
        size: body.len() as u64,
        url: format!("https://models.invalid/{path}"),
    }
}

#[test]
fn declared_models_are_checked_fetched_resumed_and_never_replace_a_file() {
    let h = TestHost::new();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let small = b"detector weights".to_vec();
    let theirs = b"somebody's own c.bin".to_vec();
    let mut t = Tree::demo("a");
    t.models = vec![
        model("ultralytics/bbox/big.pt", &big),
        model("small.safetensors", &small),
        model("other/c.bin", b"the release's c.bin"),
        model("lying/d.bin", b"what d.bin should hold"),
        model("linked/e.bin", b"e"),
    ];
    let files = HashMap::from([
        ("ultralytics/bbox/big.pt".to_owned(), big.clone()),
        ("small.safetensors".to_owned(), small.clone()),
        ("other/c.bin".to_owned(), b"the release's c.bin".to_vec()),
        ("lying/d.bin".to_owned(), b"WHAT D.BIN SHOULD HOLD".to_vec()),
        ("linked/e.bin".to_owned(), b"e".to_vec()),
    ]);
    let (port, seen) = serve(files, &["big.pt"]);
    h.config_line("stall_secs = 1");
    h.config_tail(&format!(
        "[service]\nuser = \"root\"\ngroup = \"root\"\n[access]\ngroup = \"root\"\n[models]\nbase_url = \"http://127.0.0.1:{port}/models\""
    ));
    assert_eq!(h.ctl(&["setup"]).code, 0);
    let store = h.install().join("data/models");
    // A file of the same name with other content, and a link a group member planted.
    fs_err::create_dir_all(store.join("other")).unwrap();
    fs_err::write(store.join("other/c.bin"), &theirs).unwrap();
    let outside = h.tmp.path().join("outside");
    fs_err::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, store.join("linked")).unwrap();

    // Activation warns (the default policy) and says how to get them.
    let b = h.bundle("1.0", 1, &t);
    let out = h.ctl(&["activate", b.to_str().unwrap(), "--no-service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["model_warnings"].as_array().unwrap().len(),
        5,
        "{}",
        out.stdout
    );

    let out = h.ctl(&["models", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let states = |o: &Out| -> Vec<String> {
        o.json()["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{} {}",
                    m["path"].as_str().unwrap(),
                    m["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        states(&out),
        [
            "ultralytics/bbox/big.pt missing",
            "small.safetensors missing",
            "other/c.bin different",
            "lying/d.bin missing",
            "linked/e.bin different",
        ]
    );

    // The first fetch stalls half-way through big.pt; the rest come, or are refused.
    let out = h.ctl(&["models", "--fetch", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v = out.json();
    let by = |p: &str| {
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["path"] == p)
            .unwrap()
            .clone()
    };
    assert!(
        by("ultralytics/bbox/big.pt")["detail"]
            .as_str()
            .unwrap()
            .contains("stalled"),
        "{v}"
    );
    assert_eq!(by("small.safetensors")["state"], "fetched");
    assert!(
        by("lying/d.bin")["detail"]
            .as_str()
            .unwrap()
            .contains("the release declares"),
        "{v}"
    );
    assert!(
        !store.join("lying/d.bin").exists(),
        "wrong bytes were put in place"
    );
    assert_eq!(
        fs_err::read(store.join("other/c.bin")).unwrap(),
        theirs,
        "a file was replaced"
    );
    assert_eq!(
        fs_err::read_dir(&outside).unwrap().count(),
        0,
        "written through a link"
    );
    assert_eq!(
        fs_err::read(store.join("small.safetensors")).unwrap(),
        small
    );

    // The second resumes where the stall left it.
    let out = h.ctl(&["models", "--fetch", "--json"]);
    assert!(
        store.join("ultralytics/bbox/big.pt").exists(),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        fs_err::read(store.join("ultralytics/bbox/big.pt")).unwrap(),
        big
    );
    let ranged = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, r)| p.ends_with("big.pt") && r.as_deref().is_some_and(|r| r != "0"))
        .count();
    assert_eq!(
        ranged,
        1,
        "the second download did not resume: {:?}",
        seen.lock().unwrap()
    );
    let out = h.ctl(&["models", "--json"]);
    let now = states(&out);
    assert!(
        now.contains(&"ultralytics/bbox/big.pt present".to_owned()),
        "{now:?}"
    );
    assert!(
        now.contains(&"small.safetensors present".to_owned()),
        "{now:?}"
    );
    assert!(h.install().join("state/model-hashes.json").exists());

    // With `missing_models = "fail"`, a release whose models are not all there is refused.
    fs_err::remove_file(store.join("linked")).unwrap();
    h.config_tail("[health]\nmissing_models = \"fail\"");
    let b2 = h.bundle("1.1", 2, &t);
    let out = h.ctl(&["activate", b2.to_str().unwrap(), "--no-service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("declares model files this host lacks"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("models/lying/d.bin"), "{}", out.stderr);
    assert_eq!(h.current(), Some(h.id_of(&b)));
    // Its dry run refuses the same way (one admission check for both).
    let dry = h.ctl(&[
        "activate",
        b2.to_str().unwrap(),
        "--no-service",
        "--dry-run",
    ]);
    assert_eq!(dry.code, 2, "{}", dry.stderr);
    assert_eq!(dry.stderr, out.stderr);
    // Only http(s) is fetched: a local path as base_url would be read and removed as a download.
    let mirror = h.tmp.path().join("mirror");
    fs_err::create_dir_all(mirror.join("lying")).unwrap();
    fs_err::write(mirror.join("lying/d.bin"), b"what d.bin should hold").unwrap();
    let cfg = h.root.join("etc/comfyui/comfyctl.toml");
    let text = fs_err::read_to_string(&cfg).unwrap();
    fs_err::write(
        &cfg,
        text.replace(
            &format!("http://127.0.0.1:{port}/models"),
            &mirror.display().to_string(),
        ),
    )
    .unwrap();
    let out = h.ctl(&["models", "--fetch", "--json"]);
    assert!(
        out.stdout.contains("is not an http(s) URL"),
        "{}",
        out.stdout
    );
    assert!(
        mirror.join("lying/d.bin").exists(),
        "the mirror's file was removed"
    );
    fs_err::write(&cfg, &text).unwrap();

    // A model store mapped to a share is opened without following a link on the way: whoever can
    // write above it could point it at a system directory.
    let share = h.tmp.path().join("share");
    fs_err::create_dir_all(share.join("real")).unwrap();
    std::os::unix::fs::symlink(share.join("real"), share.join("models")).unwrap();
    fs_err::remove_dir_all(&store).unwrap();
    std::os::unix::fs::symlink(share.join("models"), &store).unwrap();
    fs_err::write(
        &cfg,
        format!(
            "{text}[data]\nmodels = \"{}\"\n",
            share.join("models").display()
        ),
    )
    .unwrap();
    let out = h.ctl(&["models", "--fetch"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("without symbolic links"),
        "{}",
        out.stderr
    );
    assert_eq!(
        fs_err::read_dir(share.join("real")).unwrap().count(),
        0,
        "written through the link"
    );
}
