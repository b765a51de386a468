//! Packs a directory tree into a bundle, reading every file once: the thread that makes a frame
//! reads the bytes it holds, hashes them for the manifest (in file order, across threads) and
//! compresses them. The signed manifest can only be written once every file is hashed, yet it is
//! the first frame: its place is reserved at the start of the file (its size is known from the
//! scan to within a few bytes) and what it leaves unused is a zstd skippable frame that every
//! reader, stock zstd included, passes over.

use crate::digesting::InOrder;
use crate::index::{self, Frame, NO_ENTRY, PADDING_MAGIC};
use crate::layout::{first_frame, trusted_comment, MAX_FRAME_RAW};
use crate::manifest::{bundle_id, Entry, Kind, Limits, Manifest};
use crate::paths::{check_path, check_symlink_target};
use crate::reuse::{DigestCache, FileId, FrameRecord, Reuse};
use crate::tarfmt::{padding, push_header, HeaderKind, BLOCK};
use crate::{Error, Result};
use keys::{SecretKey, Signature};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Bytes hashed (files the digest cache did not know), read once for their frames.
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
    /// equal raw bytes, compressed the same way. `None` while a digest it needs is not known.
    fn key(
        &self,
        f: &Planned,
        scanned: &[Scanned],
        digests: &[Option<[u8; 32]>],
        mtime: u64,
        level: i32,
    ) -> Option<[u8; 32]> {
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
                    let d = digests[rec].ok_or(Error::Truncated(String::new()))?;
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
        })
        .ok()?;
        Some(h.finalize().into())
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

/// The open file is still what the scan saw: same size, same identity (checked again after each
/// piece of it is read: it neither grew, shrank nor changed meanwhile).
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

/// Digests found by one hashing thread: (scan number, SHA-256).
type Found = Vec<(usize, [u8; 32])>;

