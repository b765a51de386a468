//! The frame index: a zstd skippable frame at the end of the bundle that lists every data frame.
//! It is not signed: readers use it only to find and schedule frames, and every byte it leads them to
//! is still checked against the signed manifest, so a lying index can only cause a refusal.

use crate::{Error, Result};

/// Skippable-frame magic (any of 0x184D2A50..=0x184D2A5F is skipped by stock zstd).
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5C;
/// Magic of the skippable frame that fills what frame 0 leaves of the room reserved for it.
pub const PADDING_MAGIC: u32 = 0x184D_2A50;
/// Last 8 bytes of every bundle.
pub const FOOTER_MAGIC: &[u8; 8] = b"CMFYIDX1";
const ENTRY_LEN: usize = 64;
const FOOTER_LEN: usize = 16;
/// Entry number of the tar end-of-archive blocks in [`Frame::last_entry`].
pub const NO_ENTRY: u64 = u64::MAX;

/// One independent zstd frame and the tar entries whose bytes it holds. Entries are numbered in tar
/// order: 0 the manifest, 1 its signature, 2 + i the manifest's `files[i]`, then the end-of-archive
/// blocks (numbered `files.len() + 2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub comp_offset: u64,
    pub comp_len: u64,
    pub raw_offset: u64,
    pub raw_len: u64,
    /// Entry holding the frame's first raw byte.
    pub first_entry: u64,
    /// Entry holding its last raw byte.
    pub last_entry: u64,
    /// First entry whose header starts inside this frame, or [`NO_ENTRY`].
    pub start_entry: u64,
    /// Offset of that header within the frame's raw bytes.
    pub start_offset: u64,
}

/// Serialises the index as a skippable frame.
pub fn encode(frames: &[Frame]) -> Vec<u8> {
    let body = frames.len() * ENTRY_LEN + FOOTER_LEN;
    let mut out = Vec::with_capacity(8 + body);
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body as u32).to_le_bytes());
    for f in frames {
        for v in [
            f.comp_offset,
            f.comp_len,
            f.raw_offset,
            f.raw_len,
            f.first_entry,
            f.last_entry,
            f.start_entry,
            f.start_offset,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(FOOTER_MAGIC);
    out
}

/// Length of the index frame given the file's last 16 bytes, after checking the footer.
pub fn frame_len_from_footer(footer: &[u8; FOOTER_LEN]) -> Result<u64> {
    if &footer[8..] != FOOTER_MAGIC {
        return Err(Error::Truncated(
            "no frame index at the end of the file".into(),
        ));
    }
    let count = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]) as u64;
    let version = u32::from_le_bytes([footer[4], footer[5], footer[6], footer[7]]);
    if version != 1 {
        return Err(Error::NotABundle(format!(
            "frame index version {version} is not supported"
        )));
    }
    Ok(8 + count * ENTRY_LEN as u64 + FOOTER_LEN as u64)
}

/// Parses the index frame and checks it tiles the file: frames back to back from offset 0, ending
/// where the index begins, raw offsets contiguous, entry numbers non-decreasing.
pub fn decode(bytes: &[u8], index_offset: u64) -> Result<Vec<Frame>> {
    let bad = |d: &str| Error::NotABundle(format!("frame index: {d}"));
    if bytes.len() < 8 + FOOTER_LEN {
        return Err(bad("too short"));
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if magic != SKIPPABLE_MAGIC || len != bytes.len() - 8 {
        return Err(bad("bad skippable frame header"));
    }
    let body = &bytes[8..bytes.len() - FOOTER_LEN];
    let mut frames = Vec::with_capacity(body.len() / ENTRY_LEN);
    for chunk in body.chunks_exact(ENTRY_LEN) {
        let v = |i: usize| u64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        frames.push(Frame {
            comp_offset: v(0),
            comp_len: v(1),
            raw_offset: v(2),
            raw_len: v(3),
            first_entry: v(4),
            last_entry: v(5),
            start_entry: v(6),
            start_offset: v(7),
        });
    }
    let (mut comp, mut raw, mut entry) = (0u64, 0u64, 0u64);
    for f in &frames {
        if f.comp_offset != comp
            || f.raw_offset != raw
            || f.first_entry < entry
            || f.last_entry < f.first_entry
        {
            return Err(bad("frames do not tile the file"));
        }
        if f.comp_len == 0 || f.raw_len == 0 {
            return Err(bad("empty frame"));
        }
        if f.start_entry != NO_ENTRY
            && (f.start_entry < f.first_entry
                || f.start_entry > f.last_entry
                || f.start_offset >= f.raw_len)
        {
            return Err(bad("entry start outside its frame"));
        }
        comp = f
            .comp_offset
            .checked_add(f.comp_len)
            .ok_or_else(|| bad("offset overflow"))?;
        raw = f
            .raw_offset
            .checked_add(f.raw_len)
            .ok_or_else(|| bad("offset overflow"))?;
        entry = f.last_entry;
    }
    if comp != index_offset {
        return Err(bad("frames do not end where the index begins"));
    }
    if frames.is_empty() {
        return Err(bad("no frames"));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let frames = vec![
            Frame {
                comp_offset: 0,
                comp_len: 10,
                raw_offset: 0,
                raw_len: 100,
                first_entry: 0,
                last_entry: 1,
                start_entry: 0,
                start_offset: 0,
            },
            Frame {
                comp_offset: 10,
                comp_len: 5,
                raw_offset: 100,
                raw_len: 50,
                first_entry: 2,
                last_entry: 4,
                start_entry: 2,
                start_offset: 0,
            },
        ];
        let bytes = encode(&frames);
        let footer: [u8; 16] = bytes[bytes.len() - 16..].try_into().unwrap();
        assert_eq!(frame_len_from_footer(&footer).unwrap(), bytes.len() as u64);
        assert_eq!(decode(&bytes, 15).unwrap(), frames);
        assert!(decode(&bytes, 16).is_err());
    }
}
