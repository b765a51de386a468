//! What the writer and the reader agree on beyond the tar and zstd formats: where the signed
//! manifest and its signature sit (frame 0, exactly these two entries), the trusted comment every
//! signature carries, and the largest frame. Both sides import it; neither imports the other.

use crate::manifest::Manifest;
use crate::tarfmt::{padding, push_header, HeaderKind, BLOCK};

/// Path of the manifest inside the archive.
pub const MANIFEST_PATH: &str = ".bundle/manifest.toml";
/// Path of its minisign signature inside the archive.
pub const SIGNATURE_PATH: &str = ".bundle/manifest.toml.minisig";

/// Largest raw frame a reader accepts after the first (our writer cuts at 32 MiB plus one header).
pub const MAX_FRAME_RAW: u64 = 48 << 20;
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
