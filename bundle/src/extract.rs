//! Extraction into a fresh staging directory. Every entry is created with `*at` calls relative to a
//! directory this extractor itself created (`O_NOFOLLOW`, `O_EXCL`), so nothing is ever written
//! through a symlink or outside staging. On any error the staging directory is removed.

use crate::manifest::{Entry, Kind};
use crate::paths::parent;
use crate::reader::Bundle;
use crate::stream::{stream, NullSink, Sink};
use crate::{Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, Mode, OFlags};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub jobs: usize,
    /// Strip every write bit (releases are immutable once in place).
    pub read_only: bool,
    /// `syncfs` the staging filesystem before returning.
    pub sync: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            jobs,
            read_only: false,
            sync: true,
        }
    }
}

/// What was extracted.
#[derive(Clone, Debug, Default)]
pub struct Extracted {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

const DIR_CACHE: usize = 512;

struct DirSink {
    root: OwnedFd,
    dirs: HashMap<String, OwnedFd>,
    made_dirs: Vec<String>,
    current: Option<std::fs::File>,
    read_only: bool,
    stats: Extracted,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn io_at(path: &str, e: rustix::io::Errno) -> Error {
    let err = std::io::Error::from(e);
    Error::Io(std::io::Error::new(
        err.kind(),
        format!("creating {path:?} in staging: {err}"),
    ))
}

impl DirSink {
    /// The directory fd for `dir`, walking from the root with `O_NOFOLLOW` on every component if it is
    /// not cached: a symlink anywhere on the way fails with ELOOP/ENOTDIR instead of being followed.
    fn dir_fd(&mut self, dir: &str) -> Result<rustix::fd::BorrowedFd<'_>> {
        if dir.is_empty() {
            return Ok(self.root.as_fd());
        }
        if !self.dirs.contains_key(dir) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mut fd =
                rfs::openat(&self.root, ".", flags, Mode::empty()).map_err(|e| io_at(dir, e))?;
            for c in dir.split('/') {
                fd = rfs::openat(&fd, c, flags, Mode::empty()).map_err(|_| Error::UnsafePath {
                    path: dir.to_owned(),
                    reason: "a parent is not a directory created by this bundle",
                })?;
            }
            if self.dirs.len() >= DIR_CACHE {
                self.dirs.clear();
            }
            self.dirs.insert(dir.to_owned(), fd);
        }
        Ok(self.dirs[dir].as_fd())
    }

    fn file_mode(&self, e: &Entry) -> Mode {
        let m = if self.read_only {
            e.mode() & !0o222
        } else {
            e.mode()
        };
        Mode::from_raw_mode(m)
    }
}

impl Sink for DirSink {
    fn dir(&mut self, e: &Entry) -> Result<()> {
        let (p, name) = split(&e.path);
        let fd = self.dir_fd(p)?;
        rfs::mkdirat(fd, name, Mode::from_raw_mode(0o700)).map_err(|err| io_at(&e.path, err))?;
        self.made_dirs.push(e.path.clone());
        self.stats.dirs += 1;
        Ok(())
    }

    fn symlink(&mut self, e: &Entry, target: &str) -> Result<()> {
        let (p, name) = split(&e.path);
        let fd = self.dir_fd(p)?;
        rfs::symlinkat(target, fd, name).map_err(|err| io_at(&e.path, err))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn file_begin(&mut self, e: &Entry) -> Result<()> {
        let (p, name) = split(&e.path);
        let fd = self.dir_fd(p)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let f = rfs::openat(fd, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|err| io_at(&e.path, err))?;
        self.current = Some(std::fs::File::from(f));
        Ok(())
    }

    fn file_data(&mut self, data: &[u8]) -> Result<()> {
        if let Some(f) = self.current.as_mut() {
            f.write_all(data)?;
            self.stats.bytes += data.len() as u64;
        }
        Ok(())
    }

    fn file_end(&mut self, e: &Entry) -> Result<()> {
        if let Some(f) = self.current.take() {
            rfs::fchmod(&f, self.file_mode(e)).map_err(|err| io_at(&e.path, err))?;
        }
        self.stats.files += 1;
        Ok(())
    }
}

impl Bundle {
    /// Checks every payload byte against the signed manifest without writing anything.
    pub fn verify_payload(&self, jobs: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        stream(self, jobs, &mut NullSink, progress)
    }

    /// Verifies and extracts the payload into `staging`, which must not exist yet. On failure nothing
    /// is left behind. Only bundles opened with [`Bundle::open`] (signature checked) may be extracted.
    pub fn extract(
        &self,
        staging: &Path,
        opts: &ExtractOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Extracted> {
        if self.signer.is_none() {
            return Err(Error::BadSignature(keys::Error::BadSignature(
                "bundle was opened without checking its signature",
            )));
        }
        fs_err::create_dir(staging)?;
        let r = self.extract_into(staging, opts, progress);
        if r.is_err() {
            // Staging was created above and holds only what this extraction wrote.
            let _ = make_writable_and_remove(staging);
        }
        r
    }

    fn extract_into(
        &self,
        staging: &Path,
        opts: &ExtractOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Extracted> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rfs::open(staging, flags, Mode::empty()).map_err(|e| Error::Io(e.into()))?;
        let mut sink = DirSink {
            root,
            dirs: HashMap::new(),
            made_dirs: Vec::new(),
            current: None,
            read_only: opts.read_only,
            stats: Extracted::default(),
        };
        stream(self, opts.jobs, &mut sink, progress)?;
        // Directory modes last, deepest first, so read-only directories are filled before they close.
        let dir_mode = Mode::from_raw_mode(if opts.read_only { 0o555 } else { 0o755 });
        let made = std::mem::take(&mut sink.made_dirs);
        sink.dirs.clear();
        for d in made.iter().rev() {
            let (p, name) = split(d);
            let fd = sink.dir_fd(p)?;
            rfs::chmodat(fd, name, dir_mode, rfs::AtFlags::empty()).map_err(|e| io_at(d, e))?;
        }
        if opts.sync {
            rustix::fs::syncfs(&sink.root).map_err(|e| Error::Io(e.into()))?;
        }
        debug_assert!(made.iter().all(|d| parent(d).len() < d.len()));
        Ok(sink.stats)
    }
}

/// Removes a tree even if its directories were made read-only.
pub fn make_writable_and_remove(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fn open_up(p: &Path) -> std::io::Result<()> {
        let meta = fs_err::symlink_metadata(p)?;
        if meta.is_dir() {
            fs_err::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
            for e in fs_err::read_dir(p)? {
                open_up(&e?.path())?;
            }
        }
        Ok(())
    }
    open_up(dir)?;
    fs_err::remove_dir_all(dir)
}

/// Kinds counted for reports.
pub fn count(files: &[Entry]) -> (u64, u64, u64) {
    files.iter().fold((0, 0, 0), |(f, d, s), e| match e.kind {
        Kind::File { .. } => (f + 1, d, s),
        Kind::Dir => (f, d + 1, s),
        Kind::Symlink { .. } => (f, d, s + 1),
    })
}
