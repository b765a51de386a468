//! The lock: every source's commit and every package's hashed pin, resolved under the torch pins.

use super::digest::digest;
use super::sources::{checkout, fetch};
use super::{Progress, Steps};
use crate::lock::{Lock, LockedGit};
use crate::plan::{Checkout, Plan, Role};
use crate::{env, git, reqs};
use anyhow::{Context as _, Result};
use std::path::Path;
use support::cmd as process;

/// Every requirement of the release, filtered and checked against the torch pins.
fn requirements(plan: &Plan, trees: &[Checkout]) -> Result<String> {
    let r = &plan.recipe;
    let mut lines = Vec::new();
    if r.torch.install {
        lines.extend(r.torch.pins.iter().cloned());
    }
    for Checkout {
        source: s, tree, ..
    } in trees
    {
        let file = tree.join("requirements.txt");
        if !file.exists() || s.role == Role::Extension || s.disabled {
            continue;
        }
        let text = fs_err::read_to_string(&file)?;
        let owner = match s.role {
            Role::Comfyui => "ComfyUI".to_owned(),
            _ => format!("custom node {}", s.name),
        };
        let drop: &[String] = if s.role == Role::Comfyui {
            &[]
        } else {
            &r.packages.drop
        };
        let kept = reqs::filter(&owner, &text, drop, &r.torch.pins)?;
        lines.extend(kept);
    }
    lines.extend(r.packages.core.iter().cloned());
    Ok(lines.join("\n") + "\n")
}

/// `uv pip compile` of the requirements under the torch constraints.
fn compile(plan: &Plan, input: &str, cache: &Path) -> Result<String> {
    let r = &plan.recipe;
    let tmp = tempfile::tempdir_in(cache)?;
    let (inp, cons, out) = (
        tmp.path().join("in.txt"),
        tmp.path().join("constraints.txt"),
        tmp.path().join("out.txt"),
    );
    fs_err::write(&inp, input)?;
    fs_err::write(&cons, r.torch.pins.join("\n") + "\n")?;
    let mut c = crate::uv::command(cache);
    c.args([
        "pip",
        "compile",
        "--quiet",
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
        "--python-version",
    ])
    .arg(&r.python.version)
    .arg("--python-platform")
    .arg(env::python_platform(&r.target.platform)?)
    .args(env::index_args(r))
    .arg("-c")
    .arg(&cons)
    .arg("-o")
    .arg(&out)
    .arg(&inp);
    process::run(&mut c).context(
        "resolving the requirements under the torch pins (a custom node may ask for another torch)",
    )?;
    Ok(fs_err::read_to_string(&out)?)
}

/// The toolkit wheels with their hashes: exactly the recipe's pins, no dependencies (the env
/// holds the runtime libraries and headers torch needs).
fn compile_toolkit(plan: &Plan, cache: &Path) -> Result<String> {
    let Some(t) = &plan.recipe.toolkit else {
        return Ok(String::new());
    };
    let r = &plan.recipe;
    let tmp = tempfile::tempdir_in(cache)?;
    let (inp, out) = (tmp.path().join("in.txt"), tmp.path().join("out.txt"));
    fs_err::write(&inp, t.packages.join("\n") + "\n")?;
    let mut c = crate::uv::command(cache);
    c.args([
        "pip",
        "compile",
        "--quiet",
        "--no-deps",
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
        "--python-version",
    ])
    .arg(&r.python.version)
    .arg("--python-platform")
    .arg(env::python_platform(&r.target.platform)?)
    .arg("-o")
    .arg(&out)
    .arg(&inp);
    process::run(&mut c).context("resolving the [toolkit] wheels")?;
    Ok(fs_err::read_to_string(&out)?)
}

/// `comfy-build lock`: resolves every source to a commit and every package to a hashed pin. When the
/// requirement inputs are those `previous` was resolved from, its pins are kept (no resolver run).
pub fn lock(
    plan: &Plan,
    cache: &Path,
    previous: Option<&Lock>,
    progress: &dyn Progress,
) -> Result<Lock> {
    locked_by(&Steps::new(progress), plan, cache, previous)
}

/// [`lock`], its steps part of a build's.
pub(super) fn locked_by(
    p: &Steps,
    plan: &Plan,
    cache: &Path,
    previous: Option<&Lock>,
) -> Result<Lock> {
    fs_err::create_dir_all(cache)?;
    p.step("sources", format!("{} repositories", plan.sources.len()));
    let fetched = fetch(plan, cache, None)?;
    let trees = fetched
        .into_iter()
        .map(|(s, c)| checkout(cache, s, c))
        .collect::<Result<Vec<_>>>()?;
    let cli = trees[0].tree.join("comfy/cli_args.py");
    let cli_text = fs_err::read_to_string(&cli)
        .with_context(|| format!("the pinned ComfyUI has no {}", cli.display()))?;
    crate::plan::check_flags(&plan.recipe.launch.args, &cli_text)?;
    let input = requirements(plan, &trees)?;
    let r = &plan.recipe;
    let input_sha = digest(&[
        "requirements-v1",
        &input,
        &r.torch.pins.join("\n"),
        &r.python.version,
        &r.target.platform,
        &env::index_args(r).join(" "),
    ]);
    let requirements = match previous {
        Some(prev) if prev.requirements_input_sha256 == input_sha => {
            p.step("resolve", "requirements unchanged; keeping their pins");
            prev.requirements.clone()
        }
        _ => {
            p.step("resolve", "requirements under the torch pins");
            compile(plan, &input, cache)?
        }
    };
    let toolkit = match (previous, &r.toolkit) {
        (_, None) => String::new(),
        (Some(prev), Some(_))
            if !prev.toolkit.is_empty() && prev.recipe_sha256 == plan.recipe_sha256 =>
        {
            prev.toolkit.clone()
        }
        _ => {
            p.step("resolve", "the [toolkit] wheels");
            compile_toolkit(plan, cache)?
        }
    };
    let comfy = &trees[0];
    let source_date_epoch = git::commit_time(cache, &comfy.source.fetch_url, &comfy.commit)?;
    Ok(Lock {
        recipe_sha256: plan.recipe_sha256.clone(),
        source_date_epoch,
        git: trees
            .iter()
            .map(|t| LockedGit {
                role: t.source.role,
                name: t.source.name.clone(),
                url: t.source.url.clone(),
                rev: t.source.rev.clone(),
                commit: t.commit.clone(),
            })
            .collect(),
        requirements,
        requirements_input_sha256: input_sha,
        toolkit,
    })
}
