//! Opening a bundle: find the frame index, read the first frame (manifest and signature), check the
//! signature against the trusted keys, and only then parse the manifest. The file stays open: the
//! payload is later read from this same handle, so nothing can be swapped between verify and extract.

use crate::index::{self, Frame, PADDING_MAGIC};
use crate::layout::{is_first_frame, trusted_comment, MANIFEST_PATH, SIGNATURE_PATH};
use crate::manifest::{bundle_id, Manifest, MAX_MANIFEST_BYTES};
use crate::tarfmt::{checksum_ok, padding, BLOCK};
use crate::{Error, Result};
use keys::{KeyId, Signature, TrustedKeys};
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

const MAX_SIGNATURE_BYTES: u64 = 4096;

/// An open bundle whose manifest has been read (and, unless opened unverified, whose signature checked).
#[derive(Debug)]
pub struct Bundle {
    pub(crate) file: std::fs::File,
    pub path: PathBuf,
    pub frames: Vec<Frame>,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub signature: Signature,
    /// sha256 of the manifest bytes.
    pub id: String,
    /// The trusted key that signed it; `None` when opened without keys.
    pub signer: Option<KeyId>,
    pub file_len: u64,
}

pub(crate) fn read_frame(
    file: &std::fs::File,
    no: usize,
    f: &Frame,
    max_raw: u64,
) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    read_frame_into(
        file,
        no,
        f,
        max_raw,
        &mut zstd::bulk::Decompressor::new()?,
        &mut Vec::new(),
        &mut raw,
    )?;
    Ok(raw)
}

/// [`read_frame`] into buffers the caller keeps (their allocations reused frame after frame).
pub(crate) fn read_frame_into(
    file: &std::fs::File,
    no: usize,
    f: &Frame,
    max_raw: u64,
    dctx: &mut zstd::bulk::Decompressor<'_>,
    comp: &mut Vec<u8>,
    raw: &mut Vec<u8>,
) -> Result<()> {
    let corrupt = |detail: String| Error::CorruptFrame { frame: no, detail };
    if f.raw_len > max_raw {
        return Err(corrupt(format!(
            "claims {} raw bytes, more than the {max_raw} allowed",
            f.raw_len
        )));
    }
    if f.comp_len > max_raw + (1 << 20) {
        return Err(corrupt(format!("claims {} compressed bytes", f.comp_len)));
    }
    comp.clear();
    comp.resize(f.comp_len as usize, 0);
    file.read_exact_at(comp, f.comp_offset)
        .map_err(|e| Error::Truncated(format!("frame {no} cannot be read: {e}")))?;
    check_framing(no, comp)?;
    raw.clear();
    raw.reserve_exact(f.raw_len as usize);
    let n = dctx
        .decompress_to_buffer(&comp[..], raw)
        .map_err(|e| corrupt(format!("does not decompress within its stated size: {e}")))?;
    if n as u64 != f.raw_len || raw.len() != n {
        return Err(corrupt(format!(
            "decompressed to {n} bytes, index says {}",
            f.raw_len
        )));
    }
    Ok(())
}

/// Every byte of a frame's range is accounted for: it holds exactly one zstd frame, except frame 0,
/// which may be followed by one skippable frame of zeros (the writer's unused room for it).
fn check_framing(no: usize, comp: &[u8]) -> Result<()> {
    let corrupt = |detail: &str| Error::CorruptFrame {
        frame: no,
        detail: detail.into(),
    };
    let one = zstd::zstd_safe::find_frame_compressed_size(comp)
        .map_err(|_| corrupt("is not a zstd frame"))?;
    let rest = comp.get(one..).unwrap_or_default();
    if rest.is_empty() {
        return Ok(());
    }
    let padding = no == 0
        && rest.len() >= 8
        && rest[..4] == PADDING_MAGIC.to_le_bytes()
        && u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize == rest.len() - 8
        && rest[8..].iter().all(|&b| b == 0);
    if padding {
        Ok(())
    } else {
        Err(corrupt("holds bytes after its zstd frame"))
    }
}

