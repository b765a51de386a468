//! Packs a directory tree into a bundle, reading every file once: the same pass hashes it for the
//! manifest and feeds it into tar frames that worker threads compress in parallel. Payload frames are
//! spooled, then the signed manifest frame is written in front of them and the index after.

use crate::index::{self, Frame, NO_ENTRY};
use crate::layout::{first_frame, trusted_comment, MAX_FRAME_RAW};
use crate::manifest::{bundle_id, Entry, Kind, Limits, Manifest};
use crate::paths::{check_path, check_symlink_target};
use crate::reuse::{DigestCache, FileId, FrameRecord, Reuse};
use crate::tarfmt::{padding, push_header, HeaderKind, BLOCK};
use crate::{Error, Result};
use keys::{SecretKey, Signature};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;

/// Tuning for [`pack`].
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Frames are cut at the first entry boundary past this many raw bytes (and inside an entry at twice it).
    pub frame_size: usize,
    pub level: i32,
    pub jobs: usize,
    /// Digests and frames of earlier packs.
    pub reuse: Reuse,
}

impl Default for PackOptions {
    fn default() -> Self {
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            frame_size: 4 << 20,
            level: 3,
            jobs,
            reuse: Reuse::default(),
        }
    }
}

/// What [`pack`] wrote.
#[derive(Clone, Debug)]
pub struct Packed {
    pub id: String,
    pub path: PathBuf,
    pub manifest: Manifest,
    pub compressed_bytes: u64,
    pub frames: usize,
    /// Payload frames copied from an earlier bundle instead of compressed.
    pub reused_frames: usize,
    /// Bytes read to compute digests (files the digest cache did not know).
    pub hashed_bytes: u64,
    /// This pack's files' digests by identity: the next pack's digest cache.
    pub digests: DigestCache,
    /// The payload frames written, by key: what a later pack may copy from this bundle.
    pub frame_records: Vec<FrameRecord>,
}

/// A payload path found in the tree, before hashing.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub path: String,
    pub kind: ScanKind,
}

/// What [`scan`] found at a path.
#[derive(Clone, Debug)]
pub enum ScanKind {
    Dir,
    File {
        executable: bool,
        size: u64,
        /// Identity at scan time (`None` where the filesystem records no birth time).
        id: Option<FileId>,
    },
    Symlink {
        target: String,
    },
}

/// Lists a tree in bundle order (sorted bytes; a directory before its contents), refusing anything a
/// bundle cannot hold: special files, non-UTF-8 names, symlinks that would leave the root.
pub fn scan(root: &Path) -> Result<Vec<Scanned>> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| Error::Unpackable {
                path: entry.path().display().to_string(),
                reason: "file name is not UTF-8".into(),
            })?;
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let unpackable = |reason: String| Error::Unpackable {
                path: path.clone(),
                reason,
            };
            check_path(&path).map_err(|e| unpackable(e.to_string()))?;
            let meta = fs_err::symlink_metadata(entry.path())?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                ScanKind::Dir
            } else if ft.is_file() {
                if meta.permissions().mode() & 0o7000 != 0 {
                    return Err(unpackable("setuid, setgid or sticky bit set".into()));
                }
                ScanKind::File {
                    executable: meta.permissions().mode() & 0o111 != 0,
                    size: meta.len(),
                    id: FileId::of(&meta),
                }
            } else if ft.is_symlink() {
                let target = fs_err::read_link(entry.path())?;
                let target = target
                    .to_str()
                    .ok_or_else(|| unpackable("symlink target is not UTF-8".into()))?
                    .to_owned();
                check_symlink_target(&path, &target).map_err(|e| unpackable(e.to_string()))?;
                ScanKind::Symlink { target }
            } else {
                return Err(unpackable(
                    "not a regular file, directory or symlink".into(),
                ));
            };
            out.push(Scanned { path, kind });
        }
    }
    out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(out)
}

/// The payload's tar stream as records (one per entry: header, content, padding; then the
/// end-of-archive blocks) and its frames. Both follow from the scan alone (paths, kinds, sizes),
/// never from file contents, so two packs of trees that differ in a few files cut the rest of the
/// stream at the same places and the frames there can be reused.
struct Layout {
    /// Raw offset of each record in the payload stream, and the stream's end.
    offsets: Vec<u64>,
    frames: Vec<Planned>,
}

