//! What a rebuild's pack can take from earlier packs instead of redoing: the SHA-256 of files it
//! already read (by file identity), and compressed frames of an earlier bundle whose raw bytes are
//! the same (by a key computed from tar headers and file digests, so no file is read to find it).
//! Both are kept as small text files by the caller (the builder keeps them in its cache).

use crate::{Error, Result};
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// What identifies a file's content without reading it: device, inode, birth time (a recycled
/// inode is born again), size and modification time. Files without a birth time (filesystems that
/// do not record one) have no identity and are always read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    dev: u64,
    ino: u64,
    born_ns: u128,
    mtime_ns: i128,
    size: u64,
}

impl FileId {
    /// The identity of the file `meta` describes, when its filesystem records a birth time.
    pub fn of(meta: &std::fs::Metadata) -> Option<FileId> {
        let born = meta.created().ok()?;
        let born_ns = born.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            born_ns,
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            size: meta.len(),
        })
    }

    fn to_line(self) -> String {
        format!(
            "{} {} {} {} {}",
            self.dev, self.ino, self.born_ns, self.mtime_ns, self.size
        )
    }

    fn parse(words: &mut std::str::SplitAsciiWhitespace<'_>) -> Option<FileId> {
        Some(FileId {
            dev: words.next()?.parse().ok()?,
            ino: words.next()?.parse().ok()?,
            born_ns: words.next()?.parse().ok()?,
            mtime_ns: words.next()?.parse().ok()?,
            size: words.next()?.parse().ok()?,
        })
    }
}

const DIGESTS_MAGIC: &str = "comfy-bundle digests v1";
const FRAMES_MAGIC: &str = "comfy-bundle frames v1";

/// SHA-256 of files by identity.
#[derive(Clone, Debug, Default)]
pub struct DigestCache {
    map: HashMap<FileId, [u8; 32]>,
}

impl DigestCache {
    pub fn get(&self, id: &FileId) -> Option<[u8; 32]> {
        self.map.get(id).copied()
    }

    pub fn insert(&mut self, id: FileId, sha256: [u8; 32]) {
        self.map.insert(id, sha256);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Reads a cache written by [`DigestCache::save`]; a missing or unreadable file is an empty
    /// cache (it only saves work), a malformed line is skipped.
    pub fn load(path: &Path) -> DigestCache {
        let mut c = DigestCache::default();
        let Ok(text) = fs_err::read_to_string(path) else {
            return c;
        };
        let mut lines = text.lines();
        if lines.next() != Some(DIGESTS_MAGIC) {
            return c;
        }
        for line in lines {
            let mut w = line.split_ascii_whitespace();
            let Some(id) = FileId::parse(&mut w) else {
                continue;
            };
            if let Some(Ok(d)) = w.next().map(parse_digest) {
                c.map.insert(id, d);
            }
        }
        c
    }

    /// Writes the cache atomically (a temporary file renamed over `path`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = String::with_capacity(self.map.len() * 120);
        out.push_str(DIGESTS_MAGIC);
        out.push('\n');
        let mut lines: Vec<String> = self
            .map
            .iter()
            .map(|(id, d)| format!("{} {}\n", id.to_line(), hex::encode(d)))
            .collect();
        lines.sort();
        out.extend(lines);
        write_atomic(path, out.as_bytes())
    }
}

fn parse_digest(s: &str) -> std::result::Result<[u8; 32], ()> {
    let v = hex::decode(s).map_err(|_| ())?;
    v.try_into().map_err(|_| ())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| Error::Io(e.error))?;
    Ok(())
}

/// One compressed frame of a bundle, by the key of its raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    pub key: [u8; 32],
    pub comp_offset: u64,
    pub comp_len: u64,
    /// SHA-256 of the compressed bytes: checked when the frame is copied into another bundle.
    pub comp_sha256: [u8; 32],
}

/// The payload frames of one bundle file, which a later pack may copy. The bundle's identity is
/// recorded with them: a file replaced or rewritten since is not used.
#[derive(Clone, Debug)]
pub struct FrameSource {
    pub path: PathBuf,
    id: FileId,
    pub frames: Vec<FrameRecord>,
}

