//! Building blocks for hostile bundles in tests and fuzzing: arbitrary manifests, signatures and tar
//! streams assembled with a real frame index, so the reader's refusals can be exercised one by one.

use crate::index::{self, Frame, NO_ENTRY};
use crate::layout::trusted_comment;
use crate::manifest::{bundle_id, Entry, Kind, Manifest};
use crate::tarfmt::{padding, push_header, HeaderKind, BLOCK};
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
        host_libs: Vec::new(),
        workflows: Vec::new(),
        state: Vec::new(),
        models: Vec::new(),
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
    let raw0 = crate::layout::first_frame(manifest, sig, mtime);
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

/// A set of hostile bundles signed by `key` (each refused by a reader for its own reason), written
/// into `dir`, with a short name for each. Used to check that a host is left untouched by them.
pub fn hostile_bundles(
    dir: &Path,
    key: &keys::SecretKey,
    target: &str,
) -> Result<Vec<(&'static str, std::path::PathBuf)>> {
    use sha2::{Digest, Sha256};
    let file = |p: &str, c: &[u8]| Entry {
        path: p.into(),
        kind: Kind::File {
            executable: false,
            size: c.len() as u64,
            sha256: Sha256::digest(c).into(),
        },
    };
    let manifest = |files: Vec<Entry>| {
        let mut m = template();
        m.target = target.into();
        m.limits = crate::Limits {
            files: files.len() as u64,
            bytes: files.iter().map(Entry::size).sum(),
        };
        m.files = files;
        m
    };
    let mtime = template().source_date_epoch;
    let mut out = Vec::new();
    let mut write = |name: &'static str, m: &Manifest, payload: Vec<u8>| -> Result<()> {
        let (mb, sb) = sign(m, key)?;
        let p = dir.join(format!("{name}.bundle"));
        assemble(&p, &mb, &sb, mtime, &[payload])?;
        out.push((name, p));
        Ok(())
    };
    let f = file("f", b"data");
    let honest = |extra: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        extra(&mut v);
        end_blocks(&mut v);
        v
    };
    write(
        "dotdot-in-manifest",
        &manifest(vec![file("../escape", b"x")]),
        honest(&|_| {}),
    )?;
    write(
        "absolute-in-stream",
        &manifest(vec![f.clone()]),
        honest(&|v| {
            raw_header(v, b"/etc/evil", b'0', 0o644, 4, b"", mtime);
            v.extend_from_slice(&[b'x'; 512]);
        }),
    )?;
    write(
        "unlisted-entry",
        &manifest(vec![f.clone()]),
        honest(&|v| {
            entry_bytes(v, &file("f", b"data"), b"data", mtime);
            entry_bytes(v, &file("g", b"evil"), b"evil", mtime);
        }),
    )?;
    write(
        "missing-entry",
        &manifest(vec![f.clone(), file("g", b"1")]),
        honest(&|v| entry_bytes(v, &file("f", b"data"), b"data", mtime)),
    )?;
    write(
        "hardlink",
        &manifest(vec![f.clone()]),
        honest(&|v| raw_header(v, b"f", b'1', 0o644, 0, b"/etc/shadow", mtime)),
    )?;
    write(
        "fifo",
        &manifest(vec![f.clone()]),
        honest(&|v| raw_header(v, b"f", b'6', 0o644, 0, b"", mtime)),
    )?;
    write(
        "setuid",
        &manifest(vec![f.clone()]),
        honest(&|v| {
            raw_header(v, b"f", b'0', 0o4755, 4, b"", mtime);
            v.extend_from_slice(b"data");
            v.resize(v.len() + 508, 0);
        }),
    )?;
    write(
        "symlink-escape",
        &manifest(vec![Entry {
            path: "l".into(),
            kind: Kind::Symlink {
                target: "../../etc".into(),
            },
        }]),
        honest(&|_| {}),
    )?;
    write(
        "through-symlink",
        &manifest(vec![
            Entry {
                path: "d".into(),
                kind: Kind::Dir,
            },
            Entry {
                path: "d/s".into(),
                kind: Kind::Dir,
            },
            file("d/s/f", b"x"),
        ]),
        honest(&|v| {
            entry_bytes(
                v,
                &Entry {
                    path: "d".into(),
                    kind: Kind::Dir,
                },
                b"",
                mtime,
            );
            entry_bytes(
                v,
                &Entry {
                    path: "d/s".into(),
                    kind: Kind::Symlink {
                        target: "..".into(),
                    },
                },
                b"",
                mtime,
            );
            entry_bytes(v, &file("d/s/f", b"x"), b"x", mtime);
        }),
    )?;
    write(
        "pax-header",
        &manifest(vec![f.clone()]),
        honest(&|v| {
            raw_header(v, b"PaxHeaders/f", b'x', 0o644, 12, b"", mtime);
            let mut r = b"12 size=600\n".to_vec();
            r.resize(512, 0);
            v.extend_from_slice(&r);
        }),
    )?;
    write(
        "digest-mismatch",
        &manifest(vec![f.clone()]),
        honest(&|v| entry_bytes(v, &file("f", b"DATA"), b"DATA", mtime)),
    )?;
    write("truncated-stream", &manifest(vec![f.clone()]), {
        let mut v = Vec::new();
        push_header(
            &mut v,
            "f",
            HeaderKind::File {
                mode: 0o644,
                size: 4,
            },
            mtime,
        );
        v
    })?;
    // The manifest edited after signing.
    let m = manifest(vec![f.clone()]);
    let (mb, sb) = sign(&m, key)?;
    let edited = String::from_utf8_lossy(&mb)
        .replace("sequence = 1", "sequence = 99")
        .into_bytes();
    let p = dir.join("edited-manifest.bundle");
    assemble(
        &p,
        &edited,
        &sb,
        mtime,
        &[honest(&|v| {
            entry_bytes(v, &file("f", b"data"), b"data", mtime)
        })],
    )?;
    out.push(("edited-manifest", p));
    // Signed by someone else.
    let stranger = crate::testing::sign(&m, &keys::generate())?;
    let p = dir.join("untrusted-key.bundle");
    assemble(
        &p,
        &stranger.0,
        &stranger.1,
        mtime,
        &[honest(&|v| {
            entry_bytes(v, &file("f", b"data"), b"data", mtime)
        })],
    )?;
    out.push(("untrusted-key", p));
    // A good bundle cut short, and one with a flipped payload byte.
    let good = dir.join("good.tmp");
    assemble(
        &good,
        &mb,
        &sb,
        mtime,
        &[honest(&|v| {
            entry_bytes(v, &file("f", b"data"), b"data", mtime)
        })],
    )?;
    let bytes = fs_err::read(&good)?;
    let p = dir.join("truncated-file.bundle");
    fs_err::write(&p, &bytes[..bytes.len() / 2])?;
    out.push(("truncated-file", p));
    let mut flipped = bytes.clone();
    let f1 = crate::Bundle::open_unverified(&good)?.frames[1];
    let mid = (f1.comp_offset + f1.comp_len / 2) as usize;
    flipped[mid] ^= 0x40;
    let p = dir.join("flipped-byte.bundle");
    fs_err::write(&p, &flipped)?;
    out.push(("flipped-byte", p));
    fs_err::remove_file(&good)?;
    Ok(out)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A venv-shaped tree for benchmarks: `files` small compressible text files in nested packages
