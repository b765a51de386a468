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
    assert!(b
        .extract(&tmp.path().join("x"), &ExtractOptions::default(), &|_| {})
        .is_err());
    assert!(!tmp.path().join("x").exists());
}
