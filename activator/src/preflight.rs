//! Pre-flight: the manifest's checks, run with the release's own interpreter before it may become
//! current, and the one way comfyctl runs any code from a release ([`python`]: doctor's torch
//! check too). A release is third-party code, so it never runs as root and never as the service
//! user (whose processes could kill, signal or trace it and so block every upgrade): it runs as
//! the check account ([`crate::accounts::checker`]) with no supplementary groups, no new
//! privileges, no capabilities, private `/tmp`, `/var/tmp` and `/dev/shm`, a pid namespace that
//! ends every process it started when it ends (util-linux's `unshare` and `setpriv`), a cleared
//! environment, `/` as its working directory and `python -I` (no
//! `PYTHON*` variables, no user site, no script or working directory on `sys.path`).

use crate::cmd;
use anyhow::{bail, Result};
use bundle::Manifest;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The environment a release's code gets: nothing of the caller's.
const ENV: [(&str, &str); 4] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("CUDA_MODULE_LOADING", "LAZY"),
];

/// The command that runs `python -I -B -c code` confined as `who` (see the module's header);
/// `None`: comfyctl is not root and has no identity to drop, so only the environment, working
/// directory and `-I` apply.
fn confined(release: &Path, python: &Path, code: &str, who: Option<(u32, u32)>) -> Command {
    let mut c = match who {
        None => {
            let mut c = Command::new(python);
            c.args(["-I", "-B", "-c", code]);
            c
        }
        Some((uid, gid)) => {
            let mut c = Command::new("unshare");
            // A pid namespace of its own: when the check ends (or is killed at its deadline,
            // `--kill-child`), every process it started ends with it, so nothing it leaves
            // behind can hold its output open, signal the next check or bind the app's port.
            c.args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
                .arg(
                    "for d in $4; do mount -t tmpfs -o size=256m,mode=1777 tmpfs \"$d\" || exit 1; done; \
                     exec setpriv --reuid \"$0\" --regid \"$1\" --clear-groups --no-new-privs \
                     --inh-caps=-all --bounding-set=-all -- \"$2\" -I -B -c \"$3\"",
                )
                .arg(uid.to_string())
                .arg(gid.to_string())
                .arg(python)
                .arg(code)
                .arg(
                    // Every world-writable place gets a private, empty tmpfs; not one the release
                    // itself lives below (test trees under /tmp).
                    ["/tmp", "/var/tmp", "/dev/shm"]
                        .iter()
                        .filter(|d| Path::new(d).is_dir() && !release.starts_with(d))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            c
        }
    };
    c.env_clear().envs(ENV).current_dir("/");
    c
}

/// Runs `code` with release `release`'s interpreter, confined as `who`, within `limit`.
pub fn python(
    release: &Path,
    code: &str,
    who: Option<(u32, u32)>,
    limit: Duration,
) -> Result<cmd::Output> {
    let python = release.join("venv/bin/python");
    if !python.exists() {
        bail!("the release has no venv/bin/python to run its checks with");
    }
    cmd::output(&mut confined(release, &python, code, who), limit)
}

/// Runs every check; the first failure is an error naming it and carrying its output.
pub fn run(release: &Path, m: &Manifest, who: Option<(u32, u32)>) -> Result<usize> {
    crate::hostlibs::require(m).map_err(|e| anyhow::anyhow!("pre-flight: {e:#}"))?;
    for c in &m.preflight {
        let o = python(release, &c.python, who, Duration::from_secs(300))
            .map_err(|e| anyhow::anyhow!("pre-flight: {e:#}"))?;
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
