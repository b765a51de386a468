//! `comfy-build pack`: a directory tree to a signed bundle, with an empty provenance.

use crate::cli::PackArgs;
use anyhow::{Context as _, Result};

pub fn run(a: PackArgs) -> Result<()> {
    let key = super::secret_key(&a.signing)?;
    let epoch = match a.source_date_epoch {
        Some(e) => e,
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .context("SOURCE_DATE_EPOCH is not a number of seconds")?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
    };
    let template = bundle::Manifest {
        format: bundle::FORMAT_VERSION,
        name: a.name,
        version: a.version,
        sequence: a.sequence,
        target: a.target,
        created: bundle::rfc3339(epoch),
        source_date_epoch: epoch,
        mutable_dirs: Vec::new(),
        provenance: bundle::Provenance::default(),
        launch: bundle::Launch::default(),
        limits: bundle::Limits::default(),
        expected_nodes: Default::default(),
        preflight: Vec::new(),
        host_libs: Vec::new(),
        workflows: Vec::new(),
        state: Vec::new(),
        models: Vec::new(),
        files: Vec::new(),
    };
    let packed = pack_tree(&a.dir, template, &key, &a.out, a.level)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "id": packed.id,
                "path": packed.path,
                "files": packed.manifest.files.len(),
                "bytes": packed.manifest.total_bytes(),
                "compressed_bytes": packed.compressed_bytes,
                "frames": packed.frames,
            })
        );
    } else {
        println!(
            "wrote {} ({} entries, {} bytes -> {} bytes, id {})",
            packed.path.display(),
            packed.manifest.files.len(),
            packed.manifest.total_bytes(),
            packed.compressed_bytes,
            packed.id
        );
    }
    Ok(())
}

/// Packs with a progress bar; shared with the recipe build.
pub fn pack_tree(
    dir: &std::path::Path,
    template: bundle::Manifest,
    key: &keys::SecretKey,
    out: &std::path::Path,
    level: i32,
) -> Result<bundle::Packed> {
    let pb = support::bytes_bar(0, "packing");
    let opts = bundle::PackOptions {
        level,
        ..Default::default()
    };
    let packed = bundle::pack(dir, template, key, out, &opts, &|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })
    .with_context(|| format!("packing {} into {}", dir.display(), out.display()))?;
    pb.finish_and_clear();
    Ok(packed)
}
