//! Guards format v1: a bundle written by an earlier build, signed with a test-only key, must stay
//! readable with the same id and the same tree. If this fails, the format changed: bump `format`.
#![allow(clippy::unwrap_used)]

use bundle::{Bundle, ExtractOptions, Kind};

const GOLDEN_ID: &str = "31c523ddd1ec96a4428c1c3d6c207f3d81266637cd5ae93639c0f9511982808f";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

#[test]
fn golden_v1_bundle_stays_readable() {
    let key = keys::PublicKey::load(&fixture("TEST-ONLY-golden.pub")).unwrap();
    let trusted = keys::TrustedKeys::new(vec![key], vec![]);
    let b = Bundle::open(&fixture("golden-v1.bundle"), &trusted).unwrap();
    assert_eq!(b.id, GOLDEN_ID);
    let m = &b.manifest;
    assert_eq!(
        (m.name.as_str(), m.version.as_str(), m.sequence),
        ("golden", "1.0.0", 1)
    );
    assert_eq!(m.created, "2023-11-14T22:13:20Z");
    assert_eq!(m.files.len(), 13);
    assert!(m.files.iter().any(|e| e.path == "venv/bin/python"
        && e.kind
            == Kind::Symlink {
                target: "../../python/bin/python3".into()
            }));
    assert!(
        m.files.iter().any(|e| e.path.len() > 100),
        "the long-name path pins GNU long-name records"
    );
    // Re-serialising reproduces the signed bytes exactly.
    assert_eq!(m.to_canonical_bytes().unwrap(), b.manifest_bytes);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("x");
    b.extract(&dest, &ExtractOptions::default(), &|_| {})
        .unwrap();
    assert_eq!(
        fs_err::read_to_string(dest.join("ComfyUI/main.py")).unwrap(),
        "print(\"comfy\")\n"
    );
    assert_eq!(fs_err::read(dest.join("ComfyUI/empty")).unwrap(), b"");
    assert_eq!(
        fs_err::read_link(dest.join("venv/bin/python"))
            .unwrap()
            .to_str(),
        Some("../../python/bin/python3")
    );
    let long = format!("ComfyUI/{}.py", "x".repeat(110));
    assert_eq!(fs_err::read_to_string(dest.join(long)).unwrap(), "long\n");
}

#[test]
fn golden_key_is_marked_as_a_test_key() {
    let text = fs_err::read_to_string(fixture("TEST-ONLY-golden.pub")).unwrap();
    assert!(text.starts_with("untrusted comment: TEST KEY"), "{text}");
}
