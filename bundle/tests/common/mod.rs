//! Shared helpers for the bundle tests: a manifest template, entries with real digests, and a tree writer.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use bundle::{Entry, Kind, Limits, Manifest};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const MTIME: u64 = 1_735_689_600;

pub fn template() -> Manifest {
    Manifest {
        format: bundle::FORMAT_VERSION,
        name: "demo".into(),
        version: "1.0".into(),
        sequence: 1,
        target: "linux-x86_64-cpu".into(),
        created: bundle::rfc3339(MTIME),
        source_date_epoch: MTIME,
        mutable_dirs: vec![],
        provenance: Default::default(),
        launch: Default::default(),
        limits: Limits::default(),
        expected_nodes: Default::default(),
        preflight: vec![],
        host_libs: Vec::new(),
        workflows: Vec::new(),
        state: Vec::new(),
        models: Vec::new(),
        files: vec![],
    }
}

pub fn with_files(files: Vec<Entry>) -> Manifest {
    let mut m = template();
    m.limits = Limits {
        files: files.len() as u64,
        bytes: files.iter().map(Entry::size).sum(),
    };
    m.files = files;
    m
}

pub fn dir(p: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::Dir,
    }
}

pub fn file(p: &str, content: &[u8]) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::File {
            executable: false,
            size: content.len() as u64,
            sha256: Sha256::digest(content).into(),
        },
    }
}

pub fn link(p: &str, t: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: Kind::Symlink { target: t.into() },
    }
}

/// Lists a tree as (path, kind, mode, content or link target), for comparing two trees.
pub fn snapshot(root: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".bundle" || rel.starts_with(".bundle/") {
                continue;
            }
            let m = fs_err::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                stack.push(p.clone());
                out.push((rel, "dir".into(), mode, vec![]));
            } else if m.file_type().is_symlink() {
                out.push((
                    rel,
                    "link".into(),
                    0,
                    fs_err::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else {
                out.push((rel, "file".into(), mode, fs_err::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
