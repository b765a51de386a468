//! The content store (`store/`): every file of every release, once, named by sha256 and executable
//! bit (`ab/abcd…` or `ab/abcd….x`) and hardlinked into releases. An object is added only after the
//! release that brought it was verified and synced, so the store holds only verified bytes.

use anyhow::{Context as _, Result};
use bundle::{Kind, Manifest};
use rustix::fd::BorrowedFd;
use rustix::fs::{self as rfs, AtFlags};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

pub struct Store {
    dir: PathBuf,
    /// Object names, listed once with `getdents` (far cheaper than a stat per file of a release).
    index: std::sync::OnceLock<std::collections::HashSet<String>>,
    /// Objects found changed since they were stored, moved to `store/.quarantine/`.
    quarantined: std::sync::Mutex<Vec<String>>,
    /// Objects already found unchanged: an activation asks about each one more than once (the
    /// free-space check, then the extraction's plan), one `stat` is enough.
    checked: std::sync::Mutex<std::collections::HashSet<String>>,
    /// A dry run's view: changed objects count as missing but stay where they are.
    read_only: bool,
}

/// What gc removed from the store.
#[derive(Debug, Default, Clone, Copy)]
pub struct Swept {
    pub objects: u64,
    pub bytes: u64,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            index: std::sync::OnceLock::new(),
            quarantined: std::sync::Mutex::new(Vec::new()),
            checked: std::sync::Mutex::new(std::collections::HashSet::new()),
            read_only: false,
        }
    }

    /// A store that is only looked at (dry runs): nothing is moved, a changed object is missing.
    pub fn read_only(dir: PathBuf) -> Self {
        Self {
            read_only: true,
            ..Self::new(dir)
        }
    }

    fn list(&self) -> std::collections::HashSet<String> {
        let mut names = std::collections::HashSet::new();
        for p in fs_err::read_dir(&self.dir).into_iter().flatten().flatten() {
            let Ok(prefix) = p.file_name().into_string() else {
                continue;
            };
            for o in fs_err::read_dir(p.path()).into_iter().flatten().flatten() {
                if let Ok(n) = o.file_name().into_string() {
                    names.insert(format!("{prefix}/{n}"));
                }
            }
        }
        names
    }

    fn rel(sha: &[u8; 32], executable: bool) -> String {
        let h = hex::encode(sha);
        format!("{}/{h}{}", &h[..2], if executable { ".x" } else { "" })
    }

    fn path(&self, sha: &[u8; 32], executable: bool) -> PathBuf {
        self.dir.join(Self::rel(sha, executable))
    }

    /// Links the given files (manifest indices) of a verified release into the store; objects it
    /// already has are left alone.
    pub fn adopt(&self, release: &Path, manifest: &Manifest, written: &[usize]) -> Result<u64> {
        let mut added = 0;
        for e in written.iter().filter_map(|i| manifest.files.get(*i)) {
            if let Kind::File {
                sha256, executable, ..
            } = &e.kind
            {
                let obj = self.path(sha256, *executable);
                if obj.exists() {
                    continue;
                }
                if let Some(p) = obj.parent() {
                    fs_err::create_dir_all(p)?;
                }
                match std::fs::hard_link(release.join(&e.path), &obj) {
                    Ok(()) => added += 1,
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("linking {} into the store", e.path));
                    }
                }
            }
        }
        Ok(added)
    }

    /// Removes objects no release links to any more (link count 1).
    pub fn sweep(&self) -> Result<Swept> {
        let mut swept = Swept::default();
        let Ok(prefixes) = fs_err::read_dir(&self.dir) else {
            return Ok(swept);
        };
        for p in prefixes {
            let p = p?.path();
            if !p.is_dir() {
                continue;
            }
            for o in fs_err::read_dir(&p)? {
                let o = o?.path();
                let m = fs_err::symlink_metadata(&o)?;
                if m.is_file() && m.nlink() == 1 {
                    fs_err::remove_file(&o)?;
                    swept.objects += 1;
                    swept.bytes += m.len();
                }
            }
        }
        Ok(swept)
    }

    /// Object count and bytes.
    pub fn usage(&self) -> (u64, u64) {
        let mut n = (0, 0);
        let Ok(prefixes) = fs_err::read_dir(&self.dir) else {
            return n;
        };
        for p in prefixes.flatten() {
            for o in fs_err::read_dir(p.path()).into_iter().flatten().flatten() {
                if let Ok(m) = o.metadata() {
                    n.0 += 1;
                    n.1 += m.len();
                }
            }
        }
        n
    }
}

