//! Pre-flight: the manifest's checks, run with the release's own interpreter from inside the release,
//! before it may become current. They are the bundle's code, so they run as the service will: as
//! the service user, with no new privileges and a private /tmp (util-linux's `unshare` and
//! `setpriv`), never as root.

use crate::cmd;
use crate::host::Host;
use anyhow::{bail, Result};
use bundle::Manifest;
use std::path::Path;
use std::time::Duration;

/// Who the checks run as: the service user and group, or `nobody` where the host has no such
/// user yet (`--root` trees, a host not set up). `None` when comfyctl is not root (nothing to drop).
pub fn identity(host: &Host) -> Option<(u32, u32)> {
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let s = &host.cfg.service;
    match (
        crate::data::user_uid(&s.user),
        crate::data::group_gid(&s.group),
    ) {
        (Some(u), Some(g)) if u != 0 => Some((u, g)),
        _ => Some((65534, 65534)),
    }
}

/// The command that runs `python -c code` confined: a mount namespace of its own with a fresh
/// tmpfs on /tmp, then `setpriv` drops to `who` with no supplementary groups and no new
/// privileges.
fn confined(
    release: &Path,
    python: &Path,
    code: &str,
    who: Option<(u32, u32)>,
) -> std::process::Command {
    let Some((uid, gid)) = who else {
        let mut c = std::process::Command::new(python);
        c.arg("-c").arg(code);
        return c;
    };
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "for d in $4; do mount -t tmpfs -o size=256m,mode=1777 tmpfs \"$d\" || exit 1; done; \
             exec setpriv --reuid \"$0\" --regid \"$1\" --clear-groups --no-new-privs \
             --inh-caps=-all --bounding-set=-all -- \"$2\" -c \"$3\"",
        )
        .arg(uid.to_string())
        .arg(gid.to_string())
        .arg(python)
        .arg(code)
        .arg(
            // Every world-writable place gets a private, empty tmpfs; not one the release itself
            // lives below (test trees under /tmp).
            ["/tmp", "/var/tmp", "/dev/shm"]
                .iter()
                .filter(|d| Path::new(d).is_dir() && !release.starts_with(d))
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
        );
    c
}

/// Runs every check; the first failure is an error naming it and carrying its output.
pub fn run(release: &Path, m: &Manifest, who: Option<(u32, u32)>) -> Result<usize> {
    crate::hostlibs::require(m).map_err(|e| anyhow::anyhow!("pre-flight: {e:#}"))?;
    if m.preflight.is_empty() {
        return Ok(0);
    }
    let python = release.join("venv/bin/python");
    if !python.exists() {
        bail!("pre-flight: the release has no venv/bin/python to run its checks with");
    }
    for c in &m.preflight {
        let mut command = confined(release, &python, &c.python, who);
        command
            .current_dir(release)
            .env("HOME", "/tmp")
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
