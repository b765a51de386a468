//! Arbitrary bytes as a manifest: parse must never panic, and anything it accepts re-serialises to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = bundle::Manifest::parse(data) {
        assert_eq!(m.to_canonical_bytes().unwrap(), data);
    }
});
