//! What `comfy-build` and `comfyctl` share as command-line programs: the doctor report, progress
//! bars on a terminal, and logging set-up. No format, key or host logic lives here.

pub mod doctor;

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;

/// A byte-count bar on stderr, hidden when stderr is not a terminal (scripts and CI logs stay clean).
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// Logging to stderr: warnings by default, `-v` debug, `-vv` trace, or `RUST_LOG`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
