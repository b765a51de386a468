//! Every child process of comfyctl goes through [`support::cmd`]: stdin null, argv logged at
//! debug, a time limit, and on failure an error carrying the last KiB of output.

pub use support::cmd::{last_kib, output, Output};
