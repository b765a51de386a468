//! `build --dry-run`: what would happen, without fetching, installing or compiling anything.

use super::digest::{
    env_digest, ext_base, ext_digest, stage_digest, toolkit_digest, toolkit_part, wheel_key,
    StageInputs,
};
use super::stages::Stage;
use super::BuildOptions;
use crate::cache::Layout as _;
use crate::env;
use crate::lock::Lock;
use crate::plan::{Plan, Role, Source};
use anyhow::Result;
use std::path::PathBuf;

/// What `build --dry-run` reports: the recipe, the lock's state, every source and stage with its
/// digest, whether the cache holds it, and the commands it runs.
#[derive(Debug, serde::Serialize)]
pub struct DryRun {
    pub recipe: PathBuf,
    pub recipe_sha256: String,
    pub bundle: crate::recipe::BundleSection,
    pub torch: crate::recipe::TorchSection,
    pub arch_list: String,
    pub cuda_home: String,
    pub launch: Vec<String>,
    pub lock: String,
    pub sources: Vec<PlannedSource>,
    pub stages: Vec<PlannedStage>,
}

/// A source in a dry run.
#[derive(Debug, serde::Serialize)]
pub struct PlannedSource {
    pub role: Role,
    pub name: String,
    pub url: String,
    pub rev: String,
    pub commit: Option<String>,
    pub disabled: bool,
    pub cached: bool,
    pub commands: Vec<String>,
}

/// A stage in a dry run (`digest` and `cached` where the stage is cached by digest).
#[derive(Debug, serde::Serialize)]
pub struct PlannedStage {
    pub stage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    pub commands: Vec<String>,
}

impl PlannedStage {
    /// The dry run's view of a stage: the same value the build names and looks up its stages by.
    fn of(stage: &Stage<'_>, cache: &std::path::Path) -> Self {
        PlannedStage {
            stage: stage.name(),
            digest: stage.digest().map(|d| d.map(str::to_owned)),
            cached: stage.cached(cache),
            required: stage.required(),
            enabled: stage.enabled(),
            commands: stage.commands(),
        }
    }
}

/// The stage's digest as the build would compute it: known when the lock is fresh and every
/// extension's wheel is in the cache (its file name is part of the digest); `None` otherwise.
fn stage_digest_if_known(
    plan: &Plan,
    opts: &BuildOptions,
    lock: Option<&Lock>,
    fresh: bool,
    env_d: Option<&str>,
    ext_digests: &[Option<String>],
) -> Option<String> {
    let lock = lock.filter(|_| fresh)?;
    let lock_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fs_err::read(plan.lock_path()).ok()?,
    ));
    let wheel_keys = ext_digests
        .iter()
        .map(|d| {
            let w = crate::ext::find_wheel(&opts.cache.wheel_dir(d.as_ref()?)).ok()??;
            Some(wheel_key(&opts.cache, &w))
        })
        .collect::<Option<Vec<_>>>()?;
    let workflows = serde_json::to_string(&plan.workflows).ok()?;
    Some(stage_digest(&StageInputs {
        env: env_d?,
        lock_sha256: &lock_sha,
        recipe_sha256: &plan.recipe_sha256,
        wheel_keys,
        smoke: opts.smoke,
        workflows_json: &workflows,
        toolkit: plan
            .recipe
            .toolkit
            .as_ref()
            .map(|t| toolkit_part(t, &lock.toolkit)),
    }))
}

/// `comfy-build build --dry-run`: the build's own digests, computed without building.
pub fn dry_run(plan: &Plan, opts: &BuildOptions) -> Result<DryRun> {
    let r = &plan.recipe;
    let lock = Lock::load(&plan.lock_path())?;
    let stale = lock.as_ref().and_then(|l| l.stale_reason(plan));
    let lock_state = match (&lock, &stale) {
        (None, _) => "missing: `build` writes it, `build --locked` refuses".to_owned(),
        (Some(_), Some(why)) => format!("stale ({why})"),
        (Some(_), None) => "fresh".to_owned(),
    };
    let commit_of = |s: &Source| {
        lock.as_ref()
            .and_then(|l| l.commit(s.role, &s.name))
            .map(str::to_owned)
    };
    let sources = plan
        .sources
        .iter()
        .map(|s| {
            let commit = commit_of(s);
            let cached = commit
                .as_ref()
                .is_some_and(|c| opts.cache.src_dir(c).exists());
            PlannedSource {
                role: s.role,
                name: s.name.clone(),
                url: s.url.clone(),
                rev: s.rev.clone(),
                commit,
                disabled: s.disabled,
                cached,
                commands: vec![
                    format!(
                        "git clone --mirror {} (once), git fetch if {} is missing",
                        s.fetch_url, s.rev
                    ),
                    "git archive | tar -x".to_owned(),
                ],
            }
        })
        .collect();
    let reqs = lock.as_ref().map_or("", |l| l.requirements.as_str());
    // The same digest the build computes; it needs this host's interpreter and uv (both local).
    let env_d = match (env::installed_interpreter(r), crate::uv::version()) {
        (Ok(interp), Ok(uv)) => Some(env_digest(plan, &interp, reqs, &uv)),
        _ => None,
    };
    let tk_locked = lock.as_ref().map_or("", |l| l.toolkit.as_str());
    let tk_d = match (&r.toolkit, &env_d) {
        (Some(_), Some(env_d)) if !tk_locked.is_empty() => Some(toolkit_digest(env_d, tk_locked)),
        _ => None,
    };
    let base = env_d
        .as_deref()
        .map(|env_d| ext_base(env_d, tk_d.as_deref()));
    let ext_digests: Vec<Option<String>> = r
        .extensions
        .iter()
        .map(|e| {
            let commit = lock
                .as_ref()
                .and_then(|l| l.commit(Role::Extension, &e.name))
                .unwrap_or("");
            base.as_deref().map(|base| ext_digest(e, commit, base))
        })
        .collect();
    let stage_d = stage_digest_if_known(
        plan,
        opts,
        lock.as_ref(),
        stale.is_none(),
        env_d.as_deref(),
        &ext_digests,
    );
    let mut planned = vec![Stage::Env {
        recipe: r,
        digest: env_d,
    }];
    if let Some(t) = &r.toolkit {
        planned.push(Stage::Toolkit {
            recipe: r,
            toolkit: t,
            digest: tk_d,
        });
    }
    for (e, d) in r.extensions.iter().zip(ext_digests) {
        planned.push(Stage::Extension {
            recipe: r,
            ext: e,
            digest: d,
        });
    }
    planned.extend([
        Stage::Install { plan },
        Stage::Assemble { digest: stage_d },
        Stage::Freeze,
        Stage::Smoke {
            plan,
            enabled: opts.smoke,
        },
        Stage::HostLibs,
        Stage::Pack {
            recipe: r,
            out: &opts.out,
        },
    ]);
    let mut stages: Vec<PlannedStage> = planned
        .iter()
        .map(|s| PlannedStage::of(s, &opts.cache))
        .collect();
    // Without a lock the env's packages are not known yet: not cached, whatever its digest.
    if lock.is_none() {
        stages[0].cached = Some(false);
    }
    Ok(DryRun {
        recipe: plan.recipe_path.clone(),
        recipe_sha256: plan.recipe_sha256.clone(),
        bundle: r.bundle.clone(),
        torch: r.torch.clone(),
        arch_list: r.target.arch_list.clone(),
        cuda_home: r.target.cuda_home.clone(),
        launch: r.launch.args.clone(),
        lock: lock_state,
        sources,
        stages,
    })
}
