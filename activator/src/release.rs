//! An installed release: `releases/<id>/` with its signed manifest kept in `.bundle/`. A release is
//! intact when its manifest still hashes to its id; `verify` re-hashes every byte against it.

use anyhow::{Context as _, Result};
use bundle::{Kind, Manifest};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

pub const MANIFEST: &str = ".bundle/manifest.toml";
pub const SIGNATURE: &str = ".bundle/manifest.toml.minisig";
/// Where `releases/<id>/node-state` points when the manifest has state paths: `data/node-state`.
pub const STATE_LINK: &str = "../../data/node-state";

/// Reads and checks a release's manifest: it must hash to the directory's name.
pub fn manifest(dir: &Path) -> Result<Manifest> {
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("release directory has no name")?;
    let bytes = fs_err::read(dir.join(MANIFEST))?;
    if bundle::bundle_id(&bytes) != id {
        anyhow::bail!(
            "{}: manifest does not hash to the release id (tampered or damaged)",
            dir.display()
        );
    }
    Ok(Manifest::parse(&bytes)?)
}

/// Files of the release at `dir` whose metadata says they were written since they were unpacked
/// (length, or the content-derived modification time: one `stat` per file, no reading), and
/// names in it that its manifest does not list (a file planted in a release, which a rollback
/// would otherwise serve). A root's in-place edit of one file of a release shows here, for
/// every release sharing that file.
pub fn changed_files(dir: &Path) -> Result<Vec<String>> {
    let m = manifest(dir)?;
    let mut out = Vec::new();
    for e in &m.files {
        if let bundle::Kind::File { size, sha256, .. } = &e.kind {
            let ok = fs_err::symlink_metadata(dir.join(&e.path))
                .is_ok_and(|meta| bundle::unchanged(&meta, *size, sha256));
            if !ok {
                out.push(e.path.clone());
            }
        }
    }
    out.extend(unlisted(dir, &m)?.into_iter().map(|(p, _)| p));
    Ok(out)
}

/// Names below the release at `dir` that its manifest does not list (its own `.bundle/` and the
/// `node-state` link aside), with what is wrong; a listed directory is walked, never a link.
fn unlisted(dir: &Path, m: &Manifest) -> Result<Vec<(String, String)>> {
    let listed: HashSet<&str> = m.files.iter().map(|e| e.path.as_str()).collect();
    let mut out = Vec::new();
    let mut walk = walkdir::WalkDir::new(dir).min_depth(1).into_iter();
    while let Some(ent) = walk.next() {
        let ent = ent?;
        let p = ent.path();
        let rel = p
            .strip_prefix(dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        let is_dir = ent.file_type().is_dir();
        let skip = if rel == ".bundle" {
            true
        } else if rel == bundle::STATE_DIR && !m.state.is_empty() {
            if fs_err::read_link(p).ok().as_deref() != Some(Path::new(STATE_LINK)) {
                out.push((rel, format!("should be a symlink to {STATE_LINK}")));
            }
            true
        } else if !listed.contains(rel.as_str()) {
            out.push((rel, "not listed in the manifest".into()));
            true
        } else {
            false
        };
        if skip && is_dir {
            walk.skip_current_dir();
        }
    }
    out.sort();
    Ok(out)
}

/// `changed_files` as a refusal naming the first few, or Ok when there are none.
pub fn refuse_changed(dir: &Path, id: &str, what: &str) -> Result<()> {
    let changed = changed_files(dir)?;
    if changed.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = changed
        .iter()
        .take(3)
        .map(|p| support::term_safe(p).into_owned())
        .collect();
    crate::host::refuse(format!(
        "{what}: {} file(s) of release {} changed since it was installed ({}{}); activate its \
         bundle again to restore it (`comfyctl verify {}` lists them)",
        changed.len(),
        support::short_id(id),
        shown.join(", "),
        if changed.len() > 3 { ", ..." } else { "" },
        support::short_id(id)
    ))
}

/// Cheap check used to skip re-unpacking and before switching: the signed manifest is in place and
/// hashes to the release id (no parse; `verify` re-hashes the contents).
pub fn is_intact(dir: &Path) -> bool {
    let Some(id) = dir.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    fs_err::read(dir.join(MANIFEST)).is_ok_and(|b| bundle::bundle_id(&b) == id)
}

/// One difference between a release on disk and its manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub problem: String,
}

