//! Failure points for crash-safety tests: `COMFYCTL_FAILPOINTS=name=kill,other=error`. `kill` sends
//! the process SIGKILL on the spot (no unwinding, no destructors: what a power cut or OOM kill does),
//! which fail-rs has no action for; `error` makes the step fail; `sleep(MS)` holds the step;
//! `pause(FILE)` creates `FILE.reached` and holds the step until `FILE` is gone (at most two
//! minutes), so a test knows the point was reached without guessing a delay. Unset, each point
//! costs one lookup.

use anyhow::{bail, Result};
use std::sync::OnceLock;

/// The environment variable naming active points.
pub const ENV: &str = "COMFYCTL_FAILPOINTS";

fn points() -> &'static Vec<(String, String)> {
    static P: OnceLock<Vec<(String, String)>> = OnceLock::new();
    P.get_or_init(|| {
        std::env::var(ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect()
    })
}

/// Triggers the point `name` if configured.
pub fn hit(name: &str) -> Result<()> {
    for (k, action) in points() {
        if k == name {
            match action.as_str() {
                "kill" => {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                }
                a if a.starts_with("sleep(") => {
                    let ms = a
                        .trim_start_matches("sleep(")
                        .trim_end_matches(')')
                        .parse()
                        .unwrap_or(1000);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                a if a.starts_with("pause(") => {
                    let file = std::path::PathBuf::from(
                        a.trim_start_matches("pause(").trim_end_matches(')'),
                    );
                    let mut reached = file.clone().into_os_string();
                    reached.push(".reached");
                    fs_err::write(&reached, b"")?;
                    let t = std::time::Instant::now();
                    while file.exists() && t.elapsed() < std::time::Duration::from_secs(120) {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                _ => bail!("failpoint {name} triggered"),
            }
        }
    }
    Ok(())
}