/// One payload frame: its raw byte range and the record holding its first byte.
#[derive(Clone, Copy, Debug)]
struct Planned {
    start: u64,
    end: u64,
    first: usize,
}

fn header_of(out: &mut Vec<u8>, sc: &Scanned, mtime: u64) {
    let kind = match &sc.kind {
        ScanKind::Dir => HeaderKind::Dir,
        ScanKind::Symlink { target } => HeaderKind::Symlink { target },
        ScanKind::File {
            executable, size, ..
        } => HeaderKind::File {
            mode: if *executable { 0o755 } else { 0o644 },
            size: *size,
        },
    };
    push_header(out, &sc.path, kind, mtime);
}

fn file_size(sc: &Scanned) -> u64 {
    match sc.kind {
        ScanKind::File { size, .. } => size,
        _ => 0,
    }
}

/// About one entry in eight ends a frame once it holds `frame_size / 4` bytes: chosen by the
/// path, so a changed file moves no boundary but its own frame's.
fn is_boundary(path: &str) -> bool {
    Sha256::digest(path.as_bytes())[0] & 7 == 0
}

/// Cuts the stream: a frame ends before an entry at a path boundary once it holds a quarter of
/// `frame_size`, before any entry once it holds `frame_size`, and inside a file's content at twice
/// it; a file of half `frame_size` or more starts a frame of its own (the small files around it
/// share frames, so a change to one costs a delta download only a small frame); the end-of-archive
/// blocks are a frame of their own (every reader reads the last frame).
fn layout(scanned: &[Scanned], mtime: u64, frame_size: u64) -> Layout {
    let (min, target, hard) = (frame_size / 4, frame_size, frame_size * 2);
    let mut offsets = Vec::with_capacity(scanned.len() + 2);
    let mut frames = Vec::new();
    let (mut pos, mut fstart, mut ffirst) = (0u64, 0u64, 0usize);
    let mut hdr = Vec::with_capacity(3 * BLOCK);
    for (i, sc) in scanned.iter().enumerate() {
        let size = file_size(sc);
        let held = pos - fstart;
        let cut = held > 0
            && (matches!(sc.kind, ScanKind::File { .. }) && size >= target / 2
                || held >= target
                || held >= min && is_boundary(&sc.path));
        if cut {
            frames.push(Planned {
                start: fstart,
                end: pos,
                first: ffirst,
            });
            (fstart, ffirst) = (pos, i);
        }
        offsets.push(pos);
        hdr.clear();
        header_of(&mut hdr, sc, mtime);
        let mut c = pos + hdr.len() as u64;
        let content_end = c + size;
        while c < content_end {
            if c - fstart >= hard {
                frames.push(Planned {
                    start: fstart,
                    end: c,
                    first: ffirst,
                });
                (fstart, ffirst) = (c, i);
            }
            c = content_end.min(fstart + hard);
        }
        pos = content_end + padding(size) as u64;
    }
    if pos > fstart {
        frames.push(Planned {
            start: fstart,
            end: pos,
            first: ffirst,
        });
    }
    offsets.push(pos);
    frames.push(Planned {
        start: pos,
        end: pos + 2 * BLOCK as u64,
        first: scanned.len(),
    });
    offsets.push(pos + 2 * BLOCK as u64);
    Layout { offsets, frames }
}

/// One piece of a frame's raw bytes.
enum Piece<'a> {
    /// Header bytes (or end-of-archive zeros), already in memory.
    Bytes(&'a [u8]),
    /// `len` bytes of record `rec`'s file from `at`.
    Content {
        rec: usize,
        at: u64,
        len: u64,
    },
    Zeros(u64),
}

impl Layout {
    /// Calls `each` with the pieces of frame `f`, in order.
    fn pieces(
        &self,
        f: &Planned,
        scanned: &[Scanned],
        mtime: u64,
        mut each: impl FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut hdr = Vec::with_capacity(3 * BLOCK);
        let mut r = f.first;
        while r + 1 < self.offsets.len() && self.offsets[r] < f.end {
            let (rs, re) = (self.offsets[r], self.offsets[r + 1]);
            let (a, b) = (rs.max(f.start), re.min(f.end));
            let Some(sc) = scanned.get(r) else {
                each(Piece::Zeros(b - a))?;
                r += 1;
                continue;
            };
            hdr.clear();
            header_of(&mut hdr, sc, mtime);
            let h = rs + hdr.len() as u64;
            let size = file_size(sc);
            if a < h {
                each(Piece::Bytes(
                    &hdr[(a - rs) as usize..(b.min(h) - rs) as usize],
                ))?;
            }
            let (ca, cb) = (a.max(h), b.min(h + size));
            if ca < cb {
                each(Piece::Content {
                    rec: r,
                    at: ca - h,
                    len: cb - ca,
                })?;
            }
            let pa = a.max(h + size);
            if pa < b {
                each(Piece::Zeros(b - pa))?;
            }
            r += 1;
        }
        Ok(())
    }

