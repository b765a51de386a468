//! Pack -> open -> verify -> extract gives back the same tree, deterministically, at any frame size.
#![allow(clippy::unwrap_used)]

mod common;

use bundle::{Bundle, ExtractOptions, PackOptions};
use common::*;
use std::os::unix::fs::{symlink, PermissionsExt as _};

fn sample_tree(root: &std::path::Path) {
    let long = "d".repeat(90);
    fs_err::create_dir_all(root.join(format!("venv/lib/{long}/{long}"))).unwrap();
    fs_err::create_dir_all(root.join("python/bin")).unwrap();
    fs_err::create_dir_all(root.join("venv/bin")).unwrap();
    fs_err::create_dir_all(root.join("empty")).unwrap();
    fs_err::write(root.join("python/bin/python3.12"), b"#!/bin/sh\necho hi\n").unwrap();
    fs_err::set_permissions(
        root.join("python/bin/python3.12"),
        std::fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    symlink("python3.12", root.join("python/bin/python3")).unwrap();
    symlink("../../python/bin/python3.12", root.join("venv/bin/python")).unwrap();
    symlink(
        format!("{long}/{long}/{}", "t".repeat(40)),
        root.join(format!("venv/lib/{}", "l".repeat(120))),
    )
    .unwrap();
    fs_err::write(
        root.join(format!("venv/lib/{long}/{long}/{}", "t".repeat(40))),
        b"deep",
    )
    .unwrap();
    fs_err::write(root.join("zero"), b"").unwrap();
    fs_err::write(root.join("a-b"), b"sorts between a and a/b").unwrap();
    let mut big = vec![0u8; 3 << 20];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    fs_err::write(root.join("venv/big.so"), &big).unwrap();
    for i in 0..300 {
        fs_err::write(
            root.join(format!("venv/lib/m{i:03}.py")),
            format!("x = {i}\n").repeat(i),
        )
        .unwrap();
    }
}

#[test]
fn roundtrip_at_several_frame_sizes_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let key = keys::generate();
    let trusted = keys::TrustedKeys::new(vec![key.public()], vec![]);
    let mut ids = Vec::new();
    for (n, (frame_size, jobs)) in [(64usize << 10, 1usize), (256 << 10, 3), (4 << 20, 2)]
        .into_iter()
        .enumerate()
    {
        let out = tmp.path().join(format!("b{n}.bundle"));
        let opts = PackOptions {
            frame_size,
            level: 3,
            jobs,
            ..Default::default()
        };
        let packed = bundle::pack(&tree, template(), &key, &out, &opts, &|_, _| {}).unwrap();
        let b = Bundle::open(&out, &trusted).unwrap();
        assert_eq!(b.id, packed.id);
        if frame_size < (1 << 20) {
            assert!(
                b.frames.len() > 5,
                "payload must be cut into several frames, also inside big.so"
            );
        }
        b.verify_payload(jobs, &|_| {}).unwrap();
        let dest = tmp.path().join(format!("x{n}"));
        let report = b
            .extract(
                &dest,
                &ExtractOptions {
                    jobs,
                    read_only: false,
                    sync: false,
                },
                &|_| {},
            )
            .unwrap();
        assert_eq!(report.bytes, b.payload_bytes());
        let mut want = snapshot(&tree);
        for e in &mut want {
            if e.1 == "dir" {
                e.2 = 0o755;
            } else if e.1 == "file" {
                e.2 = if e.2 & 0o111 != 0 { 0o755 } else { 0o644 };
            }
        }
        assert_eq!(snapshot(&dest), want);
        ids.push((packed.id, fs_err::read(&out).unwrap().len()));
    }
    // Same content, same id, whatever the framing.
    assert!(ids.windows(2).all(|w| w[0].0 == w[1].0), "{ids:?}");
    // Same options, same bytes.
    let again = tmp.path().join("again.bundle");
    let opts = PackOptions {
        frame_size: 4 << 20,
        level: 3,
        jobs: 2,
        ..Default::default()
    };
    bundle::pack(&tree, template(), &key, &again, &opts, &|_, _| {}).unwrap();
    assert_eq!(
        fs_err::read(&again).unwrap(),
        fs_err::read(tmp.path().join("b2.bundle")).unwrap()
    );
}

