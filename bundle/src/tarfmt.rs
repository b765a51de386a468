//! The exact tar bytes of an entry. Writer and reader share this one function: the writer emits it,
//! the reader rebuilds it from the signed manifest and demands byte equality, so any header field
//! our writer would not produce (PAX records, uid, setuid bits, sparse maps, device numbers) is refused.

use tar::{EntryType, Header};

/// Tar block size.
pub const BLOCK: usize = 512;
const NAME_LEN: usize = 100;

/// What a tar header describes.
#[derive(Clone, Copy, Debug)]
pub enum HeaderKind<'a> {
    Dir,
    File { mode: u32, size: u64 },
    Symlink { target: &'a str },
}

/// Padding after `size` content bytes.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

fn gnu_header(ty: EntryType, name: &[u8], mode: u32, size: u64, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    let n = name.len().min(NAME_LEN);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn long_record(out: &mut Vec<u8>, ty: EntryType, value: &[u8], mtime: u64) {
    // GNU tar's `././@LongLink` record: content is the name plus a NUL.
    let mut h = gnu_header(ty, b"././@LongLink", 0o644, value.len() as u64 + 1, mtime);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(value);
    out.push(0);
    out.resize(out.len() + padding(value.len() as u64 + 1), 0);
}

/// Appends the header block(s) of one entry: GNU long-name/long-link records when a name does not
/// fit in 100 bytes, then the header itself. Directories are named with a trailing `/`, as GNU tar does.
pub fn push_header(out: &mut Vec<u8>, path: &str, kind: HeaderKind<'_>, mtime: u64) {
    let dir_name;
    let name: &[u8] = match kind {
        HeaderKind::Dir => {
            dir_name = format!("{path}/");
            dir_name.as_bytes()
        }
        _ => path.as_bytes(),
    };
    if name.len() > NAME_LEN {
        long_record(out, EntryType::GNULongName, name, mtime);
    }
    let mut h = match kind {
        HeaderKind::Dir => gnu_header(EntryType::Directory, name, 0o755, 0, mtime),
        HeaderKind::File { mode, size } => gnu_header(EntryType::Regular, name, mode, size, mtime),
        HeaderKind::Symlink { target } => {
            if target.len() > NAME_LEN {
                long_record(out, EntryType::GNULongLink, target.as_bytes(), mtime);
            }
            let mut h = gnu_header(EntryType::Symlink, name, 0o777, 0, mtime);
            let t = target.as_bytes();
            let n = t.len().min(NAME_LEN);
            h.as_old_mut().linkname[..n].copy_from_slice(&t[..n]);
            h
        }
    };
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

/// True if the stored checksum matches the block (unsigned sum, checksum field read as spaces).
pub fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let h = Header::from_byte_slice(block);
    let Ok(stored) = h.cksum() else { return false };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    stored == sum
}

/// How the reader names a tar type it refuses.
pub fn forbidden_kind(ty: u8) -> Option<&'static str> {
    Some(match ty {
        b'1' => "hardlink",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "fifo",
        b'7' => "contiguous file",
        b'x' | b'g' => "PAX extended header",
        b'S' => "GNU sparse file",
        b'0' | b'\0' | b'2' | b'5' | b'L' | b'K' => return None,
        _ => "unsupported tar entry type",
    })
}
