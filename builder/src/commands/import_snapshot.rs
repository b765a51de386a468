//! `comfy-build import-snapshot`: a ComfyUI-Manager snapshot as recipe sections.

use crate::cli::ImportSnapshotArgs;
use anyhow::Result;

pub fn run(a: ImportSnapshotArgs) -> Result<()> {
    let json = fs_err::read_to_string(&a.snapshot)?;
    print!(
        "{}",
        crate::snapshot::to_recipe_fragment(&json, &a.comfyui_url)?
    );
    Ok(())
}