    /// Index entry fields of frame `f` (offsets are filled in by the writer).
    fn index_entry(&self, f: &Planned) -> Frame {
        let mut last = f.first;
        while self.offsets[last + 1] < f.end {
            last += 1;
        }
        let start = if self.offsets[f.first] == f.start {
            Some(f.first)
        } else if f.first < last {
            Some(f.first + 1)
        } else {
            None
        };
        let entry = |r: usize| r as u64 + 2;
        Frame {
            comp_offset: 0,
            comp_len: 0,
            raw_offset: f.start,
            raw_len: f.end - f.start,
            first_entry: entry(f.first),
            last_entry: entry(last),
            start_entry: start.map_or(NO_ENTRY, entry),
            start_offset: start.map_or(0, |r| self.offsets[r] - f.start),
        }
    }

    /// The key of frame `f`'s raw bytes, from its headers and its files' digests: equal keys mean
    /// equal raw bytes, compressed the same way.
    fn key(
        &self,
        f: &Planned,
        scanned: &[Scanned],
        digests: &[Option<[u8; 32]>],
        mtime: u64,
        level: i32,
    ) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(b"comfy-bundle frame key v1\0");
        h.update(level.to_le_bytes());
        h.update(zstd::zstd_safe::version_number().to_le_bytes());
        h.update((f.end - f.start).to_le_bytes());
        self.pieces(f, scanned, mtime, |p| {
            match p {
                Piece::Bytes(b) => {
                    h.update(b"H");
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
                Piece::Content { rec, at, len } => {
                    let d = digests[rec].ok_or_else(|| {
                        Error::Io(std::io::Error::other("a file's digest is missing"))
                    })?;
                    h.update(b"C");
                    h.update(d);
                    h.update(at.to_le_bytes());
                    h.update(len.to_le_bytes());
                }
                Piece::Zeros(n) => {
                    h.update(b"Z");
                    h.update(n.to_le_bytes());
                }
            }
            Ok(())
        })?;
        Ok(h.finalize().into())
    }
}

fn changed(path: &Path, what: &str) -> Error {
    Error::Unpackable {
        path: path.display().to_string(),
        reason: format!("file {what} while it was being packed"),
    }
}

/// Opens a scanned file, refusing one that is no longer what the scan saw.
fn open_scanned(root: &Path, sc: &Scanned) -> Result<fs_err::File> {
    if !matches!(sc.kind, ScanKind::File { .. }) {
        return Err(changed(&root.join(&sc.path), "changed kind"));
    }
    let f = fs_err::File::open(root.join(&sc.path))?;
    check_unchanged(&f, sc)?;
    Ok(f)
}

/// The open file is still what the scan saw: same size, same identity (checked again after
/// reading it to its end: it neither grew, shrank nor changed meanwhile).
fn check_unchanged(f: &fs_err::File, sc: &Scanned) -> Result<()> {
    let ScanKind::File { size, id, .. } = &sc.kind else {
        return Ok(());
    };
    let meta = f.metadata()?;
    if meta.len() > *size {
        return Err(changed(f.path(), "grew"));
    }
    if meta.len() < *size {
        return Err(changed(f.path(), "shrank"));
    }
    if id.is_some() && FileId::of(&meta) != *id {
        return Err(changed(f.path(), "changed"));
    }
    Ok(())
}

/// SHA-256 of every file the cache does not know, on `jobs` threads. Returns one digest per
/// scanned entry (files only) and the bytes read.
/// The digests `cache` knows (one slot per scanned entry) and the files it does not know.
fn known_digests(scanned: &[Scanned], cache: &DigestCache) -> (Vec<Option<[u8; 32]>>, Vec<usize>) {
    let mut digests = vec![None; scanned.len()];
    let mut todo = Vec::new();
    for (i, sc) in scanned.iter().enumerate() {
        if let ScanKind::File { id, .. } = &sc.kind {
            match id.and_then(|id| cache.get(&id)) {
                Some(d) => digests[i] = Some(d),
                None => todo.push(i),
            }
        }
    }
    (digests, todo)
}

