//! A pack reads each file of a tree it does not know once: the same read hashes the file for the
//! manifest and feeds its frame. Measured by the bytes this process read (`rchar`), in a test
//! binary of its own so no other test reads at the same time.
#![allow(clippy::unwrap_used)]

mod common;

use bundle::PackOptions;
use common::*;

fn bytes_read() -> u64 {
    let io = fs_err::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_cold_pack_reads_each_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs_err::create_dir_all(tree.join("lib")).unwrap();
    let mut content = 0u64;
    for i in 0..40u32 {
        // Sizes from a few bytes to several frames, so large files span frames made on
        // different threads.
        let size = (i as usize * 7919) % 300_000 + if i % 9 == 0 { 3 << 20 } else { 0 };
        let body: Vec<u8> = (0..size)
            .map(|j| (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8 >> 1)
            .collect();
        fs_err::write(tree.join(format!("lib/f{i:02}.bin")), &body).unwrap();
        content += size as u64;
    }
    let key = keys::generate();
    let opts = PackOptions {
        frame_size: 256 << 10,
        jobs: 4,
        ..Default::default()
    };
    let out = tmp.path().join("a.bundle");
    let before = bytes_read();
    let packed = bundle::pack(&tree, template(), &key, &out, &opts, &|_, _| {}).unwrap();
    let read = bytes_read() - before;
    assert_eq!(packed.hashed_bytes, content);
    assert!(
        read >= content && read < content + content / 10,
        "read {read} bytes for {content} bytes of content"
    );
    // And the bundle is whole: every digest right, every byte back.
    let trusted = keys::TrustedKeys::new(vec![key.public()], vec![]);
    let b = bundle::Bundle::open(&out, &trusted).unwrap();
    b.verify_payload(2, &|_| {}).unwrap();
    let dest = tmp.path().join("x");
    b.extract(&dest, &bundle::ExtractOptions::default(), &|_| {})
        .unwrap();
    for i in [0u32, 9, 18, 39] {
        let name = format!("lib/f{i:02}.bin");
        assert_eq!(
            fs_err::read(dest.join(&name)).unwrap(),
            fs_err::read(tree.join(&name)).unwrap()
        );
    }
}
