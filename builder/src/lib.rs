//! The builder: recipe -> plan -> stages -> bundle, plus the key and bundle verbs.

pub mod build;
pub mod cli;
mod commands;
mod doctor;
mod env;
mod ext;
mod freeze;
mod git;
mod launch;
pub mod lock;
pub mod plan;
mod process;
pub mod progress;
pub mod recipe;
mod reqs;
mod smoke;
mod snapshot;

pub use commands::run;

/// Logging to stderr; `-v` for debug, `-vv` for trace, or `RUST_LOG`.
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

/// 2 when the input was refused (bad bundle, bad key), 1 for any other failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let refused = e.chain().any(|c| {
        c.downcast_ref::<bundle::Error>()
            .is_some_and(bundle::Error::is_refusal)
            || c.downcast_ref::<keys::Error>()
                .is_some_and(|k| !matches!(k, keys::Error::Io(_)))
    });
    if refused {
        2
    } else {
        1
    }
}