/// Fills in the digests of the files `todo` lists, reading them on `jobs` threads. Returns the
/// bytes read.
fn digest_files(
    root: &Path,
    scanned: &[Scanned],
    digests: &mut [Option<[u8; 32]>],
    todo: &[usize],
    jobs: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let next = AtomicUsize::new(0);
    let read = AtomicU64::new(0);
    let found = Mutex::new(Vec::with_capacity(todo.len()));
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        let sc = &scanned[i];
                        let mut f = open_scanned(root, sc)?;
                        let mut h = Sha256::new();
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                            progress(read.fetch_add(n as u64, Ordering::Relaxed) + n as u64);
                        }
                        check_unchanged(&f, sc)?;
                        let mut found = found.lock().map_err(|_| poisoned())?;
                        found.push((i, <[u8; 32]>::from(h.finalize())));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| panicked("a hashing thread"))??;
        }
        Ok(())
    })?;
    for (i, d) in found.into_inner().map_err(|_| poisoned())? {
        digests[i] = Some(d);
    }
    Ok(read.into_inner())
}

fn poisoned() -> Error {
    Error::Io(std::io::Error::other("a packing thread failed"))
}

fn panicked(what: &str) -> Error {
    Error::Io(std::io::Error::other(format!("{what} panicked")))
}

/// A payload frame ready to write.
struct Done {
    no: usize,
    comp: Vec<u8>,
    comp_sha256: [u8; 32],
    reused: bool,
}

/// Everything the frame workers share.
struct Frames<'a> {
    root: &'a Path,
    scanned: &'a [Scanned],
    layout: &'a Layout,
    keys: &'a [[u8; 32]],
    /// Earlier bundles' frames by key: (source, record).
    reusable: HashMap<[u8; 32], (usize, FrameRecord)>,
    sources: Vec<(PathBuf, std::fs::File)>,
    mtime: u64,
    level: i32,
    progress: &'a (dyn Fn(u64) + Sync),
    packed: AtomicU64,
}

