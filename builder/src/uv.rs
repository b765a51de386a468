//! uv, which installs every package, resolves every lock and manages interpreters: one place
//! that says how it is called (its cache under the build cache, no progress bars, no bytecode,
//! never an inherited virtual environment).

use crate::cache::Layout as _;
use anyhow::{Context as _, Result};
use std::path::Path;
use std::process::Command;

/// `uv` with the build's settings; `cache` is the build cache (uv's own lives in `cache/uv`).
pub fn command(cache: &Path) -> Command {
    let mut c = Command::new("uv");
    c.env("UV_CACHE_DIR", cache.uv_cache())
        .env("UV_NO_PROGRESS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VIRTUAL_ENV");
    c
}

/// `uv --version`: part of the env stage's digest.
pub fn version() -> Result<String> {
    support::cmd::stdout(Command::new("uv").arg("--version"))
        .context("uv is needed to install packages (scripts/install-deps.sh installs it)")
}