/// (a quarter of `mib`), twelve large poorly compressible blobs (the rest), and a symlink per ten files.
pub fn venv_like_tree(root: &Path, mib: u64, files: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words = [
        "import", "torch", "def", "return", "self", "class", "numpy", "tensor", "config", "None",
        "=", "(", ")", ":", "\n    ",
    ];
    let text_budget = mib * (1 << 20) / 4;
    let per_file = (text_budget / files.max(1)).max(64);
    for i in 0..files {
        let dir = root.join(format!(
            "venv/lib/python3.12/site-packages/pkg{:03}/sub{:02}",
            i % 700,
            i % 13
        ));
        if i < 700 * 13 {
            fs_err::create_dir_all(&dir).expect("writing the benchmark tree");
        }
        let size = per_file / 2 + rng.next() % per_file;
        let mut s = String::with_capacity(size as usize + 16);
        while (s.len() as u64) < size {
            s.push_str(words[(rng.next() % words.len() as u64) as usize]);
            s.push(' ');
        }
        fs_err::write(dir.join(format!("m{i}.py")), s).expect("writing the benchmark tree");
        if i % 10 == 0 {
            std::os::unix::fs::symlink(format!("m{i}.py"), dir.join(format!("alias{i}.py")))
                .expect("writing the benchmark tree");
        }
    }
    let blobs = 12u64;
    let blob = (mib * (1 << 20) - text_budget) / blobs;
    fs_err::create_dir_all(root.join("venv/lib/python3.12/site-packages/torch/lib"))
        .expect("writing the benchmark tree");
    for b in 0..blobs {
        let mut data = vec![0u8; blob as usize];
        for chunk in data.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            // Half the bytes random, half zero-ish: poorly but not incompressible, like shared objects.
            for (d, s) in chunk.iter_mut().zip(v) {
                *d = if s & 1 == 0 { s } else { 0 };
            }
        }
        fs_err::write(
            root.join(format!(
                "venv/lib/python3.12/site-packages/torch/lib/lib{b}.so"
            )),
            data,
        )
        .expect("writing the benchmark tree");
    }
}