impl FrameSource {
    /// The frames `records` of the bundle at `path` as it is now.
    pub fn new(path: &Path, frames: Vec<FrameRecord>) -> Result<FrameSource> {
        let meta = fs_err::metadata(path)?;
        let id = FileId::of(&meta).ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "{}: the filesystem records no birth time",
                path.display()
            )))
        })?;
        Ok(FrameSource {
            path: path.to_owned(),
            id,
            frames,
        })
    }

    /// True when the bundle file is still the one these frames were recorded from.
    pub fn is_current(&self) -> bool {
        std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| FileId::of(&m))
            == Some(self.id)
    }

    /// The bundle file, opened, when it is still the one these frames were recorded from.
    pub fn open(&self) -> Option<std::fs::File> {
        let (file, _) = fs_err::File::open(&self.path).ok()?.into_parts();
        let id = FileId::of(&file.metadata().ok()?)?;
        (id == self.id).then_some(file)
    }

    /// Reads a table written by [`FrameSource::save`]; `None` when it is missing, malformed or its
    /// bundle has changed since.
    pub fn load(path: &Path) -> Option<FrameSource> {
        let text = fs_err::read_to_string(path).ok()?;
        let mut lines = text.lines();
        if lines.next()? != FRAMES_MAGIC {
            return None;
        }
        let mut w = lines.next()?.split_ascii_whitespace();
        if w.next()? != "bundle" {
            return None;
        }
        let id = FileId::parse(&mut w)?;
        let bundle = PathBuf::from(lines.next()?);
        let mut frames = Vec::new();
        for line in lines {
            let mut w = line.split_ascii_whitespace();
            frames.push(FrameRecord {
                key: parse_digest(w.next()?).ok()?,
                comp_offset: w.next()?.parse().ok()?,
                comp_len: w.next()?.parse().ok()?,
                comp_sha256: parse_digest(w.next()?).ok()?,
            });
        }
        let src = FrameSource {
            path: bundle,
            id,
            frames,
        };
        src.is_current().then_some(src)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bundle = self
            .path
            .to_str()
            .filter(|p| !p.contains('\n'))
            .ok_or_else(|| {
                Error::Io(std::io::Error::other(format!(
                    "{}: not a path a frame table can record",
                    self.path.display()
                )))
            })?;
        let mut out = format!("{FRAMES_MAGIC}\nbundle {}\n{bundle}\n", self.id.to_line());
        for f in &self.frames {
            out.push_str(&format!(
                "{} {} {} {}\n",
                hex::encode(f.key),
                f.comp_offset,
                f.comp_len,
                hex::encode(f.comp_sha256)
            ));
        }
        write_atomic(path, out.as_bytes())
    }
}

/// What a pack may take from earlier packs.
#[derive(Clone, Debug, Default)]
pub struct Reuse {
    pub digests: DigestCache,
    pub sources: Vec<FrameSource>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_frames_round_trip_and_a_replaced_bundle_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a");
        fs_err::write(&f, b"hello").unwrap();
        let id = FileId::of(&fs_err::metadata(&f).unwrap()).expect("birth time");
        let mut c = DigestCache::default();
        c.insert(id, [7; 32]);
        c.save(&d.path().join("digests")).unwrap();
        let back = DigestCache::load(&d.path().join("digests"));
        assert_eq!(back.get(&id), Some([7; 32]));
        assert!(DigestCache::load(&d.path().join("missing")).is_empty());

        let rec = FrameRecord {
            key: [1; 32],
            comp_offset: 10,
            comp_len: 20,
            comp_sha256: [2; 32],
        };
        let src = FrameSource::new(&f, vec![rec]).unwrap();
        src.save(&d.path().join("frames")).unwrap();
        let back = FrameSource::load(&d.path().join("frames")).expect("current");
        assert_eq!(back.frames, vec![rec]);
        assert_eq!(back.path, f);
        // The same path, another file (a new inode, or the same one rewritten): not used.
        fs_err::remove_file(&f).unwrap();
        fs_err::write(&f, b"other").unwrap();
        assert!(FrameSource::load(&d.path().join("frames")).is_none());
    }

    #[test]
    fn a_file_rewritten_in_place_changes_identity() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a");
        fs_err::write(&f, b"hello").unwrap();
        let a = FileId::of(&fs_err::metadata(&f).unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs_err::write(&f, b"HELLO").unwrap();
        let b = FileId::of(&fs_err::metadata(&f).unwrap()).unwrap();
        assert_ne!(a, b);
    }
}
