//! `comfy-build lock`: pins every source to a commit and every package to hashes.

use super::{default_cache, plan};
use crate::cli::LockArgs;
use anyhow::Result;

pub fn run(a: LockArgs) -> Result<()> {
    let p = plan(&a.recipe)?;
    let previous = crate::lock::Lock::load(&p.lock_path()).ok().flatten();
    let l = crate::build::lock(
        &p,
        &a.cache.unwrap_or_else(default_cache),
        previous.as_ref(),
        &super::Stderr,
    )?;
    l.save(&p.lock_path())?;
    println!(
        "wrote {} ({} sources, {} pinned packages)",
        p.lock_path().display(),
        l.git.len(),
        l.requirements.matches("==").count()
    );
    Ok(())
}
