//! Packs a directory tree into a bundle, reading every file once: the same pass hashes it for the
//! manifest and feeds it into tar frames that worker threads compress in parallel. Payload frames are
//! spooled, then the signed manifest frame is written in front of them and the index after.

use crate::index::{self, Frame, NO_ENTRY};
use crate::manifest::{bundle_id, Entry, Kind, Limits, Manifest};
use crate::paths::{check_path, check_symlink_target};
use crate::tarfmt::{padding, push_header, HeaderKind, BLOCK};
use crate::{Error, Result};
use keys::{SecretKey, Signature};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Path of the manifest inside the archive.
pub const MANIFEST_PATH: &str = ".bundle/manifest.toml";
/// Path of its minisign signature inside the archive.
pub const SIGNATURE_PATH: &str = ".bundle/manifest.toml.minisig";

/// Tuning for [`pack`].
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Frames are cut at the first entry boundary past this many raw bytes (and inside an entry at twice it).
    pub frame_size: usize,
    pub level: i32,
    pub jobs: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            frame_size: 4 << 20,
            level: 3,
            jobs,
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
    File { executable: bool, size: u64 },
    Symlink { target: String },
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

struct RawFrame {
    no: usize,
    raw: Vec<u8>,
    first_entry: u64,
    last_entry: u64,
    start: Option<(u64, u64)>,
}

struct CompFrame {
    meta: RawFrame,
    comp: Vec<u8>,
}

/// Accumulates tar bytes and cuts them into frames.
struct FrameCutter {
    buf: Vec<u8>,
    target: usize,
    hard: usize,
    no: usize,
    cur_entry: u64,
    first_entry: u64,
    start: Option<(u64, u64)>,
    tx: SyncSender<RawFrame>,
}

impl FrameCutter {
    fn begin_entry(&mut self, entry: u64) -> Result<()> {
        if self.buf.len() >= self.target {
            self.cut()?;
        }
        self.cur_entry = entry;
        if self.buf.is_empty() {
            self.first_entry = entry;
        }
        if self.start.is_none() {
            self.start = Some((entry, self.buf.len() as u64));
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::replace(&mut self.buf, Vec::with_capacity(self.hard));
        let frame = RawFrame {
            no: self.no,
            raw,
            first_entry: self.first_entry,
            last_entry: self.cur_entry,
            start: self.start.take(),
        };
        self.no += 1;
        self.first_entry = self.cur_entry;
        self.tx
            .send(frame)
            .map_err(|_| Error::Io(std::io::Error::other("compression worker stopped")))
    }

    /// Appends `size` bytes read from `file` straight into the frame buffer, hashing as it goes.
    fn copy_file(&mut self, file: &mut fs_err::File, size: u64, hasher: &mut Sha256) -> Result<()> {
        let mut remaining = size;
        while remaining > 0 {
            if self.buf.len() >= self.hard {
                self.cut()?;
            }
            let n = remaining
                .min((self.hard - self.buf.len()) as u64)
                .min(1 << 20) as usize;
            let start = self.buf.len();
            self.buf.resize(start + n, 0);
            file.read_exact(&mut self.buf[start..])
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Error::Unpackable {
                        path: file.path().display().to_string(),
                        reason: "file shrank while it was being packed".into(),
                    },
                    _ => Error::Io(e),
                })?;
            hasher.update(&self.buf[start..]);
            remaining -= n as u64;
        }
        if file.read(&mut [0u8; 1])? != 0 {
            return Err(Error::Unpackable {
                path: file.path().display().to_string(),
                reason: "file grew while it was being packed".into(),
            });
        }
        self.buf.resize(self.buf.len() + padding(size), 0);
        Ok(())
    }
}

fn compress_worker(
    rx: &Mutex<Receiver<RawFrame>>,
    done: &std::sync::mpsc::Sender<Result<CompFrame>>,
    level: i32,
) {
    let mut cctx = match zstd::bulk::Compressor::new(level) {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e.into()));
            return;
        }
    };
    let _ = cctx.include_checksum(true);
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(meta) = job else { return };
        let r = cctx
            .compress(&meta.raw)
            .map(|comp| CompFrame { meta, comp })
            .map_err(Error::from);
        if done.send(r).is_err() {
            return;
        }
    }
}

fn compress_one(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut cctx = zstd::bulk::Compressor::new(level)?;
    cctx.include_checksum(true)?;
    Ok(cctx.compress(raw)?)
}

