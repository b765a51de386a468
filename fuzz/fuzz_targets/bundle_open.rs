//! Arbitrary bytes as a bundle file: index, first frame and manifest parsing must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.bundle");
    std::fs::write(&p, data).unwrap();
    let _ = bundle::Bundle::open_unverified(&p);
});
