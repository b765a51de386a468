//! The builder: recipe -> plan -> stages -> bundle, plus the key and bundle verbs.

pub mod build;
mod cache;
pub mod cli;
mod commands;
mod doctor;
mod env;
mod ext;
mod freeze;
mod git;
mod hostlibs;
mod install;
mod launch;
pub mod lock;
pub mod plan;
pub mod recipe;
mod reqs;
mod smoke;
mod snapshot;
mod state;
mod toolkit;
mod uv;

pub use commands::run;

/// 2 when the input was refused (bad bundle, bad key), 1 for any other failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    support::exit_code(e, &|_| false)
}
