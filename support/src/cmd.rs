//! Every child process of both programs goes through here: stdin null, argv logged at debug,
//! output collected (to a bound) or kept in a log file, a time limit where one is given, and on
//! failure an error naming the command with the last KiB of its output ([`last_kib`]).

use anyhow::{bail, Context as _, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output of a finished command.
pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(1024);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The most kept of each of a child's output streams; the rest is read and dropped, so a child
/// that writes without end (a release's pre-flight check is third-party code) costs bounded
/// memory.
pub const MAX_OUTPUT: usize = 8 << 20;

/// Reads `r` to its end, keeping the first [`MAX_OUTPUT`] bytes.
fn drain_capped(mut r: impl std::io::Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

/// Runs `cmd` to completion within `limit`, whatever its exit status. The output is read until
/// the child exits and its streams close, within the same limit: a grandchild that keeps them
/// open (a daemon a check started) does not hold the caller past it.
pub fn output(cmd: &mut Command, limit: Duration) -> Result<Output> {
    tracing::debug!(cmd = %describe(cmd), "running");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let out = child.stdout.take().context("no stdout pipe")?;
    let err = child.stderr.take().context("no stderr pipe")?;
    let (tx_out, rx_out) = std::sync::mpsc::channel();
    let (tx_err, rx_err) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx_out.send(drain_capped(out)));
    std::thread::spawn(move || tx_err.send(drain_capped(err)));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{:?} did not finish within {}s",
                cmd.get_program(),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let left = || {
        limit
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1))
    };
    let (Ok(stdout), Ok(stderr)) = (rx_out.recv_timeout(left()), rx_err.recv_timeout(left()))
    else {
        bail!(
            "{:?} exited ({status}), but something it started kept its output open past {}s",
            cmd.get_program(),
            limit.as_secs()
        );
    };
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// The command line, for logs and errors.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs to completion, without a time limit; a non-zero exit is an error naming the command,
/// with the tails of its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd, Duration::MAX)?;
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

/// Standard output of [`run`], trimmed.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(run(cmd)?.stdout.trim().to_owned())
}

/// Runs with stdout and stderr written to `log`, without a time limit; a failure carries the
/// log's tail and its path.
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
            tail(&String::from_utf8_lossy(&text))
        );
    }
    Ok(())
}

/// The last KiB of a text, for error messages.
pub fn last_kib(s: &str) -> &str {
    tail(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grandchild_holding_the_output_open_does_not_hold_the_caller() {
        let t = Instant::now();
        let e = output(
            Command::new("sh").args(["-c", "sleep 30 & echo started"]),
            Duration::from_secs(2),
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let e = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("kept its output open"), "{e}");
    }

    #[test]
    fn endless_output_is_kept_to_a_bound() {
        let o = output(
            Command::new("sh").args(["-c", "head -c 40000000 /dev/zero"]),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(o.status.success());
        assert_eq!(o.stdout.len(), MAX_OUTPUT);
    }

    #[test]
    fn a_failure_names_the_command_and_its_output() {
        let e = run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("`sh -c echo out; echo err >&2; exit 3` failed"),
            "{e}"
        );
        assert!(e.contains("out\nerr"), "{e}");
        assert_eq!(stdout(Command::new("echo").arg(" hi ")).unwrap(), "hi");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/x.log");
        let e = run_logged(Command::new("sh").args(["-c", "echo logged; exit 1"]), &log)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("full log: ") && e.ends_with("logged\n"), "{e}");
        assert_eq!(fs_err::read_to_string(&log).unwrap(), "logged\n");
    }
}