/// Hashes the files `todo` lists, each read whole, on `jobs` threads.
fn hash_first(
    root: &Path,
    scanned: &[Scanned],
    digests: &mut [Option<[u8; 32]>],
    todo: &[usize],
    jobs: usize,
) -> Result<()> {
    use std::io::Read as _;
    let next = AtomicUsize::new(0);
    let found: Vec<Result<Found>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| -> Result<Found> {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 1 << 20];
                    while let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let sc = &scanned[i];
                        let mut f = open_scanned(root, sc)?;
                        let mut h = Sha256::new();
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                        check_unchanged(&f, sc)?;
                        out.push((i, h.finalize().into()));
                    }
                    Ok(out)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(Error::Io(std::io::Error::other(
                        "a hashing thread panicked",
                    )))
                })
            })
            .collect()
    });
    for r in found {
        for (i, d) in r? {
            digests[i] = Some(d);
        }
    }
    Ok(())
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
    /// Keys of the frames whose files' digests were known before the pack: the frames it may copy.
    keys: &'a [Option<[u8; 32]>],
    /// The files read for their digests, hashed as their frames are made.
    hashing: &'a InOrder,
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
                    // After every piece: a large file's pieces are read on several threads in
                    // any order, so the last one read is not always the last piece.
                    check_unchanged(&file, sc)?;
                    self.hashing.feed(rec, at, &raw[start..])?;
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
        let copied = self.keys[no]
            .and_then(|k| self.reusable.get(&k))
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
/// list and limits. `progress` receives the content bytes done so far and their total, as each
/// frame is compressed or copied.
///
/// One pass over the tree: frames are made on every core and written in order after the place
/// reserved for frame 0; each file the digest cache does not know (by identity) is hashed from the
/// bytes read for its frames. Then the signed manifest is written in front. (When earlier bundles
/// are given and the unknown files are at most an eighth of the content, as in a rebuild, those
/// files are hashed first instead, so the frames holding them can be copied too.) A frame whose raw bytes
/// an earlier bundle in `opts.reuse` holds (the same key, known before the pack from cached
/// digests) is copied from it, its recorded SHA-256 checked, instead of compressed: the bytes are
/// what compressing would give, so reuse changes neither the bundle id nor the file.
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
    let (mut digests, mut todo) = known_digests(&scanned, &opts.reuse.digests);
    let hashed_bytes: u64 = todo.iter().map(|&i| file_size(&scanned[i])).sum();
    // A rebuild's changed files are few and just written: hashed first, so the frames around them
    // can still be copied from an earlier bundle. A tree the cache does not know is hashed as it
    // is packed: read once.
    if !opts.reuse.sources.is_empty() && hashed_bytes <= content / 8 {
        hash_first(root, &scanned, &mut digests, &todo, opts.jobs.max(1))?;
        todo.clear();
    }
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mtime = template.source_date_epoch;
    let frame_size = opts.frame_size.clamp(64 << 10, 16 << 20) as u64;
    let jobs = opts.jobs.max(1);
    let reserved = first_frame_reserve(&template, &scanned, key, opts.level)?;

    let hashing = InOrder::new(todo.iter().map(|&i| (i, file_size(&scanned[i]))));
    for &i in &todo {
        if file_size(&scanned[i]) == 0 {
            open_scanned(root, &scanned[i])?;
        }
    }
    drop(todo);
    let layout = layout(&scanned, mtime, frame_size);
    let early_keys: Vec<_> = layout
        .frames
        .iter()
        .map(|f| layout.key(f, &scanned, &digests, mtime, opts.level))
        .collect();
    let mut tmp = tempfile::NamedTempFile::new_in(&out_dir).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("creating a temporary bundle in {}: {e}", out_dir.display()),
        ))
    })?;
    tmp.as_file_mut().seek(SeekFrom::Start(reserved))?;
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
        keys: &early_keys,
        hashing: &hashing,
        reusable,
        sources,
        mtime,
        level: opts.level,
        progress: &|d| progress(d, content),
        packed: AtomicU64::new(0),
    };
    let (mut payload, mut records, reused) =
        write_payload(&shared, tmp.as_file_mut(), reserved, jobs)?;
    drop(shared);
    hashing.finish(&mut digests)?;
    for (rec, f) in records.iter_mut().zip(&layout.frames) {
        rec.key = layout
            .key(f, &scanned, &digests, mtime, opts.level)
            .ok_or_else(|| Error::Io(std::io::Error::other("a file's digest is missing")))?;
    }

    let (manifest, known) = manifest_of(template, &scanned, &digests)?;
    drop(digests);
    let (id, raw0) = first_frame_of(&manifest, key)?;
    let comp0 = compress_one(&raw0, opts.level)?;
    let raw0_len = raw0.len() as u64;
    drop(raw0);
    let (tmp, first_len) = put_first_frame(tmp, &comp0, reserved, &out_dir)?;
    let moved = |off: u64| off - reserved + first_len;
    for f in &mut payload {
        f.comp_offset = moved(f.comp_offset);
        f.raw_offset += raw0_len;
    }
    for r in &mut records {
        r.comp_offset = moved(r.comp_offset);
    }
    let mut frames = vec![Frame {
        comp_offset: 0,
        comp_len: first_len,
        raw_offset: 0,
        raw_len: raw0_len,
        first_entry: 0,
        last_entry: 1,
        start_entry: 0,
        start_offset: 0,
    }];
    frames.extend(payload);
    let mut tmp = tmp;
    let end = tmp.as_file_mut().seek(SeekFrom::End(0))?;
    if Some(end) != frames.last().map(|f| f.comp_offset + f.comp_len) {
        return Err(Error::Io(std::io::Error::other(
            "the payload does not end where its last frame does",
        )));
    }
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