/// Reads one `.bundle/` file entry from the first frame.
fn bundle_entry(raw: &[u8], pos: &mut usize, want: &str, max: u64) -> Result<Range<usize>> {
    let bad = |d: &str| Error::NotABundle(format!("{want}: {d}"));
    let block: &[u8; BLOCK] = raw
        .get(*pos..*pos + BLOCK)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("missing"))?;
    if !checksum_ok(block) {
        return Err(bad("corrupt tar header"));
    }
    let h = tar::Header::from_byte_slice(block);
    if h.entry_type() != tar::EntryType::Regular || h.path_bytes().as_ref() != want.as_bytes() {
        return Err(bad("not the expected first entries"));
    }
    let size = h.entry_size().map_err(|_| bad("bad size"))?;
    if size > max {
        return Err(Error::LimitExceeded(format!(
            "{want} is {size} bytes, more than the {max} allowed"
        )));
    }
    let start = *pos + BLOCK;
    let end = start + size as usize;
    if raw.len() < end {
        return Err(bad("cut short"));
    }
    *pos = end + padding(size);
    Ok(start..end)
}

impl Bundle {
    /// Opens and verifies: the signature must come from a key in `trusted` before the manifest is parsed.
    pub fn open(path: &Path, trusted: &TrustedKeys) -> Result<Self> {
        Self::open_inner(path, Some(trusted))
    }

    /// Opens without checking the signature (for `inspect`). Never extract from such a bundle.
    pub fn open_unverified(path: &Path) -> Result<Self> {
        Self::open_inner(path, None)
    }

    fn open_inner(path: &Path, trusted: Option<&TrustedKeys>) -> Result<Self> {
        let file = fs_err::File::open(path)?.into_parts().0;
        let file_len = file.metadata()?.len();
        if file_len < 16 {
            return Err(Error::Truncated(format!(
                "{} is only {file_len} bytes",
                path.display()
            )));
        }
        let mut footer = [0u8; 16];
        file.read_exact_at(&mut footer, file_len - 16)?;
        let idx_len = index::frame_len_from_footer(&footer)?;
        if idx_len > file_len {
            return Err(Error::Truncated(
                "frame index is longer than the file".into(),
            ));
        }
        let mut idx = vec![0u8; idx_len as usize];
        file.read_exact_at(&mut idx, file_len - idx_len)?;
        let frames = index::decode(&idx, file_len - idx_len)?;
        let f0 = frames[0];
        if f0.first_entry != 0 || f0.last_entry != 1 || f0.start_entry != 0 || f0.start_offset != 0
        {
            return Err(Error::NotABundle(
                "the first frame must hold exactly the manifest and signature".into(),
            ));
        }
        let mut raw0 = read_frame(
            &file,
            0,
            &f0,
            MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 4 * BLOCK as u64,
        )?;
        let mut pos = 0;
        let m_range = bundle_entry(&raw0, &mut pos, MANIFEST_PATH, MAX_MANIFEST_BYTES)?;
        let s_range = bundle_entry(&raw0, &mut pos, SIGNATURE_PATH, MAX_SIGNATURE_BYTES)?;
        let sig_bytes = raw0[s_range.clone()].to_vec();
        let manifest_bytes = &raw0[m_range.clone()];
        if pos != raw0.len() {
            return Err(Error::NotABundle(
                "unexpected bytes after the signature in the first frame".into(),
            ));
        }
        let sig_text = std::str::from_utf8(&sig_bytes)
            .map_err(|_| Error::NotABundle("signature is not UTF-8".into()))?;
        let signature = Signature::parse(sig_text).map_err(Error::from_keys)?;
        let signer = match trusted {
            Some(t) => Some(
                t.verify(manifest_bytes, &signature)
                    .map_err(Error::from_keys)?
                    .id,
            ),
            None => None,
        };
        let manifest = Manifest::parse(manifest_bytes)?;
        let id = bundle_id(manifest_bytes);
        if signature.trusted_comment != trusted_comment(&manifest, &id) {
            return Err(Error::BadManifest(
                "the signature's trusted comment names a different bundle".into(),
            ));
        }
        // The manifest fixes the header mtime: now the first frame must be exactly what our writer makes.
        if !is_first_frame(
            &raw0,
            m_range.len(),
            s_range.len(),
            manifest.source_date_epoch,
        ) {
            return Err(Error::NotABundle(
                "manifest or signature tar headers are not canonical".into(),
            ));
        }
        // The frame's buffer becomes the manifest's, without a second copy of it.
        raw0.truncate(m_range.end);
        raw0.drain(..m_range.start);
        let manifest_bytes = raw0;
        let path = path.to_owned();
        Ok(Self {
            file,
            path,
            frames,
            manifest_bytes,
            manifest,
            signature,
            id,
            signer,
            file_len,
        })
    }

    /// Payload content bytes (sum of file sizes).
    pub fn payload_bytes(&self) -> u64 {
        self.manifest.total_bytes()
    }
}
