//! `comfy-build verify`: the signature against trusted keys, then every payload byte. Nothing is written.

use crate::cli::VerifyArgs;
use anyhow::{Context as _, Result};

pub fn run(a: VerifyArgs) -> Result<()> {
    let trusted = super::trusted_keys(&a.trust)?;
    let b = bundle::Bundle::open(&a.file, &trusted)
        .with_context(|| format!("refusing {}", a.file.display()))?;
    let pb = support::bytes_bar(b.payload_bytes(), "verifying");
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    b.verify_payload(jobs, &|n| pb.set_position(n))
        .with_context(|| format!("refusing {}", a.file.display()))?;
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "ok": true, "bundle": super::summary(&b) })
        );
    } else {
        println!(
            "ok: {} {} {} signed by {}, every byte verified",
            b.manifest.name, b.manifest.version, b.id, b.signature.key_id
        );
    }
    Ok(())
}
