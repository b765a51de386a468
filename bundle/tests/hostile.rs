//! Every hostile bundle gets its own refusal, nothing is written outside staging, and staging is gone
//! afterwards. Each case builds a real signed bundle (unless the signature itself is the attack).
#![allow(clippy::unwrap_used)]

mod common;

use bundle::testing::{assemble, end_blocks, entry_bytes, raw_header, sign};
use bundle::{Bundle, Entry, Error, ExtractOptions, Manifest};
use common::*;
use std::path::{Path, PathBuf};

struct Case {
    tmp: tempfile::TempDir,
    key: keys::SecretKey,
    trusted: keys::TrustedKeys,
}

impl Case {
    fn new() -> Self {
        let key = keys::generate();
        let trusted = keys::TrustedKeys::new(vec![key.public()], vec![]);
        let tmp = tempfile::tempdir().unwrap();
        fs_err::create_dir(tmp.path().join("outside")).unwrap();
        Case { tmp, key, trusted }
    }

    fn write(&self, m: &Manifest, payload: &[Vec<u8>]) -> PathBuf {
        let (mb, sb) = sign(m, &self.key).unwrap();
        let out = self.tmp.path().join("hostile.bundle");
        assemble(&out, &mb, &sb, MTIME, payload).unwrap();
        out
    }

    /// Opens and extracts; returns the refusal after checking nothing was left behind.
    fn refuse(&self, path: &Path) -> Error {
        let staging = self.tmp.path().join("staging");
        let err = match Bundle::open(path, &self.trusted) {
            Err(e) => e,
            Ok(b) => match b.extract(
                &staging,
                &ExtractOptions {
                    jobs: 2,
                    read_only: false,
                    sync: false,
                },
                &|_| {},
            ) {
                Err(e) => e,
                Ok(_) => panic!("hostile bundle was accepted"),
            },
        };
        assert!(!staging.exists(), "staging left behind after: {err}");
        assert_eq!(
            fs_err::read_dir(self.tmp.path().join("outside"))
                .unwrap()
                .count(),
            0,
            "wrote outside staging"
        );
        assert!(err.is_refusal(), "{err:?} should be a refusal");
        err
    }

    /// A valid manifest for `files`, with the payload given as raw tar bytes.
    fn with_payload(&self, files: Vec<Entry>, payload: Vec<u8>) -> Error {
        let m = with_files(files);
        let p = self.write(&m, &[payload]);
        self.refuse(&p)
    }
}