#[test]
fn read_only_extraction_strips_write_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let key = keys::generate();
    let out = tmp.path().join("b.bundle");
    bundle::pack(
        &tree,
        template(),
        &key,
        &out,
        &PackOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let b = Bundle::open(&out, &keys::TrustedKeys::new(vec![key.public()], vec![])).unwrap();
    let dest = tmp.path().join("ro");
    b.extract(
        &dest,
        &ExtractOptions {
            read_only: true,
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap();
    for (path, kind, mode, _) in snapshot(&dest) {
        if kind != "link" {
            assert_eq!(mode & 0o222, 0, "{path} is writable: {mode:o}");
        }
    }
    bundle::make_writable_and_remove(&dest).unwrap();
    assert!(!dest.exists());
}

#[test]
fn unverified_bundles_cannot_be_extracted() {
    let tmp = tempfile::tempdir().unwrap();
    fs_err::create_dir(tmp.path().join("t")).unwrap();
    fs_err::write(tmp.path().join("t/f"), b"x").unwrap();
    let key = keys::generate();
    let out = tmp.path().join("b.bundle");
    bundle::pack(
        &tmp.path().join("t"),
        template(),
        &key,
        &out,
        &PackOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let b = Bundle::open_unverified(&out).unwrap();
    let r = b.extract(&tmp.path().join("x"), &ExtractOptions::default(), &|_| {});
    assert!(matches!(r, Err(bundle::Error::Unverified)), "{r:?}");
    assert!(!tmp.path().join("x").exists());
}

/// A directory of objects named by digest, as the activator's store keeps them.
struct DirStore(std::path::PathBuf);

impl DirStore {
    fn name(sha: &[u8; 32], x: bool) -> String {
        format!("{}{}", hex::encode(sha), if x { ".x" } else { "" })
    }
    fn adopt_all(&self, release: &std::path::Path, m: &bundle::Manifest) {
        for e in &m.files {
            if let bundle::Kind::File {
                sha256, executable, ..
            } = &e.kind
            {
                let dst = self.0.join(Self::name(sha256, *executable));
                if !dst.exists() {
                    fs_err::hard_link(release.join(&e.path), dst).unwrap();
                }
            }
        }
    }
}

impl bundle::ObjectSource for DirStore {
    fn contains(&self, sha: &[u8; 32], x: bool, _size: u64) -> bool {
        self.0.join(Self::name(sha, x)).exists()
    }
    fn link_into(
        &self,
        sha: &[u8; 32],
        x: bool,
        dir: rustix::fd::BorrowedFd<'_>,
        name: &str,
    ) -> bundle::Result<()> {
        let src = rustix::fs::open(
            &self.0,
            rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        rustix::fs::linkat(
            &src,
            Self::name(sha, x).as_str(),
            dir,
            name,
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| bundle::Error::Io(e.into()))
    }
}

#[test]
fn store_reuse_skips_frames_of_unchanged_files() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let key = keys::generate();
    let trusted = keys::TrustedKeys::new(vec![key.public()], vec![]);
    let opts = PackOptions {
        frame_size: 64 << 10,
        level: 3,
        jobs: 2,
        ..Default::default()
    };
    let a = tmp.path().join("a.bundle");
    bundle::pack(&tree, template(), &key, &a, &opts, &|_, _| {}).unwrap();
    fs_err::write(tree.join("venv/lib/m150.py"), "changed\n").unwrap();
    let b = tmp.path().join("b.bundle");
    bundle::pack(&tree, template(), &key, &b, &opts, &|_, _| {}).unwrap();

    let store = DirStore(tmp.path().join("store"));
    fs_err::create_dir(&store.0).unwrap();
    let ro = ExtractOptions {
        jobs: 2,
        read_only: true,
        sync: false,
    };
    let ba = Bundle::open(&a, &trusted).unwrap();
    let first = ba
        .extract_with(&tmp.path().join("ra"), &ro, Some(&store), &|_| {})
        .unwrap();
    assert_eq!(first.reused, 0);
    store.adopt_all(&tmp.path().join("ra"), &ba.manifest);

    let bb = Bundle::open(&b, &trusted).unwrap();
    let second = bb
        .extract_with(&tmp.path().join("rb"), &ro, Some(&store), &|_| {})
        .unwrap();
    assert_eq!(
        second.bytes,
        "changed\n".len() as u64,
        "only the changed file is written"
    );
    assert_eq!(second.reused + 1, second.files);
    let needed = bb.frames_to_read(&store);
    assert!(
        needed * 4 < bb.frames.len(),
        "{needed} of {} frames read",
        bb.frames.len()
    );
    let mut want = snapshot(&tree);
    for e in &mut want {
        e.2 = match e.1.as_str() {
            "dir" => 0o555,
            "file" if e.2 & 0o111 != 0 => 0o555,
            "file" => 0o444,
            _ => 0,
        };
    }
    assert_eq!(snapshot(&tmp.path().join("rb")), want);

    // A lying index (frame starts shifted) with reuse in play is refused, not trusted.
    let mut bytes = fs_err::read(&b).unwrap();
    let mut frames = bb.frames.clone();
    let victim = frames
        .iter()
        .rposition(|f| f.start_entry != bundle::index::NO_ENTRY && f.start_offset > 0)
        .unwrap();
    frames[victim].start_offset -= 512;
    let idx = bundle::index::encode(&frames);
    let n = bytes.len() - idx.len();
    bytes.truncate(n);
    bytes.extend_from_slice(&idx);
    let liar = tmp.path().join("liar.bundle");
    fs_err::write(&liar, &bytes).unwrap();
    let bl = Bundle::open(&liar, &trusted).unwrap();
    let dest = tmp.path().join("rl");
    // A lying index must not change the result: refused as a bad bundle, leaving nothing, or
    // the same tree.
    match bl.extract_with(&dest, &ro, Some(&store), &|_| {}) {
        Err(e) => assert!(e.is_refusal() && !dest.exists(), "{e:?}"),
        Ok(_) => assert_eq!(snapshot(&dest), snapshot(&tmp.path().join("rb"))),
    }
}

/// `opts` with `first`'s digests and the frames of its bundle at `path` to copy from.
fn reusing(first: &bundle::Packed, path: &std::path::Path, opts: &PackOptions) -> PackOptions {
    PackOptions {
        reuse: bundle::reuse::Reuse {
            digests: first.digests.clone(),
            sources: vec![
                bundle::reuse::FrameSource::new(path, first.frame_records.clone()).unwrap(),
            ],
        },
        ..opts.clone()
    }
}

#[test]
fn a_repack_copies_unchanged_frames_and_writes_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let key = keys::generate();
    let trusted = keys::TrustedKeys::new(vec![key.public()], vec![]);
    let opts = PackOptions {
        frame_size: 64 << 10,
        jobs: 2,
        ..Default::default()
    };
    let a = tmp.path().join("a.bundle");
    let first = bundle::pack(&tree, template(), &key, &a, &opts, &|_, _| {}).unwrap();
    assert_eq!(first.reused_frames, 0);
    let content: u64 = first.manifest.files.iter().map(|e| e.size()).sum();
    assert_eq!(first.hashed_bytes, content, "a cold pack reads every file");

    // One small file changes (a new inode, as a rebuilt stage has); the next pack knows the rest.
    fs_err::remove_file(tree.join("venv/lib/m150.py")).unwrap();
    fs_err::write(tree.join("venv/lib/m150.py"), "changed\n").unwrap();
    let with = reusing(&first, &a, &opts);
    let b = tmp.path().join("b.bundle");
    let second = bundle::pack(&tree, template(), &key, &b, &with, &|_, _| {}).unwrap();
    assert_eq!(
        second.hashed_bytes,
        "changed\n".len() as u64,
        "only the changed file is read for its digest"
    );
    let payload = second.frames - 1;
    assert!(
        second.reused_frames + 2 >= payload,
        "{} of {payload} payload frames copied",
        second.reused_frames
    );
    // The same bytes as a pack that reuses nothing: reuse changes neither the id nor the file.
    let c = tmp.path().join("c.bundle");
    let fresh = bundle::pack(&tree, template(), &key, &c, &opts, &|_, _| {}).unwrap();
    assert_eq!(fresh.id, second.id);
    assert_eq!(fs_err::read(&b).unwrap(), fs_err::read(&c).unwrap());
    let bb = Bundle::open(&b, &trusted).unwrap();
    bb.verify_payload(2, &|_| {}).unwrap();

    // An earlier bundle whose frames were altered after they were recorded: its frames are not
    // copied (their SHA-256 no longer matches), they are compressed again.
    let mut bytes = fs_err::read(&a).unwrap();
    let rec = first.frame_records[first.frame_records.len() / 2];
    bytes[(rec.comp_offset + rec.comp_len / 2) as usize] ^= 0xff;
    let mut f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    drop(f);
    let src = bundle::reuse::FrameSource::new(&a, first.frame_records.clone()).unwrap();
    let with = PackOptions {
        reuse: bundle::reuse::Reuse {
            digests: first.digests.clone(),
            sources: vec![src],
        },
        ..opts.clone()
    };
    let d = tmp.path().join("d.bundle");
    let third = bundle::pack(&tree, template(), &key, &d, &with, &|_, _| {}).unwrap();
    assert!(third.reused_frames < second.reused_frames);
    assert_eq!(fs_err::read(&d).unwrap(), fs_err::read(&c).unwrap());
}

#[test]
fn a_rebuilt_file_with_the_same_content_still_lets_its_frame_be_copied() {
    // A rebuild writes some files anew (new inodes, the same bytes): the digest cache does not know
    // them, so they are hashed before the frames are made, and their frames are copied too.
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let key = keys::generate();
    let opts = PackOptions {
        frame_size: 64 << 10,
        jobs: 2,
        ..Default::default()
    };
    let a = tmp.path().join("a.bundle");
    let first = bundle::pack(&tree, template(), &key, &a, &opts, &|_, _| {}).unwrap();
    let same = fs_err::read(tree.join("venv/lib/m150.py")).unwrap();
    fs_err::remove_file(tree.join("venv/lib/m150.py")).unwrap();
    fs_err::write(tree.join("venv/lib/m150.py"), &same).unwrap();
    let with = reusing(&first, &a, &opts);
    let b = tmp.path().join("b.bundle");
    let second = bundle::pack(&tree, template(), &key, &b, &with, &|_, _| {}).unwrap();
    assert_eq!(second.hashed_bytes, same.len() as u64);
    assert_eq!(
        second.reused_frames,
        second.frames - 1,
        "every payload frame copied"
    );
    assert_eq!(second.id, first.id);
    assert_eq!(fs_err::read(&a).unwrap(), fs_err::read(&b).unwrap());
}

#[test]
fn a_file_changed_after_its_digest_was_cached_under_the_same_identity_is_not_trusted_blindly() {
    // Rewriting a file in place changes its modification time, so its identity: it is read again.
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let key = keys::generate();
    let opts = PackOptions {
        frame_size: 64 << 10,
        ..Default::default()
    };
    let first = bundle::pack(
        &tree,
        template(),
        &key,
        &tmp.path().join("a.bundle"),
        &opts,
        &|_, _| {},
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs_err::write(tree.join("venv/lib/m007.py"), "x = 8\n").unwrap();
    let with = PackOptions {
        reuse: bundle::reuse::Reuse {
            digests: first.digests,
            sources: Vec::new(),
        },
        ..opts
    };
    let second = bundle::pack(
        &tree,
        template(),
        &key,
        &tmp.path().join("b.bundle"),
        &with,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(second.hashed_bytes, 6);
    let e = second
        .manifest
        .files
        .iter()
        .find(|e| e.path == "venv/lib/m007.py")
        .unwrap();
    match &e.kind {
        bundle::Kind::File { sha256, .. } => {
            use sha2::Digest as _;
            assert_eq!(*sha256, <[u8; 32]>::from(sha2::Sha256::digest(b"x = 8\n")));
        }
        _ => panic!("not a file"),
    }
}
