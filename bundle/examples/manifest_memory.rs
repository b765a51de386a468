//! Manifest memory: peak RSS of parsing a manifest of N entries (venv-shaped paths), ours beside a
//! whole-document `toml` parse into `Manifest` of the same bytes (how it was parsed before), each in its own process (GNU time).
//! Figures, not a timed test: `cargo run --release -p bundle --example manifest_memory -- [ENTRIES]`
//! (default: the largest a reader accepts, `MAX_ENTRIES`).
#![allow(clippy::unwrap_used)]

use bundle::{Entry, Kind, Manifest};
use std::path::Path;
use std::process::Command;

fn peak(me: &Path, args: &[&str]) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "TIME %e %M"])
        .arg(me)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {err}");
    let line = err.lines().rfind(|l| l.starts_with("TIME ")).unwrap();
    let mut it = line.split_whitespace().skip(1);
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

/// `n` entries shaped like a venv: a directory per 40 entries, file names of site-packages length.
fn manifest(n: usize) -> Manifest {
    let mut m = bundle::testing::template();
    m.name = "memory".into();
    let root = "python/lib/python3.12/site-packages";
    let mut files = Vec::with_capacity(n);
    for p in ["python", "python/lib", "python/lib/python3.12", root] {
        files.push(Entry {
            path: p.into(),
            kind: Kind::Dir,
        });
    }
    let mut d = 0;
    while files.len() < n {
        let dir = format!("{root}/package_{d:06}/submodule");
        files.push(Entry {
            path: format!("{root}/package_{d:06}"),
            kind: Kind::Dir,
        });
        files.push(Entry {
            path: dir.clone(),
            kind: Kind::Dir,
        });
        for f in 0..38 {
            if files.len() >= n {
                break;
            }
            files.push(Entry {
                path: format!("{dir}/generated_operator_{f:03}_native.py"),
                kind: Kind::File {
                    executable: false,
                    size: 4096 + f as u64,
                    sha256: [f as u8; 32],
                },
            });
        }
        d += 1;
    }
    m.limits.files = files.len() as u64;
    m.limits.bytes = files.iter().map(Entry::size).sum();
    m.files = files;
    m
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("write") => {
            let m = manifest(args[2].parse().unwrap());
            fs_err::write(&args[3], m.to_canonical_bytes().unwrap()).unwrap();
            return;
        }
        Some("parse") => {
            let bytes = fs_err::read(&args[2]).unwrap();
            let m = Manifest::parse(&bytes).unwrap();
            assert!(!m.files.is_empty());
            return;
        }
        Some("whole") => {
            let text = fs_err::read_to_string(&args[2]).unwrap();
            let m: Manifest = toml::from_str(&text).unwrap();
            assert!(!m.files.is_empty());
            return;
        }
        Some("none") => return,
        _ => {}
    }
    let n: usize = args
        .get(1)
        .map_or(bundle::MAX_ENTRIES, |a| a.parse().unwrap());
    let me = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifest.toml");
    let f = file.to_str().unwrap();
    peak(&me, &["write", &n.to_string(), f]);
    let size = fs_err::metadata(&file).unwrap().len();
    let (_, base_kb) = peak(&me, &["none"]);
    println!(
        "manifest: {n} entries, {:.1} MiB of text (process baseline {:.1} MiB)",
        size as f64 / 1048576.0,
        base_kb as f64 / 1024.0
    );
    println!("| parse | time | peak RSS | peak RSS / text |");
    println!("|---|---|---|---|");
    for (name, mode) in [
        (
            "Manifest::parse (header and entries one at a time)",
            "parse",
        ),
        (
            "`toml::from_str::<Manifest>` of the whole (before)",
            "whole",
        ),
    ] {
        let (t, kb) = peak(&me, &[mode, f]);
        println!(
            "| {name} | {t:.2} s | {:.0} MiB | {:.1}x |",
            kb as f64 / 1024.0,
            (kb * 1024) as f64 / size as f64
        );
    }
}
