//! The digests stages are cached by, computed the same way by the build and its dry run.

use crate::cache::Layout as _;
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

/// The toolkit stage's digest: the env it extends and the locked toolkit wheels.
pub(super) fn toolkit_digest(env_digest: &str, locked: &str) -> String {
    digest(&["toolkit-v1", env_digest, locked])
}

/// What an extension is compiled against: the env, and the toolkit where the recipe has one
/// (another compiler, another wheel).
pub(super) fn ext_base(env_digest: &str, toolkit_digest: Option<&str>) -> String {
    match toolkit_digest {
        None => env_digest.to_owned(),
        Some(t) => digest(&["env+toolkit", env_digest, t]),
    }
}

pub(super) fn ext_digest(
    e: &crate::recipe::ExtensionSection,
    commit: &str,
    env_digest: &str,
) -> String {
    let envs: Vec<String> = e.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    digest(&[
        // v2: build paths mapped away for nvcc too.
        "ext-v2",
        &e.name,
        commit,
        e.pypi.as_deref().unwrap_or(""),
        &envs.join("\n"),
        env_digest,
    ])
}

/// The stage's digest: the env, the lock and recipe as files, the extension wheels (each by its
/// cache key, `<ext digest>/<name>.whl`, so the cache's path does not count), whether the smoke
/// start runs and the workflows it checks, and the toolkit where a recipe has one.
pub(super) fn stage_digest(inputs: &StageInputs<'_>) -> String {
    let smoke = inputs.smoke.to_string();
    let wheels = inputs.wheel_keys.join("\n");
    let mut parts: Vec<&str> = vec![
        "stage-v6",
        inputs.env,
        inputs.lock_sha256,
        inputs.recipe_sha256,
        &wheels,
        &smoke,
        // The workflows are checked (and run) by the smoke start: another workflow, another check.
        inputs.workflows_json,
    ];
    // The toolkit only where a recipe has one: other recipes keep their stages' digests.
    if let Some(t) = &inputs.toolkit {
        parts.push(t);
    }
    digest(&parts)
}

/// What [`stage_digest`] is computed from.
pub(super) struct StageInputs<'a> {
    pub env: &'a str,
    pub lock_sha256: &'a str,
    pub recipe_sha256: &'a str,
    pub wheel_keys: Vec<String>,
    pub smoke: bool,
    pub workflows_json: &'a str,
    /// `toolkit in_release=<bool> <locked pins>`, for a recipe with a `[toolkit]`.
    pub toolkit: Option<String>,
}

/// A wheel's cache key: its path below `<cache>/wheels`.
pub(super) fn wheel_key(cache: &std::path::Path, wheel: &std::path::Path) -> String {
    wheel
        .strip_prefix(cache.wheels())
        .unwrap_or(wheel)
        .to_string_lossy()
        .into_owned()
}

/// The toolkit's part of the stage digest.
pub(super) fn toolkit_part(t: &crate::recipe::ToolkitSection, locked: &str) -> String {
    format!("toolkit in_release={} {locked}", t.in_release)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts are length-prefixed: moving a boundary changes the digest, so two different inputs
    /// (`"ab" + "c"`, `"a" + "bc"`) can never share a cached stage.
    #[test]
    fn part_boundaries_count() {
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_ne!(digest(&["a", ""]), digest(&["a"]));
        assert_eq!(digest(&["a", "b"]), digest(&["a", "b"]));
        assert_eq!(digest(&[]).len(), 64);
    }

    #[test]
    fn an_extension_is_rebuilt_when_any_input_moves() {
        let e: crate::recipe::ExtensionSection = toml::from_str(
            "name = \"x\"\npypi = \"x==1\"\nimport = \"x\"\nenv = { MAX_JOBS = \"2\" }\n",
        )
        .unwrap();
        let base = ext_digest(&e, "", "env1");
        assert_ne!(base, ext_digest(&e, "", "env2"), "another env");
        let mut other = e.clone();
        other.pypi = Some("x==2".into());
        assert_ne!(base, ext_digest(&other, "", "env1"), "another version");
        let mut other = e.clone();
        other.env.insert("MAX_JOBS".into(), "4".into());
        assert_ne!(
            base,
            ext_digest(&other, "", "env1"),
            "another build environment"
        );
        assert_eq!(base, ext_digest(&e, "", "env1"));
    }
}