impl Store {
    /// Objects moved aside because their bytes changed since they were stored (this session).
    pub fn quarantined(&self) -> Vec<String> {
        self.quarantined
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default()
    }

    /// Moves a changed object out of the way: releases that link it keep their (changed) inode,
    /// `verify` reports them, and the next release that needs these bytes writes them afresh.
    fn quarantine(&self, rel: &str) {
        if self.read_only {
            if let Ok(mut v) = self.quarantined.lock() {
                v.push(rel.to_owned());
            }
            return;
        }
        let q = self.dir.join(".quarantine");
        let to = q.join(format!("{}-{}", rel.replace('/', "-"), crate::state::now()));
        let moved =
            fs_err::create_dir_all(&q).and_then(|()| fs_err::rename(self.dir.join(rel), &to));
        tracing::warn!(
            "store object {rel} changed since it was stored (someone wrote into a release file); {}",
            match moved {
                Ok(()) => format!("moved to {}, its bytes come from the bundle", to.display()),
                Err(e) => format!("could not move it aside ({e}); not reusing it"),
            }
        );
        if let Ok(mut v) = self.quarantined.lock() {
            v.push(rel.to_owned());
        }
    }
}

impl bundle::ObjectSource for Store {
    fn contains(&self, sha: &[u8; 32], executable: bool, size: u64) -> bool {
        let rel = Self::rel(sha, executable);
        if !self.index.get_or_init(|| self.list()).contains(&rel) {
            return false;
        }
        if self.quarantined.lock().is_ok_and(|q| q.contains(&rel)) {
            return false;
        }
        if self.checked.lock().is_ok_and(|c| c.contains(&rel)) {
            return true;
        }
        // One stat: an object written in place since it was stored is never reused.
        match fs_err::symlink_metadata(self.dir.join(&rel)) {
            Ok(m) if bundle::unchanged(&m, size, sha) => {
                if let Ok(mut c) = self.checked.lock() {
                    c.insert(rel);
                }
                true
            }
            Ok(_) => {
                self.quarantine(&rel);
                false
            }
            Err(_) => false,
        }
    }

    fn link_into(
        &self,
        sha: &[u8; 32],
        executable: bool,
        dir: BorrowedFd<'_>,
        name: &str,
    ) -> bundle::Result<()> {
        let obj = self.path(sha, executable);
        let io = |what: &str, e: std::io::Error| {
            bundle::Error::Io(std::io::Error::new(
                e.kind(),
                format!("{what} {} from the store: {e}", obj.display()),
            ))
        };
        match rfs::linkat(rfs::CWD, &obj, dir, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            // The filesystem's limit of links to one inode (about 65,000 on ext4: a release of
            // many identical files reaches it): this file gets a copy of its own.
            Err(rustix::io::Errno::MLINK) => {
                copy_object(&obj, dir, name).map_err(|e| io("copying", e))
            }
            Err(e) => Err(io("linking", e.into())),
        }
    }
}

/// A copy of store object `obj` as `name` in `dir`, with the object's mode and times (so it
/// passes the same one-stat check as a link would).
fn copy_object(obj: &Path, dir: BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let mut src = fs_err::File::open(obj)?;
    let meta = src.metadata()?;
    let fd = rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    rfs::fchmod(&dst, Mode::from_raw_mode(meta.mode() & 0o7777))?;
    let t = |s: i64, ns: i64| rfs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rfs::futimens(
        &dst,
        &rfs::Timestamps {
            last_access: t(meta.atime(), meta.atime_nsec()),
            last_modification: t(meta.mtime(), meta.mtime_nsec()),
        },
    )?;
    Ok(())
}
