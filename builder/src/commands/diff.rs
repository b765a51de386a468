//! `comfy-build diff OLD NEW`: what changes between two releases, from their manifests (the
//! signatures are not checked here: `verify` does that).

use crate::cli::DiffArgs;
use anyhow::{Context as _, Result};
use std::path::Path;

/// A release's id and manifest, from a bundle file or an unpacked release directory.
fn load(p: &Path) -> Result<(String, bundle::Manifest)> {
    if p.is_dir() {
        let file = p.join(bundle::MANIFEST_PATH);
        let bytes = fs_err::read(&file)
            .with_context(|| format!("{} is not an unpacked release", p.display()))?;
        let m = bundle::Manifest::parse(&bytes)
            .with_context(|| format!("reading {}", file.display()))?;
        return Ok((bundle::bundle_id(&bytes), m));
    }
    let b =
        bundle::Bundle::open_unverified(p).with_context(|| format!("reading {}", p.display()))?;
    Ok((b.id, b.manifest))
}

pub fn run(a: DiffArgs) -> Result<()> {
    let (old_id, old) = load(&a.old)?;
    let (new_id, new) = load(&a.new)?;
    let d = support::diff::diff(&old_id, &old, &new_id, &new);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", d.render());
    }
    Ok(())
}
