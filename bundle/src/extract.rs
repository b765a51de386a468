//! Extraction into a fresh staging directory. Every entry is created with `*at` calls relative to a
//! directory this extractor itself created (`O_NOFOLLOW`, `O_EXCL`), so nothing is ever written
//! through a symlink or outside staging. On any error the staging directory is removed.

use crate::manifest::{Entry, Kind};
use crate::paths::parent;
use crate::reader::Bundle;
use crate::stream::{stream, FileOut, NullSink, Sink};
use crate::{Error, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, Mode, OFlags};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

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
    /// Content bytes written from the bundle.
    pub bytes: u64,
    /// Payload frames read and decompressed.
    pub frames_read: usize,
    /// Indices (in the manifest's file list) of files written from the bundle.
    pub written: Vec<usize>,
    /// Files hardlinked from the object store instead.
    pub reused: u64,
    pub reused_bytes: u64,
}

/// Verified file contents a host already has (the activator's content store). Objects are keyed by
/// content digest and executable bit, since hardlinks share one mode.
/// The modification time every extracted file gets, derived from its content: a write in place
/// (an editor, `>>`) sets it to now, so one `stat` tells a changed file or store object from an
/// intact one without reading it. Between 2000 and 2020, so no tool sees a time in the future;
/// and distinct for distinct contents, so web servers' mtime-based ETags change with the bytes.
pub fn content_mtime(sha256: &[u8; 32]) -> rustix::fs::Timespec {
    let word =
        |i: usize| u32::from_be_bytes([sha256[i], sha256[i + 1], sha256[i + 2], sha256[i + 3]]);
    rustix::fs::Timespec {
        tv_sec: 946_684_800 + i64::from(word(0) % 631_152_000),
        tv_nsec: (word(4) % 1_000_000_000).into(),
    }
}

/// True when a file's metadata still says it holds the bytes `sha256`/`size` it was extracted
/// with (same length, and the content-derived modification second).
pub fn unchanged(meta: &std::fs::Metadata, size: u64, sha256: &[u8; 32]) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    meta.is_file() && meta.len() == size && meta.mtime() == content_mtime(sha256).tv_sec
}

pub trait ObjectSource: Sync {
    /// Whether the object exists with its `size` bytes unchanged (a source may drop a changed
    /// object here: the extraction then writes the file from the bundle).
    fn contains(&self, sha256: &[u8; 32], executable: bool, size: u64) -> bool;
    /// Hardlinks the object to `name` in `dir`.
    fn link_into(
        &self,
        sha256: &[u8; 32],
        executable: bool,
        dir: BorrowedFd<'_>,
        name: &str,
    ) -> Result<()>;
}

struct DirSink<'s> {
    root: Arc<OwnedFd>,
    /// Open directories from the root down the last path used: (component, fd), shared with the
    /// writers of the files they hold.
    dirs: Vec<(String, Arc<OwnedFd>)>,
    made_dirs: Vec<String>,
    read_only: bool,
    store: Option<&'s dyn ObjectSource>,
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

impl DirSink<'_> {
    /// The directory fd for `dir`. Open directories along the last path used are kept as a stack
    /// (entries arrive sorted, so neighbours share it); missing components are opened one by one
    /// with `O_NOFOLLOW`: a symlink on the way fails with ELOOP/ENOTDIR instead of being followed.
    fn dir_fd(&mut self, dir: &str) -> Result<rustix::fd::BorrowedFd<'_>> {
        if dir.is_empty() {
            return Ok(self.root.as_fd());
        }
        let comps: Vec<&str> = dir.split('/').collect();
        let keep = self
            .dirs
            .iter()
            .zip(&comps)
            .take_while(|((name, _), c)| name == *c)
            .count();
        self.dirs.truncate(keep);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for c in &comps[keep..] {
            let parent = self
                .dirs
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let fd = rfs::openat(parent, *c, flags, Mode::empty()).map_err(|e| match e {
                // Not a directory (a symlink, a file): the bundle tried to write through it.
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT => {
                    Error::UnsafePath {
                        path: dir.to_owned(),
                        reason: "a parent is not a directory created by this bundle",
                    }
                }
                // Anything else is this host's trouble (out of file descriptors, I/O), said so.
                other => Error::Io(std::io::Error::new(
                    std::io::Error::from(other).kind(),
                    format!("opening directory {dir:?} of the release: {other}"),
                )),
            })?;
            self.dirs.push(((*c).to_owned(), Arc::new(fd)));
        }
        Ok(self
            .dirs
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
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

/// One file of the release, created (`O_EXCL`, no link followed) and written on a writer thread
/// in a directory this extraction made.
struct FileWriter {
    dir: Arc<OwnedFd>,
    name: String,
    path: String,
    file: Option<std::fs::File>,
    mode: Mode,
    mtime: Option<rfs::Timespec>,
}

impl FileWriter {
    fn open(&mut self) -> Result<std::fs::File> {
        if let Some(f) = self.file.take() {
            return Ok(f);
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let f = rfs::openat(&*self.dir, &self.name, flags, Mode::from_raw_mode(0o600))
            .map_err(|err| io_at(&self.path, err))?;
        Ok(std::fs::File::from(f))
    }
}

impl FileOut for FileWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let mut f = self.open()?;
        let r = f.write_all(data);
        self.file = Some(f);
        r.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("writing {:?} in staging: {e}", self.path),
            ))
        })
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let f = self.open()?;
        rfs::fchmod(&f, self.mode).map_err(|err| io_at(&self.path, err))?;
        if let Some(t) = self.mtime {
            rfs::futimens(
                &f,
                &rfs::Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )
            .map_err(|err| io_at(&self.path, err))?;
        }
        Ok(())
    }
}