/// The manifest of the scanned tree with these digests (one per entry; every file's known), and
/// the digests by file identity (the next pack's cache).
fn manifest_of(
    template: Manifest,
    scanned: &[Scanned],
    digests: &[Option<[u8; 32]>],
) -> Result<(Manifest, DigestCache)> {
    let mut files = Vec::with_capacity(scanned.len());
    let mut known = DigestCache::default();
    let mut content = 0;
    for (sc, d) in scanned.iter().zip(digests) {
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
                content += size;
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
    Ok((manifest, known))
}

/// The bundle id and frame 0's raw bytes: the canonical manifest and its signature.
fn first_frame_of(manifest: &Manifest, key: &SecretKey) -> Result<(String, Vec<u8>)> {
    let manifest_bytes = manifest.to_canonical_bytes()?;
    let id = bundle_id(&manifest_bytes);
    let sig = Signature::sign(
        key,
        &manifest_bytes,
        "signature from comfy-build secret key",
        &trusted_comment(manifest, &id),
    )
    .map_err(Error::Key)?;
    let sig_bytes = sig.to_file_string().into_bytes();
    let raw = first_frame(&manifest_bytes, &sig_bytes, manifest.source_date_epoch);
    Ok((id, raw))
}

/// Bytes to reserve for frame 0 before the files are hashed: frame 0 of the same manifest with
/// stand-in digests (as random as real ones, so it compresses alike), plus a margin and room for a
/// skippable frame's header. It depends on the scan alone, so reuse does not change the file.
fn first_frame_reserve(
    template: &Manifest,
    scanned: &[Scanned],
    key: &SecretKey,
    level: i32,
) -> Result<u64> {
    let stand_in: Vec<_> = scanned
        .iter()
        .map(|sc| Some(Sha256::digest(sc.path.as_bytes()).into()))
        .collect();
    let (manifest, _) = manifest_of(template.clone(), scanned, &stand_in)?;
    let (_, raw) = first_frame_of(&manifest, key)?;
    let comp = compress_one(&raw, level)?.len() as u64;
    Ok(comp + comp / 64 + 4096 + 8)
}

/// Writes frame 0 in the `reserved` bytes at the start of `tmp`, the rest a skippable frame;
/// returns the file and the length frame 0 takes in the index. Where it does not fit (the margin
/// was not enough), the payload is copied behind it into a new file.
fn put_first_frame(
    tmp: tempfile::NamedTempFile,
    comp0: &[u8],
    reserved: u64,
    out_dir: &Path,
) -> Result<(tempfile::NamedTempFile, u64)> {
    use std::os::unix::fs::FileExt as _;
    let len = comp0.len() as u64;
    if len == reserved || len + 8 <= reserved {
        tmp.as_file().write_all_at(comp0, 0)?;
        if len < reserved {
            let gap = u32::try_from(reserved - len - 8)
                .map_err(|_| Error::Io(std::io::Error::other("frame 0 reserve too large")))?;
            let mut skip = Vec::with_capacity(8);
            skip.extend_from_slice(&PADDING_MAGIC.to_le_bytes());
            skip.extend_from_slice(&gap.to_le_bytes());
            tmp.as_file().write_all_at(&skip, len)?;
        }
        return Ok((tmp, reserved));
    }
    tracing::debug!("frame 0 is {len} bytes, {reserved} were reserved: copying the payload");
    let mut moved = tempfile::NamedTempFile::new_in(out_dir)?;
    moved.write_all(comp0)?;
    let mut from = tmp.as_file();
    from.seek(SeekFrom::Start(reserved))?;
    std::io::copy(&mut from, moved.as_file_mut())?;
    Ok((moved, len))
}

/// Stops every wait of the pack when a frame thread panics: threads waiting to hash a piece
/// its frame held would otherwise wait for ever, and the pack never end.
struct StopOnPanic<'a>(&'a InOrder, &'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.1.store(true, Ordering::Relaxed);
            self.0.stop();
        }
    }
}