impl Frames<'_> {
    /// The compressed bytes of an earlier bundle's frame, when they are still what was recorded.
    fn copy(&self, src: usize, rec: &FrameRecord, comp: &mut Vec<u8>) -> bool {
        use std::os::unix::fs::FileExt as _;
        let (path, file) = &self.sources[src];
        let Ok(len) = usize::try_from(rec.comp_len) else {
            return false;
        };
        if len > 2 * MAX_FRAME_RAW as usize {
            return false;
        }
        comp.clear();
        comp.resize(len, 0);
        if let Err(e) = file.read_exact_at(comp, rec.comp_offset) {
            tracing::warn!("{}: {e}; compressing the frame instead", path.display());
            return false;
        }
        if <[u8; 32]>::from(Sha256::digest(&comp[..])) != rec.comp_sha256 {
            tracing::warn!(
                "{}: a frame changed since it was recorded; compressing it instead",
                path.display()
            );
            return false;
        }
        true
    }

    /// Fills `raw` (cleared first, its allocation kept) with frame `f`'s raw bytes.
    fn raw(&self, f: &Planned, raw: &mut Vec<u8>) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        raw.clear();
        self.layout.pieces(f, self.scanned, self.mtime, |p| {
            match p {
                Piece::Bytes(b) => raw.extend_from_slice(b),
                Piece::Zeros(n) => raw.resize(raw.len() + n as usize, 0),
                Piece::Content { rec, at, len } => {
                    let sc = &self.scanned[rec];
                    let file = open_scanned(self.root, sc)?;
                    let start = raw.len();
                    raw.resize(start + len as usize, 0);
                    file.file()
                        .read_exact_at(&mut raw[start..], at)
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => changed(file.path(), "shrank"),
                            _ => Error::Io(e),
                        })?;
                    if at + len == file_size(sc) {
                        check_unchanged(&file, sc)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Frame `no`, compressed into `comp` (a buffer from the pool) or copied there.
    fn make(
        &self,
        cctx: &mut zstd::bulk::Compressor<'_>,
        raw: &mut Vec<u8>,
        mut comp: Vec<u8>,
        no: usize,
    ) -> Result<Done> {
        let f = &self.layout.frames[no];
        let copied = self
            .reusable
            .get(&self.keys[no])
            .filter(|(src, rec)| self.copy(*src, rec, &mut comp))
            .map(|(_, rec)| rec.comp_sha256);
        let comp_sha256 = match copied {
            Some(sha) => sha,
            None => {
                self.raw(f, raw)?;
                comp.clear();
                comp.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                cctx.compress_to_buffer(&raw[..], &mut comp)?;
                Sha256::digest(&comp[..]).into()
            }
        };
        let n = f.end - f.start;
        (self.progress)(self.packed.fetch_add(n, Ordering::Relaxed) + n);
        Ok(Done {
            no,
            comp,
            comp_sha256,
            reused: copied.is_some(),
        })
    }
}

fn compress_one(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut cctx = zstd::bulk::Compressor::new(level)?;
    cctx.include_checksum(true)?;
    Ok(cctx.compress(raw)?)
}

/// Packs `root` into the bundle file `out`, using `template` for every manifest field except the file
/// list and limits. `progress` receives the bytes done so far and the total: first the files read
/// for their digests (those `opts.reuse` does not know), then every content byte as its frame is
/// compressed or copied.
///
/// Two passes: the files' SHA-256 (on every core; files the digest cache knows by identity are not
/// read), so the signed manifest and frame 0 are written first; then the payload frames, made on
/// every core and written in order straight after it. A frame whose raw bytes an earlier bundle in
/// `opts.reuse` holds (the same key) is copied from it, its recorded SHA-256 checked, instead of
/// compressed: the bytes are what compressing would give, so reuse changes neither the bundle id
/// nor the file.
pub fn pack(
    root: &Path,
    template: Manifest,
    key: &SecretKey,
    out: &Path,
    opts: &PackOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Packed> {
    let scanned = scan(root)?;
    let content: u64 = scanned.iter().map(file_size).sum();
    let (mut digests, todo) = known_digests(&scanned, &opts.reuse.digests);
    let to_hash: u64 = todo.iter().map(|&i| file_size(&scanned[i])).sum();
    let total = to_hash + content;
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mtime = template.source_date_epoch;
    let frame_size = opts.frame_size.clamp(64 << 10, 16 << 20) as u64;
    let jobs = opts.jobs.max(1);

    let hashed_bytes = digest_files(root, &scanned, &mut digests, &todo, jobs, &|d| {
        progress(d, total)
    })?;
    drop(todo);
    let mut files = Vec::with_capacity(scanned.len());
    let mut known = DigestCache::default();
    for (sc, d) in scanned.iter().zip(&digests) {
        let kind = match &sc.kind {
            ScanKind::Dir => Kind::Dir,
            ScanKind::Symlink { target } => Kind::Symlink {
                target: target.clone(),
            },
            ScanKind::File {
                executable,
                size,
                id,
            } => {
                let sha256 =
                    d.ok_or_else(|| Error::Io(std::io::Error::other("a file was not hashed")))?;
                if let Some(id) = id {
                    known.insert(*id, sha256);
                }
                Kind::File {
                    executable: *executable,
                    size: *size,
                    sha256,
                }
            }
        };
        files.push(Entry {
            path: sc.path.clone(),
            kind,
        });
    }
    let mut manifest = template;
    manifest.limits = Limits {
        files: files.len() as u64,
        bytes: content,
    };
    manifest.files = files;
    manifest.validate()?;
    let manifest_bytes = manifest.to_canonical_bytes()?;
    let id = bundle_id(&manifest_bytes);
    let sig = Signature::sign(
        key,
        &manifest_bytes,
        "signature from comfy-build secret key",
        &trusted_comment(&manifest, &id),
    )
    .map_err(Error::Key)?;
    let sig_bytes = sig.to_file_string().into_bytes();
    let raw0 = first_frame(&manifest_bytes, &sig_bytes, mtime);
    drop(manifest_bytes);
    let comp0 = compress_one(&raw0, opts.level)?;
    let raw0_len = raw0.len() as u64;
    drop(raw0);

    let mut tmp = tempfile::NamedTempFile::new_in(&out_dir).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("creating a temporary bundle in {}: {e}", out_dir.display()),
        ))
    })?;
    tmp.write_all(&comp0)?;
    let comp0_len = comp0.len() as u64;
    drop(comp0);

    let layout = layout(&scanned, mtime, frame_size);
    let keys = layout
        .frames
        .iter()
        .map(|f| layout.key(f, &scanned, &digests, mtime, opts.level))
        .collect::<Result<Vec<_>>>()?;
    drop(digests);
    let mut sources = Vec::new();
    let mut reusable = HashMap::new();
    for src in &opts.reuse.sources {
        let Some(file) = src.open() else {
            continue;
        };
        for rec in &src.frames {
            reusable.entry(rec.key).or_insert((sources.len(), *rec));
        }
        sources.push((src.path.clone(), file));
    }
    let shared = Frames {
        root,
        scanned: &scanned,
        layout: &layout,
        keys: &keys,
        reusable,
        sources,
        mtime,
        level: opts.level,
        progress: &|d| progress(hashed_bytes + d, total),
        packed: AtomicU64::new(0),
    };
    // A pool of compressed-frame buffers: a worker takes one before it makes a frame and the
    // writer gives it back once the frame is written, so at most this many frames are in flight
    // whatever order the workers finish in, and no frame-sized allocation is made twice.
    let in_flight = jobs + 2;
    let (token_tx, token_rx) = sync_channel::<Vec<u8>>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(Vec::new());
    }
    let token_rx = Mutex::new(token_rx);
    let next = AtomicUsize::new(0);
    let (done_tx, done_rx) = channel::<Result<Done>>();
    let count = layout.frames.len();
    let file = tmp.as_file_mut();
    let (payload, records, reused) = std::thread::scope(|s| -> Result<_> {
        for _ in 0..jobs {
            let (shared, token_rx, next, done_tx) = (&shared, &token_rx, &next, done_tx.clone());
            s.spawn(move || {
                let mut cctx = match zstd::bulk::Compressor::new(shared.level)
                    .and_then(|mut c| c.include_checksum(true).map(|()| c))
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = done_tx.send(Err(e.into()));
                        return;
                    }
                };
                let mut raw = Vec::new();
                loop {
                    let Ok(Ok(comp)) = token_rx.lock().map(|rx| rx.recv()) else {
                        return;
                    };
                    let no = next.fetch_add(1, Ordering::Relaxed);
                    if no >= count {
                        return;
                    }
                    let r = shared.make(&mut cctx, &mut raw, comp, no);
                    let failed = r.is_err();
                    if done_tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Written in order as they arrive; each write frees a slot.
        let mut pending = BTreeMap::new();
        let mut frames = Vec::with_capacity(count);
        let mut records = Vec::with_capacity(count);
        let mut reused = 0usize;
        let mut comp_off = comp0_len;
        for r in done_rx {
            let d = r?;
            pending.insert(d.no, d);
            while let Some(d) = pending.remove(&frames.len()) {
                file.write_all(&d.comp)?;
                let mut f = layout.index_entry(&layout.frames[d.no]);
                f.comp_offset = comp_off;
                f.comp_len = d.comp.len() as u64;
                f.raw_offset += raw0_len;
                records.push(FrameRecord {
                    key: keys[d.no],
                    comp_offset: comp_off,
                    comp_len: f.comp_len,
                    comp_sha256: d.comp_sha256,
                });
                reused += usize::from(d.reused);
                comp_off += f.comp_len;
                frames.push(f);
                let _ = token_tx.send(d.comp);
            }
        }
        drop(token_tx);
        if frames.len() != count {
            return Err(Error::Io(std::io::Error::other(
                "a compression worker stopped early",
            )));
        }
        Ok((frames, records, reused))
    })?;

    let mut frames = vec![Frame {
        comp_offset: 0,
        comp_len: comp0_len,
        raw_offset: 0,
        raw_len: raw0_len,
        first_entry: 0,
        last_entry: 1,
        start_entry: 0,
        start_offset: 0,
    }];
    frames.extend(payload);
    tmp.write_all(&index::encode(&frames))?;
    let compressed_bytes = tmp.as_file().stream_position()?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(out).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.error.kind(),
            format!("writing {}: {}", out.display(), e.error),
        ))
    })?;
    fs_err::File::open(&out_dir)?.sync_all()?;
    Ok(Packed {
        id,
        path: out.to_owned(),
        manifest,
        compressed_bytes,
        frames: frames.len(),
        reused_frames: reused,
        hashed_bytes,
        digests: known,
        frame_records: records,
    })
}