/// Writes the frames in order into the spool, returning their index entries (offsets from payload start).
fn spool_writer(
    done: Receiver<Result<CompFrame>>,
    spool: &mut std::fs::File,
) -> Result<Vec<Frame>> {
    let mut pending = BTreeMap::new();
    let mut frames = Vec::new();
    let (mut comp_off, mut raw_off) = (0u64, 0u64);
    for r in done {
        let f = r?;
        pending.insert(f.meta.no, f);
        while let Some(f) = pending.remove(&frames.len()) {
            spool.write_all(&f.comp)?;
            let (start_entry, start_offset) = f.meta.start.unwrap_or((NO_ENTRY, 0));
            frames.push(Frame {
                comp_offset: comp_off,
                comp_len: f.comp.len() as u64,
                raw_offset: raw_off,
                raw_len: f.meta.raw.len() as u64,
                first_entry: f.meta.first_entry,
                last_entry: f.meta.last_entry,
                start_entry,
                start_offset,
            });
            comp_off += f.comp.len() as u64;
            raw_off += f.meta.raw.len() as u64;
        }
    }
    if !pending.is_empty() {
        return Err(Error::Io(std::io::Error::other(
            "a compression worker stopped early",
        )));
    }
    Ok(frames)
}

/// The raw bytes of frame 0: the manifest and signature entries, exactly as every bundle has them.
pub(crate) fn first_frame(manifest: &[u8], sig: &[u8], mtime: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(manifest.len() + sig.len() + 4096);
    for (path, bytes) in [(MANIFEST_PATH, manifest), (SIGNATURE_PATH, sig)] {
        push_header(
            &mut raw,
            path,
            HeaderKind::File {
                mode: 0o644,
                size: bytes.len() as u64,
            },
            mtime,
        );
        raw.extend_from_slice(bytes);
        raw.resize(raw.len() + padding(bytes.len() as u64), 0);
    }
    raw
}

/// True when `raw` is exactly [`first_frame`] of a manifest and signature of these lengths, the
/// bytes between the headers being whatever they are: compared in place, without building a copy.
pub(crate) fn is_first_frame(raw: &[u8], manifest_len: usize, sig_len: usize, mtime: u64) -> bool {
    let mut at = 0;
    for (path, len) in [(MANIFEST_PATH, manifest_len), (SIGNATURE_PATH, sig_len)] {
        let mut header = Vec::with_capacity(BLOCK);
        push_header(
            &mut header,
            path,
            HeaderKind::File {
                mode: 0o644,
                size: len as u64,
            },
            mtime,
        );
        if raw.get(at..at + BLOCK) != Some(&header[..]) {
            return false;
        }
        at += BLOCK + len;
        let pad = padding(len as u64);
        match raw.get(at..at + pad) {
            Some(p) if p.iter().all(|&b| b == 0) => at += pad,
            _ => return false,
        }
    }
    at == raw.len()
}

/// The trusted comment every bundle signature carries.
pub fn trusted_comment(m: &Manifest, id: &str) -> String {
    format!(
        "comfyui-bundle name={} version={} sequence={} target={} id={id}",
        m.name, m.version, m.sequence, m.target
    )
}