fn canonical(entries: &[(&Entry, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (e, c) in entries {
        entry_bytes(&mut out, e, c, MTIME);
    }
    out
}

#[test]
fn control_case_is_accepted() {
    // The same machinery with honest input must succeed, or every refusal below proves nothing.
    let c = Case::new();
    let (d, f) = (dir("d"), file("d/f", b"data"));
    let mut payload = canonical(&[(&d, b""), (&f, b"data")]);
    end_blocks(&mut payload);
    let p = c.write(&with_files(vec![d, f]), &[payload]);
    let b = Bundle::open(&p, &c.trusted).unwrap();
    b.extract(
        &c.tmp.path().join("ok"),
        &ExtractOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(fs_err::read(c.tmp.path().join("ok/d/f")).unwrap(), b"data");
}

#[test]
fn a_bundle_opened_without_its_signature_is_never_extracted() {
    let c = Case::new();
    let (d, f) = (dir("d"), file("d/f", b"data"));
    let mut payload = canonical(&[(&d, b""), (&f, b"data")]);
    end_blocks(&mut payload);
    let p = c.write(&with_files(vec![d, f]), &[payload]);
    let b = Bundle::open_unverified(&p).unwrap();
    let out = c.tmp.path().join("unverified");
    let err = b
        .extract(&out, &ExtractOptions::default(), &|_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Unverified), "{err:?}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn dotdot_and_absolute_paths_in_the_manifest() {
    let c = Case::new();
    for bad in ["../outside/x", "/tmp/x", "a/../../x"] {
        let p = c.write(&with_files(vec![file(bad, b"x")]), &[vec![0; 1024]]);
        assert!(matches!(c.refuse(&p), Error::UnsafePath { .. }), "{bad}");
    }
}

#[test]
fn dotdot_and_absolute_paths_in_the_tar_stream() {
    let c = Case::new();
    let f = file("x", b"x");
    for bad in [&b"../outside/x"[..], b"/tmp/x"] {
        let mut payload = Vec::new();
        raw_header(&mut payload, bad, b'0', 0o644, 1, b"", MTIME);
        payload.extend_from_slice(&[b'x'; 512]);
        end_blocks(&mut payload);
        assert!(matches!(
            c.with_payload(vec![f.clone()], payload),
            Error::UnsafePath { .. }
        ));
    }
}

#[test]
fn nul_in_a_name() {
    let c = Case::new();
    let f = file(&format!("{}x", "n".repeat(120)), b"x");
    let mut payload = Vec::new();
    let name = format!("{}\0x", "n".repeat(120));
    raw_header(
        &mut payload,
        b"././@LongLink",
        b'L',
        0o644,
        name.len() as u64 + 1,
        b"",
        MTIME,
    );
    let mut data = name.into_bytes();
    data.push(0);
    data.resize(512, 0);
    payload.extend_from_slice(&data);
    raw_header(&mut payload, &[b'n'; 100], b'0', 0o644, 1, b"", MTIME);
    payload.extend_from_slice(&[b'x'; 512]);
    end_blocks(&mut payload);
    let err = c.with_payload(vec![f], payload);
    assert!(
        matches!(
            err,
            Error::UnsafePath {
                reason: "contains NUL",
                ..
            }
        ),
        "{err:?}"
    );
    // And a manifest path with NUL never parses.
    let p = c.write(&with_files(vec![file("a\0b", b"x")]), &[vec![0; 1024]]);
    assert!(matches!(
        c.refuse(&p),
        Error::UnsafePath { .. } | Error::BadManifest(_)
    ));
}

#[test]
fn duplicate_entries() {
    let c = Case::new();
    let (a, b) = (file("a", b"1"), file("b", b"2"));
    let mut payload = canonical(&[(&a, b"1"), (&a, b"1"), (&b, b"2")]);
    end_blocks(&mut payload);
    assert!(matches!(
        c.with_payload(vec![a.clone(), b.clone()], payload),
        Error::DuplicateEntry { .. }
    ));
    // In the manifest itself.
    let p = c.write(&with_files(vec![a.clone(), a]), &[vec![0; 1024]]);
    assert!(matches!(c.refuse(&p), Error::DuplicateEntry { .. }));
}

#[test]
fn entry_not_in_the_manifest() {
    let c = Case::new();
    let (a, extra) = (file("a", b"1"), file("evil", b"2"));
    let mut payload = canonical(&[(&a, b"1"), (&extra, b"2")]);
    end_blocks(&mut payload);
    assert!(
        matches!(c.with_payload(vec![a.clone()], payload), Error::UnexpectedEntry { path } if path == "evil")
    );
    let mut payload = canonical(&[(&extra, b"2"), (&a, b"1")]);
    end_blocks(&mut payload);
    assert!(
        matches!(c.with_payload(vec![a], payload), Error::UnexpectedEntry { path } if path == "evil")
    );
}

#[test]
fn missing_entry() {
    let c = Case::new();
    let (a, b, z) = (file("a", b"1"), file("b", b"2"), file("z", b"3"));
    let mut payload = canonical(&[(&a, b"1"), (&z, b"3")]);
    end_blocks(&mut payload);
    let err = c.with_payload(vec![a.clone(), b.clone(), z], payload);
    assert!(
        matches!(err, Error::MissingEntry { ref path } if path == "b"),
        "{err:?}"
    );
    let mut payload = canonical(&[(&a, b"1")]);
    end_blocks(&mut payload);
    assert!(
        matches!(c.with_payload(vec![a, b], payload), Error::MissingEntry { path } if path == "b")
    );
}

#[test]
fn hardlinks_devices_and_fifos() {
    let c = Case::new();
    let f = file("f", b"x");
    for (ty, kind) in [
        (b'1', "hardlink"),
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "fifo"),
    ] {
        let mut payload = Vec::new();
        raw_header(&mut payload, b"f", ty, 0o644, 0, b"/etc/shadow", MTIME);
        end_blocks(&mut payload);
        let err = c.with_payload(vec![f.clone()], payload);
        assert!(
            matches!(err, Error::ForbiddenEntry { kind: k, .. } if k == kind),
            "{err:?}"
        );
    }
}

#[test]
fn setuid_setgid_sticky_bits() {
    let c = Case::new();
    let f = file("f", b"x");
    for mode in [0o4755, 0o2755, 0o1755] {
        let mut payload = Vec::new();
        raw_header(&mut payload, b"f", b'0', mode, 1, b"", MTIME);
        payload.extend_from_slice(&[b'x'; 512]);
        end_blocks(&mut payload);
        let err = c.with_payload(vec![f.clone()], payload);
        assert!(
            matches!(err, Error::EntryMismatch { ref detail, .. } if detail.contains("mode")),
            "{err:?}"
        );
    }
    // A manifest cannot even say setuid.
    let text = String::from_utf8(sign(&with_files(vec![f]), &c.key).unwrap().0)
        .unwrap()
        .replace("0644", "4755");
    assert!(matches!(
        Manifest::parse(text.as_bytes()),
        Err(Error::BadManifest(_))
    ));
}

#[test]
fn symlink_leaving_the_root() {
    let c = Case::new();
    for (p, t) in [
        ("l", "../outside"),
        ("l", "/etc"),
        ("d/l", "../../outside"),
        ("up", ".."),
    ] {
        let files = if p.starts_with("d/") {
            vec![dir("d"), link(p, t)]
        } else {
            vec![link(p, t)]
        };
        let w = c.write(&with_files(files), &[vec![0; 1024]]);
        assert!(
            matches!(c.refuse(&w), Error::UnsafePath { .. }),
            "{p} -> {t}"
        );
    }
    // The stream cannot smuggle a different target for a listed link either.
    let (d, l) = (dir("d"), link("d/l", "x"));
    let mut payload = canonical(&[(&d, b"")]);
    raw_header(
        &mut payload,
        b"d/l",
        b'2',
        0o777,
        0,
        b"../../outside",
        MTIME,
    );
    end_blocks(&mut payload);
    let err = c.with_payload(vec![d, l], payload);
    assert!(matches!(err, Error::EntryMismatch { .. }), "{err:?}");
}

#[test]
fn file_written_through_a_symlink() {
    let c = Case::new();
    // The manifest lists a file beneath a symlink: refused before any byte is written.
    let w = c.write(
        &with_files(vec![dir("d"), link("d/l", ".."), file("d/l/f", b"x")]),
        &[vec![0; 1024]],
    );
    assert!(matches!(c.refuse(&w), Error::UnsafePath { .. }));
    // The stream puts one there although the manifest says the parent is a directory.
    let (d, sub, f) = (dir("d"), dir("d/s"), file("d/s/f", b"x"));
    let mut payload = canonical(&[(&d, b"")]);
    entry_bytes(&mut payload, &link("d/s", "../../outside"), b"", MTIME);
    entry_bytes(&mut payload, &f, b"x", MTIME);
    end_blocks(&mut payload);
    let err = c.with_payload(vec![d, sub, f], payload);
    assert!(matches!(err, Error::EntryMismatch { .. }), "{err:?}");
}

#[test]
fn symlink_to_dotdot_then_nested_dirs() {
    let c = Case::new();
    let files = vec![
        dir("a"),
        link("a/up", ".."),
        dir("a/up/x"),
        dir("a/up/x/y"),
        file("a/up/x/y/f", b"z"),
    ];
    let w = c.write(&with_files(files), &[vec![0; 1024]]);
    assert!(matches!(c.refuse(&w), Error::UnsafePath { .. }));
}

#[test]
fn symlink_then_same_name_directory() {
    let c = Case::new();
    let (l, f) = (link("x", "y"), file("y", b"1"));
    let mut payload = canonical(&[(&l, b"")]);
    entry_bytes(&mut payload, &dir("x"), b"", MTIME);
    entry_bytes(&mut payload, &f, b"1", MTIME);
    end_blocks(&mut payload);
    assert!(
        matches!(c.with_payload(vec![l, f], payload), Error::DuplicateEntry { path } if path == "x")
    );
}

#[test]
fn pax_size_smuggling() {
    let c = Case::new();
    let f = file("f", b"x");
    let mut payload = Vec::new();
    let record = b"12 size=600\n";
    raw_header(
        &mut payload,
        b"PaxHeaders/f",
        b'x',
        0o644,
        record.len() as u64,
        b"",
        MTIME,
    );
    let mut data = record.to_vec();
    data.resize(512, 0);
    payload.extend_from_slice(&data);
    raw_header(&mut payload, b"f", b'0', 0o644, 1, b"", MTIME);
    payload.extend_from_slice(&[b'x'; 1024]);
    end_blocks(&mut payload);
    let err = c.with_payload(vec![f], payload);
    assert!(
        matches!(
            err,
            Error::ForbiddenEntry {
                kind: "PAX extended header",
                ..
            }
        ),
        "{err:?}"
    );
}

fn honest(c: &Case) -> PathBuf {
    let tree = c.tmp.path().join("tree");
    fs_err::create_dir_all(tree.join("d")).unwrap();
    let mut data = vec![0u8; 600_000];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    fs_err::write(tree.join("d/blob"), &data).unwrap();
    fs_err::write(tree.join("d/small"), b"small").unwrap();
    let out = c.tmp.path().join("honest.bundle");
    let opts = bundle::PackOptions {
        frame_size: 64 << 10,
        level: 3,
        jobs: 2,
        ..Default::default()
    };
    bundle::pack(&tree, template(), &c.key, &out, &opts, &|_, _| {}).unwrap();
    out
}

#[test]
fn truncation_at_several_offsets() {
    let c = Case::new();
    let good = fs_err::read(honest(&c)).unwrap();
    let p = c.tmp.path().join("cut.bundle");
    for cut in [
        0,
        10,
        100,
        good.len() / 3,
        good.len() / 2,
        good.len() - 100,
        good.len() - 17,
        good.len() - 1,
    ] {
        fs_err::write(&p, &good[..cut]).unwrap();
        let err = c.refuse(&p);
        assert!(matches!(err, Error::Truncated(_)), "cut at {cut}: {err:?}");
    }
    // An index that still tiles the file, but the payload stops early.
    let c2 = Case::new();
    let (a, b) = (file("a", b"1"), file("b", &[7u8; 5000]));
    let mut payload = canonical(&[(&a, b"1")]);
    let mut half = Vec::new();
    entry_bytes(&mut half, &b, &[7u8; 5000], MTIME);
    payload.extend_from_slice(&half[..2048]);
    let err = c2.with_payload(vec![a, b], payload);
    assert!(matches!(err, Error::Truncated(_)), "{err:?}");
}

#[test]
fn one_payload_byte_flipped() {
    let c = Case::new();
    let good = fs_err::read(honest(&c)).unwrap();
    let p = c.tmp.path().join("flip.bundle");
    let b = Bundle::open(&honest(&c), &c.trusted).unwrap();
    let f = b.frames[2];
    let mut bad = good.clone();
    bad[(f.comp_offset + f.comp_len / 2) as usize] ^= 0x01;
    fs_err::write(&p, &bad).unwrap();
    let err = c.refuse(&p);
    assert!(
        matches!(err, Error::CorruptFrame { frame: 2, .. }),
        "{err:?}"
    );
    // Flipped before compression: the frame is well-formed, the digest is not.
    let data = b"the real content";
    let e = file("f", data);
    let mut payload = canonical(&[(&e, b"the REAL content")]);
    end_blocks(&mut payload);
    assert!(
        matches!(c.with_payload(vec![e], payload), Error::DigestMismatch { path } if path == "f")
    );
}

#[test]
fn bytes_beside_the_zstd_frames_are_refused_too() {
    // Frame 0's unused room is a skippable frame of zeros: one byte set there is refused.
    let c = Case::new();
    let path = honest(&c);
    let good = fs_err::read(&path).unwrap();
    let b = Bundle::open(&path, &c.trusted).unwrap();
    let f0 = b.frames[0];
    let zstd0 = zstd::zstd_safe::find_frame_compressed_size(&good[..f0.comp_len as usize]).unwrap();
    assert!(
        (zstd0 as u64) + 8 < f0.comp_len,
        "the writer left no padding to test"
    );
    let p = c.tmp.path().join("padding.bundle");
    let mut bad = good.clone();
    bad[f0.comp_len as usize - 1] = 1;
    fs_err::write(&p, &bad).unwrap();
    let err = c.refuse(&p);
    assert!(
        matches!(err, Error::CorruptFrame { frame: 0, .. }),
        "{err:?}"
    );
    // A payload frame's range made longer by a skippable frame of its own, the index moved to
    // match: it decompresses the same, and is still refused.
    let n = 2;
    let f = b.frames[n];
    let at = (f.comp_offset + f.comp_len) as usize;
    let extra = [
        &bundle::index::PADDING_MAGIC.to_le_bytes()[..],
        &[4, 0, 0, 0, 9, 9, 9, 9],
    ]
    .concat();
    let mut frames = b.frames.clone();
    frames[n].comp_len += extra.len() as u64;
    for g in &mut frames[n + 1..] {
        g.comp_offset += extra.len() as u64;
    }
    let last = frames.last().unwrap();
    let mut bad = good[..at].to_vec();
    bad.extend_from_slice(&extra);
    bad.extend_from_slice(&good[at..(last.comp_offset + last.comp_len) as usize - extra.len()]);
    bad.extend_from_slice(&bundle::index::encode(&frames));
    fs_err::write(&p, &bad).unwrap();
    let err = c.refuse(&p);
    assert!(
        matches!(err, Error::CorruptFrame { frame, .. } if frame == n),
        "{err:?}"
    );
}

#[test]
fn manifest_edited_after_signing() {
    let c = Case::new();
    let e = file("f", b"x");
    let m = with_files(vec![e.clone()]);
    let (mb, sb) = sign(&m, &c.key).unwrap();
    let edited = String::from_utf8(mb)
        .unwrap()
        .replace("sequence = 1", "sequence = 9")
        .into_bytes();
    let mut payload = canonical(&[(&e, b"x")]);
    end_blocks(&mut payload);
    let p = c.tmp.path().join("edited.bundle");
    assemble(&p, &edited, &sb, MTIME, &[payload]).unwrap();
    let err = c.refuse(&p);
    assert!(matches!(err, Error::BadSignature(_)), "{err:?}");
}

#[test]
fn untrusted_and_revoked_keys() {
    let c = Case::new();
    let p = honest(&c);
    let stranger = keys::TrustedKeys::new(vec![keys::generate().public()], vec![]);
    let err = Bundle::open(&p, &stranger).unwrap_err();
    assert!(
        matches!(err, Error::UntrustedKey(keys::Error::UntrustedKey { .. })),
        "{err:?}"
    );
    let revoked = keys::TrustedKeys::new(vec![c.key.public()], vec![c.key.id]);
    let err = Bundle::open(&p, &revoked).unwrap_err();
    assert!(
        matches!(err, Error::UntrustedKey(keys::Error::RevokedKey { .. })),
        "{err:?}"
    );
    assert!(err.is_refusal());
}

#[test]
fn decompression_bomb_past_the_limits() {
    let c = Case::new();
    // A header claiming 1 GiB of zeros (compresses to almost nothing) for a 10-byte file.
    let e = file("f", &[0u8; 10]);
    let mut payload = Vec::new();
    raw_header(&mut payload, b"f", b'0', 0o644, 1 << 30, b"", MTIME);
    payload.resize(payload.len() + (64 << 20), 0);
    let err = c.with_payload(vec![e], payload);
    assert!(
        matches!(
            err,
            Error::CorruptFrame { .. } | Error::EntryMismatch { .. }
        ),
        "{err:?}"
    );
    // A manifest listing more bytes than its own limits.
    let mut m = with_files(vec![file("f", &[0u8; 10])]);
    m.limits.bytes = 5;
    let p = c.write(&m, &[vec![0; 1024]]);
    assert!(matches!(c.refuse(&p), Error::LimitExceeded(_)));
    // A frame that inflates past the size its index entry states.
    let e = file("f", &[0u8; 10]);
    let mut payload = canonical(&[(&e, &[0u8; 10])]);
    end_blocks(&mut payload);
    let p = c.write(&with_files(vec![e]), &[payload]);
    let mut bytes = fs_err::read(&p).unwrap();
    let b = Bundle::open(&p, &c.trusted).unwrap();
    let mut frames = b.frames.clone();
    frames[1].raw_len = 512;
    let idx = bundle::index::encode(&frames);
    let n = bytes.len() - idx.len();
    bytes.truncate(n);
    bytes.extend_from_slice(&idx);
    fs_err::write(&p, &bytes).unwrap();
    assert!(matches!(c.refuse(&p), Error::CorruptFrame { frame: 1, .. }));
}

#[test]
fn the_first_bad_file_in_manifest_order_is_the_one_reported() {
    // Files are checked on writer threads, and the consumer goes on: whichever check finishes
    // first, the refusal names the earliest bad entry, and nothing is left behind.
    let big = vec![5u8; 3 << 20];
    let mut big_bad = big.clone();
    if let Some(last) = big_bad.last_mut() {
        *last = 6;
    }
    let (big_e, small_e, stray) = (file("big", &big), file("small", b"s"), file("x", b"x"));
    type Contents<'a> = Vec<(&'a Entry, &'a [u8])>;
    let cases: [(&str, Contents); 3] = [
        // A small file found wrong at once, then 3 MiB streamed in pieces, then a stray entry.
        ("a/small", vec![(&small_e, b"S"), (&big_e, &big)]),
        // The streamed file wrong in its last byte, then a small wrong one.
        ("big", vec![(&big_e, &big_bad), (&small_e, b"S")]),
        // Only the file after the streamed one is wrong.
        ("small", vec![(&big_e, &big), (&small_e, b"S")]),
    ];
    for (want, entries) in cases {
        for tail in [false, true] {
            let c = Case::new();
            let mut payload = Vec::new();
            let mut files = Vec::new();
            for (e, content) in &entries {
                let mut e = (*e).clone();
                if want == "a/small" && e.path == "small" {
                    e.path = "a/small".into();
                    files.push(dir("a"));
                    entry_bytes(&mut payload, &dir("a"), b"", MTIME);
                }
                entry_bytes(&mut payload, &e, content, MTIME);
                files.push(e);
            }
            if tail {
                entry_bytes(&mut payload, &stray, b"x", MTIME);
            }
            end_blocks(&mut payload);
            let err = c.with_payload(files, payload);
            assert!(
                matches!(&err, Error::DigestMismatch { path } if path == want),
                "{want}, stray entry {tail}: {err:?}"
            );
        }
    }
}
