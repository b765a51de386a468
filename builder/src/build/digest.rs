//! The digests stages are cached by, computed the same way by the build and its dry run.

use crate::env;
use crate::env::Interpreter;
use crate::plan::Plan;
use sha2::{Digest, Sha256};

pub(super) fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The env stage's digest, for the build and its dry run alike.
pub(super) fn env_digest(
    plan: &Plan,
    interp: &Interpreter,
    requirements: &str,
    uv: &str,
) -> String {
    let r = &plan.recipe;
    digest(&[
        "env-v2",
        &format!("{:?}", r.python.mode),
        &interp.prefix.to_string_lossy(),
        &interp.version,
        &r.python.path,
        requirements,
        &env::index_args(r).join(" "),
        uv,
    ])
}

pub(super) fn ext_digest(
    e: &crate::recipe::ExtensionSection,
    commit: &str,
    env_digest: &str,
) -> String {
    let envs: Vec<String> = e.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    digest(&[
        "ext-v1",
        &e.name,
        commit,
        e.pypi.as_deref().unwrap_or(""),
        &envs.join("\n"),
        env_digest,
    ])
}
