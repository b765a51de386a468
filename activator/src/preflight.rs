//! Pre-flight: the manifest's checks, run with the release's own interpreter from inside the release,
//! before it may become current.

use crate::cmd;
use anyhow::{bail, Result};
use bundle::Manifest;
use std::path::Path;
use std::time::Duration;

/// Runs every check; the first failure is an error naming it and carrying its output.
pub fn run(release: &Path, m: &Manifest) -> Result<usize> {
    if m.preflight.is_empty() {
        return Ok(0);
    }
    let python = release.join("venv/bin/python");
    if !python.exists() {
        bail!("pre-flight: the release has no venv/bin/python to run its checks with");
    }
    for c in &m.preflight {
        let mut command = std::process::Command::new(&python);
        command
            .arg("-c")
            .arg(&c.python)
            .current_dir(release)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONNOUSERSITE", "1")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        let o = cmd::output(&mut command, Duration::from_secs(300))?;
        if !o.status.success() {
            bail!(
                "pre-flight check {:?} failed ({}):\n{}",
                c.name,
                o.status,
                cmd::last_kib(&format!("{}{}", o.stdout, o.stderr))
            );
        }
    }
    Ok(m.preflight.len())
}
