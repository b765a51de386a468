//! The release's manifest, from the plan, the lock and what the stage step found.

use super::{BuiltWheel, StageRecord};
use crate::freeze;
use crate::lock::Lock;
use crate::plan::{Checkout, Plan, Role, Source};
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::path::Path;

#[allow(clippy::too_many_arguments)]
pub(super) fn manifest(
    plan: &Plan,
    lock: &Lock,
    lock_sha: &str,
    trees: &[Checkout],
    wheels: &[BuiltWheel],
    record: StageRecord,
    stage: &Path,
    cache: &Path,
) -> Result<bundle::Manifest> {
    let r = &plan.recipe;
    let nodes = record.smoke.map(|s| s.nodes);
    let git_src = |s: &Source, c: &str| bundle::GitSource {
        name: s.name.clone(),
        url: s.url.clone(),
        commit: c.to_owned(),
        disabled: s.disabled,
    };
    let mut preflight: Vec<bundle::Check> = r
        .preflight
        .iter()
        .map(|p| bundle::Check {
            name: p.name.clone(),
            python: p.python.clone(),
        })
        .collect();
    for BuiltWheel { ext: e, .. } in wheels {
        preflight.push(bundle::Check {
            name: format!("import {}", e.import),
            python: format!("import {}", e.import),
        });
    }
    let mut extensions = Vec::new();
    for BuiltWheel {
        ext: e,
        commit,
        wheel: w,
        ..
    } in wheels
    {
        extensions.push(bundle::Extension {
            name: e.name.clone(),
            source: e.git.clone().or_else(|| e.pypi.clone()).unwrap_or_default(),
            rev: commit.clone(),
            wheel_sha256: hex::encode(Sha256::digest(fs_err::read(w)?)),
        });
    }
    Ok(bundle::Manifest {
        format: bundle::FORMAT_VERSION,
        name: r.bundle.name.clone(),
        version: r.bundle.version.clone(),
        sequence: r.bundle.sequence,
        target: r.bundle.target.clone(),
        created: bundle::rfc3339(lock.source_date_epoch),
        source_date_epoch: lock.source_date_epoch,
        mutable_dirs: ["models", "input", "output", "user", "temp"]
            .map(String::from)
            .to_vec(),
        provenance: bundle::Provenance {
            recipe_sha256: plan.recipe_sha256.clone(),
            lock_sha256: lock_sha.to_owned(),
            smoke: if nodes.is_some() { "passed" } else { "skipped" }.into(),
            comfyui: trees.first().map(|t| git_src(&t.source, &t.commit)),
            // Nested sources as `<node>/<path>`, after their node: diff and inspect show them.
            custom_nodes: trees
                .iter()
                .filter(|t| matches!(t.source.role, Role::Node | Role::Nested))
                .map(|t| git_src(&t.source, &t.commit))
                .collect(),
            extensions,
            packages: freeze::frozen_packages(stage, cache)?,
        },
        launch: bundle::Launch {
            entry: bundle::LAUNCH_ENTRY.into(),
            args: r.launch.args.clone(),
            env: r.launch.env.clone(),
            device_type: r.bundle.device_type.clone(),
        },
        limits: bundle::Limits::default(),
        expected_nodes: nodes
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        preflight,
        host_libs: record.host_libs,
        workflows: plan.workflows.clone(),
        state: record.state,
        models: r
            .models
            .iter()
            .map(|m| bundle::ModelFile {
                path: m.path.clone(),
                sha256: m.sha256.to_ascii_lowercase(),
                size: m.size,
                url: m.url.clone(),
            })
            .collect(),
        files: Vec::new(),
    })
}