fn sha256_file(p: &Path, buf: &mut [u8]) -> Result<[u8; 32]> {
    let mut f = fs_err::File::open(p)?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// What is wrong with one entry of an installed release.
fn check_entry(dir: &Path, e: &bundle::Entry, buf: &mut [u8]) -> Result<Vec<String>> {
    let p = dir.join(&e.path);
    let Ok(meta) = fs_err::symlink_metadata(&p) else {
        return Ok(vec!["missing".into()]);
    };
    let mut out = Vec::new();
    if meta.permissions().mode() & 0o222 != 0 && !meta.file_type().is_symlink() {
        out.push(format!(
            "writable (mode {:o})",
            meta.permissions().mode() & 0o7777
        ));
    }
    out.extend(match &e.kind {
        Kind::Dir if !meta.is_dir() => Some("should be a directory".into()),
        Kind::Symlink { target } => match fs_err::read_link(&p) {
            Ok(t) if t.as_os_str() == target.as_str() => None,
            _ => Some(format!("should be a symlink to {target}")),
        },
        Kind::File {
            size,
            sha256,
            executable,
        } => {
            if !meta.is_file() {
                Some("should be a regular file".into())
            } else if meta.len() != *size {
                Some(format!("size {} instead of {size}", meta.len()))
            } else if sha256_file(&p, buf)? != *sha256 {
                Some("content differs from the manifest".into())
            } else if (meta.permissions().mode() & 0o111 != 0) != *executable {
                Some("executable bit differs".into())
            } else {
                None
            }
        }
        Kind::Dir => None,
    });
    Ok(out)
}

/// Re-hashes every entry; also reports files the manifest does not list and writable modes.
pub fn verify(dir: &Path, trusted: Option<&keys::TrustedKeys>) -> Result<Vec<Problem>> {
    let m = manifest(dir)?;
    let mut problems = Vec::new();
    let mut bad = |path: &str, problem: String| {
        problems.push(Problem {
            path: path.to_owned(),
            problem,
        })
    };
    if let Some(t) = trusted {
        let bytes = fs_err::read(dir.join(MANIFEST))?;
        let sig = fs_err::read_to_string(dir.join(SIGNATURE))?;
        match keys::Signature::parse(&sig).and_then(|s| t.verify(&bytes, &s).map(|_| ())) {
            Ok(()) => {}
            Err(e) => bad(MANIFEST, format!("signature: {e}")),
        }
    }
    // Every entry on every core: the work is mostly hashing, files are taken one at a time
    // from a shared counter so one large file does not hold back a whole share.
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found: std::sync::Mutex<Vec<(usize, String)>> = std::sync::Mutex::new(Vec::new());
    let failed: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(e) = m.files.get(i) else { break };
                    match check_entry(dir, e, &mut buf) {
                        Ok(whys) if whys.is_empty() => {}
                        Ok(whys) => {
                            if let Ok(mut f) = found.lock() {
                                f.extend(whys.into_iter().map(|w| (i, w)));
                            }
                        }
                        Err(err) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(err);
                            }
                            next.store(usize::MAX / 2, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut found = found.into_inner().unwrap_or_default();
    // Stable: an entry's problems keep their order.
    found.sort_by_key(|(i, _)| *i);
    for (i, why) in found {
        bad(&m.files[i].path, why);
    }
    for (path, why) in unlisted(dir, &m)? {
        bad(&path, why);
    }
    Ok(problems)
}