/// Packs `root` into the bundle file `out`, using `template` for every manifest field except the file
/// list and limits. `progress` receives the content bytes read so far and the total.
pub fn pack(
    root: &Path,
    template: Manifest,
    key: &SecretKey,
    out: &Path,
    opts: &PackOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Packed> {
    let scanned = scan(root)?;
    let total: u64 = scanned
        .iter()
        .map(|s| {
            if let ScanKind::File { size, .. } = s.kind {
                size
            } else {
                0
            }
        })
        .sum();
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut spool = tempfile::tempfile_in(&out_dir).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("creating a spool file in {}: {e}", out_dir.display()),
        ))
    })?;
    let mtime = template.source_date_epoch;
    let frame_size = opts.frame_size.clamp(64 << 10, 16 << 20);
    let jobs = opts.jobs.max(1);
    let (tx, rx) = sync_channel::<RawFrame>(jobs);
    let (done_tx, done_rx) = channel();
    let rx = Arc::new(Mutex::new(rx));
    let mut files = Vec::with_capacity(scanned.len());
    let payload_frames = std::thread::scope(|s| -> Result<Vec<Frame>> {
        for _ in 0..jobs {
            let (rx, done_tx) = (rx.clone(), done_tx.clone());
            s.spawn(move || compress_worker(&rx, &done_tx, opts.level));
        }
        drop(done_tx);
        let writer = s.spawn(|| spool_writer(done_rx, &mut spool));
        let mut cutter = FrameCutter {
            buf: Vec::with_capacity(frame_size * 2),
            target: frame_size,
            hard: frame_size * 2,
            no: 0,
            cur_entry: 2,
            first_entry: 2,
            start: None,
            tx,
        };
        let produced = (|| -> Result<()> {
            let mut done_bytes = 0u64;
            for (i, sc) in scanned.iter().enumerate() {
                // A large file starts a frame of its own, so the small files around it share frames
                // and a change to one of them costs a delta download only a small frame.
                if matches!(sc.kind, ScanKind::File { size, .. } if size as usize >= frame_size / 2)
                {
                    cutter.cut()?;
                }
                cutter.begin_entry(i as u64 + 2)?;
                let kind = match &sc.kind {
                    ScanKind::Dir => {
                        push_header(&mut cutter.buf, &sc.path, HeaderKind::Dir, mtime);
                        Kind::Dir
                    }
                    ScanKind::Symlink { target } => {
                        push_header(
                            &mut cutter.buf,
                            &sc.path,
                            HeaderKind::Symlink { target },
                            mtime,
                        );
                        Kind::Symlink {
                            target: target.clone(),
                        }
                    }
                    ScanKind::File { executable, size } => {
                        let mode = if *executable { 0o755 } else { 0o644 };
                        push_header(
                            &mut cutter.buf,
                            &sc.path,
                            HeaderKind::File { mode, size: *size },
                            mtime,
                        );
                        let mut f = fs_err::File::open(root.join(&sc.path))?;
                        let mut h = Sha256::new();
                        cutter.copy_file(&mut f, *size, &mut h)?;
                        done_bytes += size;
                        progress(done_bytes, total);
                        Kind::File {
                            executable: *executable,
                            size: *size,
                            sha256: h.finalize().into(),
                        }
                    }
                };
                files.push(Entry {
                    path: sc.path.clone(),
                    kind,
                });
            }
            // The end-of-archive blocks get a frame of their own: every reader reads the last frame.
            cutter.cut()?;
            cutter.begin_entry(scanned.len() as u64 + 2)?;
            cutter
                .buf
                .resize(cutter.buf.len() + 2 * crate::tarfmt::BLOCK, 0);
            cutter.cut()
        })();
        drop(cutter);
        let frames = writer
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("spool writer panicked")))?;
        produced?;
        frames
    })?;

    let mut manifest = template;
    manifest.limits = Limits {
        files: files.len() as u64,
        bytes: files.iter().map(Entry::size).sum(),
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
    let comp0 = compress_one(&raw0, opts.level)?;
    let mut frames = vec![Frame {
        comp_offset: 0,
        comp_len: comp0.len() as u64,
        raw_offset: 0,
        raw_len: raw0.len() as u64,
        first_entry: 0,
        last_entry: 1,
        start_entry: 0,
        start_offset: 0,
    }];
    frames.extend(payload_frames.into_iter().map(|mut f| {
        f.comp_offset += comp0.len() as u64;
        f.raw_offset += raw0.len() as u64;
        f
    }));

    let mut tmp = tempfile::NamedTempFile::new_in(&out_dir)?;
    tmp.write_all(&comp0)?;
    spool.rewind()?;
    std::io::copy(&mut spool, tmp.as_file_mut())?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frame_is_recognised_in_place() {
        let m = b"format = 1\n".repeat(100);
        let raw = first_frame(&m, b"sig", 7);
        assert!(is_first_frame(&raw, m.len(), 3, 7));
        // Another mtime, other lengths, a non-zero padding byte, a trailing block: each refused.
        assert!(!is_first_frame(&raw, m.len(), 3, 8));
        assert!(!is_first_frame(&raw, m.len() - 1, 3, 7));
        assert!(!is_first_frame(&raw, m.len(), 2, 7));
        let mut padded = raw.clone();
        padded[BLOCK + m.len()] = 1;
        assert!(!is_first_frame(&padded, m.len(), 3, 7));
        let mut longer = raw.clone();
        longer.extend_from_slice(&[0; BLOCK]);
        assert!(!is_first_frame(&longer, m.len(), 3, 7));
    }
}