/// Makes the payload frames on `jobs` threads and writes them in order from `start`; returns
/// their index entries (content offsets of the payload alone), their records (keys filled in
/// later) and how many were copied.
fn write_payload(
    shared: &Frames<'_>,
    file: &mut std::fs::File,
    start: u64,
    jobs: usize,
) -> Result<(Vec<Frame>, Vec<FrameRecord>, usize)> {
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
    let failed = AtomicBool::new(false);
    let (done_tx, done_rx) = channel::<Result<Done>>();
    let layout = shared.layout;
    let count = layout.frames.len();
    std::thread::scope(|s| -> Result<_> {
        for _ in 0..jobs {
            let (token_rx, next, done_tx, failed) = (&token_rx, &next, done_tx.clone(), &failed);
            s.spawn(move || {
                let _stop = StopOnPanic(shared.hashing, failed);
                let mut cctx = match zstd::bulk::Compressor::new(shared.level)
                    .and_then(|mut c| c.include_checksum(true).map(|()| c))
                {
                    Ok(c) => c,
                    Err(e) => {
                        shared.hashing.stop();
                        let _ = done_tx.send(Err(e.into()));
                        return;
                    }
                };
                let mut raw = Vec::new();
                loop {
                    let Ok(Ok(comp)) = token_rx.lock().map(|rx| rx.recv()) else {
                        return;
                    };
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let no = next.fetch_add(1, Ordering::Relaxed);
                    if no >= count {
                        return;
                    }
                    let r = shared.make(&mut cctx, &mut raw, comp, no);
                    let bad = r.is_err();
                    if bad {
                        // Threads waiting to hash a piece this frame held would wait for ever.
                        failed.store(true, Ordering::Relaxed);
                        shared.hashing.stop();
                    }
                    if done_tx.send(r).is_err() || bad {
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
        let mut comp_off = start;
        let written = (|| -> Result<()> {
            for r in &done_rx {
                let d = r?;
                pending.insert(d.no, d);
                while let Some(d) = pending.remove(&frames.len()) {
                    file.write_all(&d.comp)?;
                    let mut f = layout.index_entry(&layout.frames[d.no]);
                    f.comp_offset = comp_off;
                    f.comp_len = d.comp.len() as u64;
                    records.push(FrameRecord {
                        key: [0; 32],
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
            Ok(())
        })();
        if written.is_err() {
            failed.store(true, Ordering::Relaxed);
            shared.hashing.stop();
        }
        drop(token_tx);
        written?;
        if frames.len() != count {
            return Err(Error::Io(std::io::Error::other(
                "a compression worker stopped early",
            )));
        }
        Ok((frames, records, reused))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as `pack` leaves it before frame 0: `reserved` bytes of room, then the payload.
    fn with_room(dir: &Path, reserved: u64, payload: &[u8]) -> tempfile::NamedTempFile {
        let mut tmp = tempfile::NamedTempFile::new_in(dir).unwrap();
        tmp.as_file_mut().seek(SeekFrom::Start(reserved)).unwrap();
        tmp.write_all(payload).unwrap();
        tmp
    }

    fn frame(raw: &[u8]) -> Vec<u8> {
        compress_one(raw, 3).unwrap()
    }

    #[test]
    fn frame_0_fills_its_room_with_a_skippable_frame_that_decompresses_away() {
        let dir = tempfile::tempdir().unwrap();
        let comp0 = frame(b"manifest and signature");
        let reserved = comp0.len() as u64 + 100;
        let tmp = with_room(dir.path(), reserved, b"PAYLOAD");
        let (tmp, len) = put_first_frame(tmp, &comp0, reserved, dir.path()).unwrap();
        assert_eq!(len, reserved);
        let bytes = fs_err::read(tmp.path()).unwrap();
        assert_eq!(&bytes[..comp0.len()], &comp0[..]);
        assert_eq!(&bytes[reserved as usize..], b"PAYLOAD");
        // The whole room decompresses to frame 0's raw bytes alone, as every reader reads it.
        let raw = zstd::bulk::Decompressor::new()
            .unwrap()
            .decompress(&bytes[..reserved as usize], 1 << 10)
            .unwrap();
        assert_eq!(raw, b"manifest and signature");
    }

    #[test]
    fn frame_0_larger_than_its_room_moves_the_payload_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let comp0 = frame(b"a manifest that grew");
        for reserved in [comp0.len() as u64 - 5, comp0.len() as u64 + 3] {
            let tmp = with_room(dir.path(), reserved, b"PAYLOAD");
            let (tmp, len) = put_first_frame(tmp, &comp0, reserved, dir.path()).unwrap();
            assert_eq!(len, comp0.len() as u64, "room {reserved}");
            let mut want = comp0.clone();
            want.extend_from_slice(b"PAYLOAD");
            assert_eq!(fs_err::read(tmp.path()).unwrap(), want);
        }
        let tmp = with_room(dir.path(), comp0.len() as u64, b"P");
        let (_, len) = put_first_frame(tmp, &comp0, comp0.len() as u64, dir.path()).unwrap();
        assert_eq!(len, comp0.len() as u64, "an exact fit needs no padding");
    }
}
