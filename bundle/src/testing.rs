//! Building blocks for hostile bundles in tests and fuzzing: arbitrary manifests, signatures and tar
//! streams assembled with a real frame index, so the reader's refusals can be exercised one by one.

use crate::index::{self, Frame, NO_ENTRY};
use crate::manifest::{bundle_id, Entry, Kind, Manifest};
use crate::tarfmt::{padding, push_header, HeaderKind, BLOCK};
use crate::writer::{trusted_comment, MANIFEST_PATH, SIGNATURE_PATH};
use crate::Result;
use std::path::Path;

/// A minimal valid manifest header (no files yet).
pub fn template() -> Manifest {
    Manifest {
        format: crate::FORMAT_VERSION,
        name: "test".into(),
        version: "1".into(),
        sequence: 1,
        target: "linux-x86_64-cpu".into(),
        created: crate::rfc3339(1_700_000_000),
        source_date_epoch: 1_700_000_000,
        mutable_dirs: Vec::new(),
        provenance: Default::default(),
        launch: Default::default(),
        limits: Default::default(),
        expected_nodes: Default::default(),
        preflight: Vec::new(),
        files: Vec::new(),
    }
}

/// Canonical bytes of `m` (not validated) and a signature file over them.
pub fn sign(m: &Manifest, key: &keys::SecretKey) -> Result<(Vec<u8>, Vec<u8>)> {
    let bytes = m.to_canonical_bytes()?;
    let id = bundle_id(&bytes);
    let sig = keys::Signature::sign(key, &bytes, "test", &trusted_comment(m, &id))
        .map_err(crate::Error::Key)?;
    Ok((bytes, sig.to_file_string().into_bytes()))
}

/// The canonical tar bytes of a manifest entry with its content.
pub fn entry_bytes(out: &mut Vec<u8>, e: &Entry, content: &[u8], mtime: u64) {
    let hk = match &e.kind {
        Kind::Dir => HeaderKind::Dir,
        Kind::File { .. } => HeaderKind::File {
            mode: e.mode(),
            size: content.len() as u64,
        },
        Kind::Symlink { target } => HeaderKind::Symlink { target },
    };
    push_header(out, &e.path, hk, mtime);
    out.extend_from_slice(content);
    out.resize(out.len() + padding(content.len() as u64), 0);
}

/// A GNU header with any type, name, mode and size (checksum set), for entries our writer never makes.
pub fn raw_header(
    out: &mut Vec<u8>,
    name: &[u8],
    ty: u8,
    mode: u32,
    size: u64,
    link: &[u8],
    mtime: u64,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(ty));
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

/// The end-of-archive blocks.
pub fn end_blocks(out: &mut Vec<u8>) {
    out.resize(out.len() + 2 * BLOCK, 0);
}

/// Writes a bundle file: first frame with the given manifest and signature bytes, then each payload
/// chunk as its own frame, then a consistent index.
pub fn assemble(
    out: &Path,
    manifest: &[u8],
    sig: &[u8],
    mtime: u64,
    payload: &[Vec<u8>],
) -> Result<()> {
    let mut raw0 = Vec::new();
    for (p, b) in [(MANIFEST_PATH, manifest), (SIGNATURE_PATH, sig)] {
        push_header(
            &mut raw0,
            p,
            HeaderKind::File {
                mode: 0o644,
                size: b.len() as u64,
            },
            mtime,
        );
        raw0.extend_from_slice(b);
        raw0.resize(raw0.len() + padding(b.len() as u64), 0);
    }
    let mut file = Vec::new();
    let mut frames = Vec::new();
    let mut raw_off = 0u64;
    for (i, raw) in std::iter::once(&raw0).chain(payload.iter()).enumerate() {
        let comp = zstd::bulk::compress(raw, 3)?;
        let e = if i == 0 { 0 } else { 2 };
        frames.push(Frame {
            comp_offset: file.len() as u64,
            comp_len: comp.len() as u64,
            raw_offset: raw_off,
            raw_len: raw.len() as u64,
            first_entry: e,
            last_entry: if i == 0 { 1 } else { 2 },
            start_entry: if i == 0 { 0 } else { NO_ENTRY },
            start_offset: 0,
        });
        raw_off += raw.len() as u64;
        file.extend_from_slice(&comp);
    }
    file.extend_from_slice(&index::encode(&frames));
    fs_err::write(out, file)?;
    Ok(())
}
