//! The activator: host config, releases, content store, verified atomic activation, rollback, gc.

mod accounts;
mod activate;
mod atomic;
mod beneath;
pub mod cli;
mod cmd;
pub mod config;
mod data;
mod delta;
mod diff;
mod doctor;
pub mod drain;
mod failpoint;
mod gc;
mod health;
mod host;
mod hostlibs;
mod inventory;
mod lifecycle;
mod lock;
mod preflight;
mod print;
mod release;
mod rollback;
mod run;
mod service;
mod source;
mod start;
mod state;
mod store;
mod switch;

pub use activate::{activate, ActivateOptions, ActivateReport};
pub use host::{Host, Refusal};
pub use inventory::{verify, VerifyReport};
pub use rollback::{rollback, RollbackReport};
pub use run::{exit_code, run};
