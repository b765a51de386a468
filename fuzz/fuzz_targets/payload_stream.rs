//! Arbitrary bytes as the payload tar stream of a correctly signed bundle: extraction must refuse
//! cleanly (never panic, never write outside staging) unless the bytes are exactly the listed entries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static keys::SecretKey {
    static K: OnceLock<keys::SecretKey> = OnceLock::new();
    K.get_or_init(keys::generate)
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let mut m = bundle::testing::template();
    m.files = vec![
        bundle::Entry { path: "d".into(), kind: bundle::Kind::Dir },
        bundle::Entry { path: "d/l".into(), kind: bundle::Kind::Symlink { target: "f".into() } },
    ];
    m.limits = bundle::Limits { files: 2, bytes: 0 };
    let (mb, sb) = bundle::testing::sign(&m, key()).unwrap();
    let p = dir.path().join("f.bundle");
    bundle::testing::assemble(&p, &mb, &sb, m.source_date_epoch, &[data.to_vec()]).unwrap();
    let trusted = keys::TrustedKeys::new(vec![key().public()], vec![]);
    // An empty payload makes an empty frame, which the index check refuses: also fine.
    let Ok(b) = bundle::Bundle::open(&p, &trusted) else { return };
    let staging = dir.path().join("staging");
    let opts = bundle::ExtractOptions { jobs: 1, read_only: false, sync: false };
    if b.extract(&staging, &opts, &|_| {}).is_err() {
        assert!(!staging.exists());
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.len() <= 2, "wrote outside staging: {names:?}");
});
