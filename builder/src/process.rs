//! Every child process of the builder goes through here: stdin null, argv logged at debug, output
//! kept in a log file when asked, and on failure an error carrying the last KiB of stderr (and the
//! log's path).

use anyhow::{bail, Context as _, Result};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn tail(bytes: &[u8]) -> String {
    support::cmd::last_kib(&String::from_utf8_lossy(bytes)).to_owned()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs to completion; a non-zero exit is an error naming the command, with its stderr tail.
pub fn run(cmd: &mut Command) -> Result<Output> {
    tracing::debug!(cmd = %describe(cmd), "running");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs with stdout and stderr written to `log`; a failure carries the log's tail and its path.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    tracing::debug!(cmd = %describe(cmd), log = %log.display(), "running");
    if let Some(p) = log.parent() {
        fs_err::create_dir_all(p)?;
    }
    let f = fs_err::File::create(log)?.into_parts().0;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        let text = fs_err::read(log).unwrap_or_default();
        bail!(
            "`{}` failed ({status}); full log: {}\n{}",
            describe(cmd),
            log.display(),
            tail(&text)
        );
    }
    Ok(())
}

/// Standard output as trimmed text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).trim().to_owned())
}

/// The async flavour for concurrent fetches.
pub async fn run_async(mut cmd: tokio::process::Command, what: &str) -> Result<String> {
    let std = cmd.as_std();
    let desc = describe(std);
    tracing::debug!(cmd = %desc, "running");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("starting {desc}"))?;
    if !out.status.success() {
        bail!(
            "{what}: `{desc}` failed ({}):\n{}",
            out.status,
            tail(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