impl Sink for DirSink<'_> {
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

    fn file(&mut self, e: &Entry) -> Result<Box<dyn FileOut>> {
        let (p, name) = split(&e.path);
        self.dir_fd(p)?;
        // The directory `dir_fd` just opened: the root's own files leave the stack as it was.
        let dir = match self.dirs.last() {
            Some((_, fd)) if !p.is_empty() => fd.clone(),
            _ => self.root.clone(),
        };
        self.stats.files += 1;
        self.stats.bytes += e.size();
        Ok(Box::new(FileWriter {
            dir,
            name: name.to_owned(),
            path: e.path.clone(),
            file: None,
            mode: self.file_mode(e),
            mtime: match &e.kind {
                Kind::File { sha256, .. } => Some(content_mtime(sha256)),
                _ => None,
            },
        }))
    }

    fn reuse_file(&mut self, e: &Entry) -> Result<()> {
        let (
            Some(store),
            Kind::File {
                sha256,
                executable,
                size,
            },
        ) = (self.store, &e.kind)
        else {
            return Err(Error::Io(std::io::Error::other(format!(
                "{:?}: no object store to reuse it from",
                e.path
            ))));
        };
        let (p, name) = split(&e.path);
        let fd = self.dir_fd(p)?;
        store.link_into(sha256, *executable, fd, name)?;
        self.stats.files += 1;
        self.stats.reused += 1;
        self.stats.reused_bytes += size;
        Ok(())
    }
}

impl Bundle {
    /// One flag per manifest entry: a file whose object `store` holds.
    fn reusable(&self, store: &dyn ObjectSource) -> Vec<bool> {
        // Directories and links are made from the manifest alone: they never need the stream.
        let has = |e: &Entry| match &e.kind {
            Kind::File {
                sha256,
                executable,
                size,
            } => store.contains(sha256, *executable, *size),
            Kind::Dir | Kind::Symlink { .. } => true,
        };
        self.manifest.files.iter().map(has).collect()
    }

    /// How many of the payload frames an extraction through `store` reads and decompresses.
    pub fn frames_to_read(&self, store: &dyn ObjectSource) -> usize {
        self.frames_needed(store).len()
    }

    /// The payload frames (by index) an extraction through `store` reads: a delta download
    /// fetches just these.
    pub fn frames_needed(&self, store: &dyn ObjectSource) -> Vec<usize> {
        crate::stream::needed_frames(&self.frames, &self.reusable(store))
    }

    /// Checks every payload byte against the signed manifest without writing anything.
    pub fn verify_payload(&self, jobs: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        stream(self, jobs, &[], &mut NullSink, progress)
    }

    /// Verifies and extracts the payload into `staging`, which must not exist yet. On failure nothing
    /// is left behind. Only bundles opened with [`Bundle::open`] (signature checked) may be extracted.
    pub fn extract(
        &self,
        staging: &Path,
        opts: &ExtractOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Extracted> {
        self.extract_with(staging, opts, None, progress)
    }

    /// Like [`Bundle::extract`], but files `store` already holds are hardlinked from it, and frames
    /// holding only such files are never read. Requires `read_only` (links share the store's modes).
    pub fn extract_with(
        &self,
        staging: &Path,
        opts: &ExtractOptions,
        store: Option<&dyn ObjectSource>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Extracted> {
        if self.signer.is_none() {
            return Err(Error::Unverified);
        }
        if store.is_some() && !opts.read_only {
            return Err(Error::Io(std::io::Error::other(
                "extraction through an object store must be read-only",
            )));
        }
        fs_err::create_dir(staging)?;
        let r = self.extract_into(staging, opts, store, progress);
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
        store: Option<&dyn ObjectSource>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Extracted> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = rfs::open(staging, flags, Mode::empty()).map_err(|e| Error::Io(e.into()))?;
        let mut sink = DirSink {
            root: Arc::new(root),
            dirs: Vec::new(),
            made_dirs: Vec::new(),
            read_only: opts.read_only,
            store,
            stats: Extracted::default(),
        };
        let reusable = store.map(|s| self.reusable(s)).unwrap_or_default();
        sink.stats.frames_read = crate::stream::needed_frames(&self.frames, &reusable).len();
        stream(self, opts.jobs, &reusable, &mut sink, progress)?;
        sink.stats.written = (self.manifest.files.iter().enumerate())
            .filter(|(i, e)| {
                matches!(e.kind, Kind::File { .. }) && !reusable.get(*i).copied().unwrap_or(false)
            })
            .map(|(i, _)| i)
            .collect();
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
