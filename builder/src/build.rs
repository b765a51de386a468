//! The build pipeline: sources -> lock -> env (interpreter, venv, packages) -> extensions -> stage
//! (assemble, freeze, lint, smoke) -> pack and sign. Each stage is cached under `--cache` by the
//! digest of its inputs; `--dry-run` prints the stages, their digests, whether they are cached and
//! the commands they would run.

use crate::env::{self, Interpreter};
use crate::lock::{Lock, LockedGit};
use crate::plan::{Checkout, Plan, Role, Source};
use crate::{ext, freeze, git, hostlibs, launch, process, reqs, smoke, state};
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How to run a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub cache: PathBuf,
    pub out: PathBuf,
    pub locked: bool,
    pub smoke: bool,
    pub jobs: usize,
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn step(name: &str, detail: impl std::fmt::Display) {
    eprintln!("{name:>12} {detail}");
    STEPS.with(|s| s.borrow_mut().push((name.to_owned(), Instant::now())));
}

thread_local! {
    /// When each step of the running build began (a step lasts until the next one begins).
    static STEPS: std::cell::RefCell<Vec<(String, Instant)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Time spent in one kind of step of a build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

/// The steps since the build began, each kind's time summed, in the order they first ran.
fn stage_times(end: Instant) -> Vec<StageTime> {
    STEPS.with(|s| {
        let s = s.borrow();
        let mut out: Vec<StageTime> = Vec::new();
        for (i, (name, at)) in s.iter().enumerate() {
            let until = s.get(i + 1).map_or(end, |n| n.1);
            let secs = until.duration_since(*at).as_secs_f64();
            match out.iter_mut().find(|t| t.stage == *name) {
                Some(t) => t.seconds += secs,
                None => out.push(StageTime {
                    stage: name.clone(),
                    seconds: secs,
                }),
            }
        }
        out
    })
}

/// Fetches every source (concurrently, at most 4 at a time) and returns source -> commit.
fn fetch(plan: &Plan, cache: &Path, lock: Option<&Lock>) -> Result<Vec<(Source, String)>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
        let mut set = tokio::task::JoinSet::new();
        for (i, s) in plan.sources.iter().enumerate() {
            let rev = lock
                .and_then(|l| l.commit(s.role, &s.name))
                .map_or_else(|| s.rev.clone(), str::to_owned);
            let (s, cache, sem) = (s.clone(), cache.to_owned(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire().await;
                let r = git::resolve(&cache, &s.name, &s.fetch_url, &rev).await;
                (i, s, r)
            });
        }
        let mut out = Vec::new();
        while let Some(j) = set.join_next().await {
            let (i, s, r) = j?;
            let commit =
                r.with_context(|| format!("source {} ({}) is unreachable", s.name, s.url))?;
            out.push((i, s, commit));
        }
        out.sort_by_key(|x| x.0);
        Ok(out.into_iter().map(|(_, s, c)| (s, c)).collect())
    })
}

/// The checkout of `source` at `commit`, exported into the cache.
fn checkout(cache: &Path, source: Source, commit: String) -> Result<Checkout> {
    let tree = export(cache, &source, &commit)?;
    Ok(Checkout {
        source,
        commit,
        tree,
    })
}

fn export(cache: &Path, s: &Source, commit: &str) -> Result<PathBuf> {
    let dest = cache.join("src").join(commit);
    if !dest.exists() {
        fs_err::create_dir_all(cache.join("src"))?;
        git::export(cache, &s.fetch_url, commit, &dest)?;
    }
    Ok(dest)
}

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

/// `comfy-build lock`: resolves every source to a commit and every package to a hashed pin. When the
/// requirement inputs are those `previous` was resolved from, its pins are kept (no resolver run).
pub fn lock(plan: &Plan, cache: &Path, previous: Option<&Lock>) -> Result<Lock> {
    fs_err::create_dir_all(cache)?;
    step("sources", format!("{} repositories", plan.sources.len()));
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
        Some(p) if p.requirements_input_sha256 == input_sha => {
            step("resolve", "requirements unchanged; keeping their pins");
            p.requirements.clone()
        }
        _ => {
            step("resolve", "requirements under the torch pins");
            compile(plan, &input, cache)?
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
    })
}

/// What the stage step found, kept beside the cached stage.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StageRecord {
    smoke: Option<smoke::SmokeReport>,
    state: Vec<bundle::StatePath>,
    /// Shared libraries the stage's ELF files need from the host.
    host_libs: Vec<String>,
}

/// Fails the build on what the smoke start saw that would break on the host: classes a node
/// registers that `/object_info` cannot describe (unless the recipe accepts them by name), and
/// writes outside the app's own tree or removals inside the release.
fn check_smoke(plan: &Plan, report: &smoke::SmokeReport, log: &Path) -> Result<()> {
    let accepted: BTreeMap<String, std::collections::BTreeSet<String>> = plan
        .sources
        .iter()
        .filter(|s| s.role == Role::Node)
        .map(|s| (s.name.clone(), s.broken_classes.iter().cloned().collect()))
        .collect();
    let mut problems = smoke::unaccepted_broken(report, &accepted);
    for (p, _) in &report.written {
        if !p.starts_with("ComfyUI/") {
            problems.push(format!(
                "the app wrote {p} during the smoke start: only paths inside ComfyUI/ can become node state, the rest of a release is read-only on the host"
            ));
        }
    }
    for p in &report.removed {
        problems.push(format!(
            "the app removed {p} from the release during the smoke start; on the host the release is read-only"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the smoke start found {} problem(s) (log {}):\n  {}",
            problems.len(),
            log.display(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// An extension's wheel, built or found in the cache, and the commit it was built from.
struct BuiltWheel {
    ext: crate::recipe::ExtensionSection,
    commit: String,
    wheel: PathBuf,
}

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub struct Built {
    pub id: String,
    pub path: PathBuf,
    pub stage_cached: bool,
    pub seconds: f64,
    /// Where the time went, per kind of step.
    pub stages: Vec<StageTime>,
}

/// The env stage's digest, for the build and its dry run alike.
fn env_digest(plan: &Plan, interp: &Interpreter, requirements: &str, uv: &str) -> String {
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

fn ext_digest(e: &crate::recipe::ExtensionSection, commit: &str, env_digest: &str) -> String {
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

/// `comfy-build build`.
pub fn build(plan: &Plan, key: &keys::SecretKey, opts: &BuildOptions) -> Result<Built> {
    let t0 = Instant::now();
    STEPS.with(|s| s.borrow_mut().clear());
    env::check_platform(&plan.recipe.target.platform)?;
    let cache = &opts.cache;
    fs_err::create_dir_all(cache)?;
    let cache = fs_err::canonicalize(cache)?;
    let r = &plan.recipe;
    let lock_path = plan.lock_path();
    let lock = match Lock::load(&lock_path)? {
        Some(l) => match l.stale_reason(plan) {
            None => l,
            Some(why) if opts.locked => bail!(
                "{} is stale ({why}); run `comfy-build lock {}`",
                lock_path.display(),
                plan.recipe_path.display()
            ),
            Some(why) => {
                step(
                    "lock",
                    format!("refreshing {} ({why})", lock_path.display()),
                );
                let l = lock(plan, &cache, Some(&l))?;
                l.save(&lock_path)?;
                l
            }
        },
        None if opts.locked => bail!(
            "{} does not exist; run `comfy-build lock {}`",
            lock_path.display(),
            plan.recipe_path.display()
        ),
        None => {
            step("lock", format!("writing {}", lock_path.display()));
            let l = lock(plan, &cache, None)?;
            l.save(&lock_path)?;
            l
        }
    };
    let lock_sha = hex::encode(Sha256::digest(fs_err::read(&lock_path)?));

    step(
        "sources",
        format!(
            "{} repositories at their locked commits",
            plan.sources.len()
        ),
    );
    let fetched = fetch(plan, &cache, Some(&lock))?;
    let trees = fetched
        .into_iter()
        .map(|(s, c)| checkout(&cache, s, c))
        .collect::<Result<Vec<_>>>()?;
    let cli_text = fs_err::read_to_string(trees[0].tree.join("comfy/cli_args.py"))
        .context("the pinned ComfyUI has no comfy/cli_args.py")?;
    crate::plan::check_flags(&r.launch.args, &cli_text)?;

    let interp = env::find_interpreter(r)?;
    let uv = crate::uv::version()?;
    let env_d = env_digest(plan, &interp, &lock.requirements, &uv);
    let env_dir = cache.join("env").join(&env_d);
    if env_dir.exists() {
        step("env", format!("{} cached", &env_d[..12]));
    } else {
        step(
            "env",
            format!(
                "{} building: interpreter, venv, {} locked packages",
                &env_d[..12],
                lock.requirements.matches("==").count()
            ),
        );
        let tmp = cache.join("tmp").join(format!("env-{env_d}"));
        let _ = fs_err::remove_dir_all(&tmp);
        let scratch = Scratch(&tmp);
        env::build_env(r, &interp, &lock.requirements, &cache, &tmp)?;
        fs_err::create_dir_all(cache.join("env"))?;
        fs_err::rename(&tmp, &env_dir)?;
        drop(scratch);
    }

    let mut wheels = Vec::new();
    for e in &r.extensions {
        let commit = lock.commit(Role::Extension, &e.name).unwrap_or("");
        let d = ext_digest(e, commit, &env_d);
        let src = trees
            .iter()
            .find(|t| t.source.role == Role::Extension && t.source.name == e.name)
            .map(|t| t.tree.clone());
        let exists = cache.join("wheels").join(&d).is_dir();
        step(
            "extension",
            format!(
                "{} {} {}",
                e.name,
                &d[..12],
                if exists { "cached" } else { "compiling" }
            ),
        );
        // Build against a private copy of the env so nothing the build writes lands in the cache.
        let built = if exists {
            ext::wheel(
                e,
                src.as_deref(),
                Path::new("/nonexistent"),
                &d,
                &cache,
                lock.source_date_epoch,
            )
        } else {
            ext::wheel(
                e,
                src.as_deref(),
                &env_dir.join("venv/bin/python"),
                &d,
                &cache,
                lock.source_date_epoch,
            )
        };
        match built {
            Ok(wheel) => wheels.push(BuiltWheel {
                ext: e.clone(),
                commit: commit.to_owned(),
                wheel,
            }),
            Err(err) if e.required => {
                return Err(err.context(format!("required extension {} failed to build", e.name)))
            }
            Err(err) => eprintln!("warning: optional extension {} skipped: {err:#}", e.name),
        }
    }

    // Each wheel by its cache key and file name (`<ext digest>/<name>.whl`): the same inputs give
    // the same stage digest whatever the cache's path.
    let wheel_keys: Vec<String> = wheels
        .iter()
        .map(|b| {
            b.wheel
                .strip_prefix(cache.join("wheels"))
                .unwrap_or(&b.wheel)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let stage_d = digest(&[
        "stage-v6",
        &env_d,
        &lock_sha,
        &plan.recipe_sha256,
        &wheel_keys.join("\n"),
        &opts.smoke.to_string(),
        // The workflows are checked (and run) by the smoke start: another workflow, another check.
        &serde_json::to_string(&plan.workflows)?,
    ]);
    let stage = cache.join("stage").join(&stage_d);
    let smoke_file = cache.join("stage").join(format!("{stage_d}.nodes.json"));
    let stage_cached = stage.exists();
    let enabled: Vec<String> = trees
        .iter()
        .filter(|t| t.source.role == Role::Node && !t.source.disabled)
        .map(|t| t.source.name.clone())
        .collect();
    if stage_cached {
        step("stage", format!("{} cached", &stage_d[..12]));
    } else {
        step("stage", format!("{} assembling", &stage_d[..12]));
        let tmp = cache.join("tmp").join(format!("stage-{stage_d}"));
        let _ = fs_err::remove_dir_all(&tmp);
        fs_err::create_dir_all(&tmp)?;
        let scratch = Scratch(&tmp);
        // A hardlink farm of the cached env: nothing below writes into an existing file in place.
        process::run(
            Command::new("cp")
                .arg("-al")
                .arg(format!("{}/.", env_dir.display()))
                .arg(&tmp),
        )?;
        for BuiltWheel { wheel: w, .. } in &wheels {
            ext::install(w, &tmp.join("venv/bin/python"), &cache)?;
        }
        process::run(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", trees[0].tree.display()))
                .arg(tmp.join("ComfyUI")),
        )?;
        fs_err::create_dir_all(tmp.join("ComfyUI/custom_nodes"))?;
        for Checkout {
            source: s, tree: t, ..
        } in trees.iter().filter(|t| t.source.role == Role::Node)
        {
            let name = if s.disabled {
                format!("{}.disabled", s.name)
            } else {
                s.name.clone()
            };
            process::run(
                Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", t.display()))
                    .arg(tmp.join("ComfyUI/custom_nodes").join(name)),
            )?;
        }
        let launch_sh = tmp.join(bundle::LAUNCH_ENTRY);
        fs_err::write(&launch_sh, launch::render(&r.launch.env))?;
        fs_err::set_permissions(&launch_sh, std::fs::Permissions::from_mode(0o755))?;
        step("freeze", "bytecode, metadata, relocation lint");
        freeze::freeze(&tmp)?;
        freeze::lint(
            &tmp,
            &[
                tmp.to_string_lossy().into_owned(),
                cache.to_string_lossy().into_owned(),
            ],
            true,
        )?;
        let smoke = if opts.smoke {
            step(
                "smoke",
                "starting the frozen app on loopback, as the host's unit does",
            );
            let copy = cache.join("tmp").join(format!("smoke-{}", &stage_d[..12]));
            let _ = fs_err::remove_dir_all(&copy);
            // Another path proves the tree is relocatable; hardlinks keep the copy cheap, and the
            // app's own tree is a real copy, so what it writes there never reaches the cache.
            process::run(Command::new("cp").arg("-al").arg(&tmp).arg(&copy))?;
            fs_err::remove_dir_all(copy.join("ComfyUI"))?;
            process::run(
                Command::new("cp")
                    .arg("-a")
                    .arg(tmp.join("ComfyUI"))
                    .arg(copy.join("ComfyUI")),
            )?;
            let log = cache
                .join("logs")
                .join(format!("smoke-{}.log", &stage_d[..12]));
            let res = smoke::smoke(
                &copy,
                &r.launch.args,
                &enabled,
                &plan.workflows,
                &log,
                Duration::from_secs(300),
            );
            let _ = fs_err::remove_dir_all(&copy);
            let report = res?;
            check_smoke(plan, &report, &log)?;
            if !plan.workflows.is_empty() {
                step(
                    "workflows",
                    format!(
                        "{} checked against /object_info, {} run on the CPU ({:.1}s)",
                        plan.workflows.len(),
                        plan.workflows.iter().filter(|w| w.run).count(),
                        report.workflow_seconds
                    ),
                );
            }
            Some(report)
        } else {
            None
        };
        let state = state::apply(&tmp, &state::paths(&trees, smoke.as_ref())?)?;
        if !state.is_empty() {
            step(
                "state",
                format!(
                    "{} path(s) the app writes become links into the host's node state: {}",
                    state.len(),
                    state
                        .iter()
                        .map(|s| s.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let host_libs = hostlibs::host_libs(&tmp)?;
        step(
            "host libs",
            format!(
                "{} shared libraries of the interpreter come from the host: {}",
                host_libs.len(),
                host_libs.join(" ")
            ),
        );
        fs_err::create_dir_all(cache.join("stage"))?;
        fs_err::write(
            &smoke_file,
            serde_json::to_vec(&StageRecord {
                smoke,
                state,
                host_libs,
            })?,
        )?;
        fs_err::rename(&tmp, &stage)?;
        drop(scratch);
    }
    let record: StageRecord = serde_json::from_slice(&fs_err::read(&smoke_file)?)?;

    step("pack", "signing the bundle");
    let manifest = manifest(
        plan, &lock, &lock_sha, &trees, &wheels, record, &stage, &cache,
    )?;
    fs_err::create_dir_all(&opts.out)?;
    let tmp_out = opts.out.join(format!(
        ".{}-{}.partial.bundle",
        r.bundle.name, r.bundle.version
    ));
    let pack_opts = bundle::PackOptions {
        jobs: opts.jobs,
        ..Default::default()
    };
    let pb = support::bytes_bar(0, "packing");
    let packed = bundle::pack(&stage, manifest, key, &tmp_out, &pack_opts, &|d, t| {
        pb.set_length(t);
        pb.set_position(d);
    })?;
    pb.finish_and_clear();
    let path = opts.out.join(format!(
        "{}-{}-{}.bundle",
        r.bundle.name,
        r.bundle.version,
        &packed.id[..12]
    ));
    fs_err::rename(&tmp_out, &path)?;
    let stages = stage_times(Instant::now());
    eprintln!(
        "{:>12} {}",
        "times",
        stages
            .iter()
            .map(|t| format!("{} {:.1}s", t.stage, t.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Built {
        id: packed.id,
        path,
        stage_cached,
        seconds: t0.elapsed().as_secs_f64(),
        stages,
    })
}

#[allow(clippy::too_many_arguments)]
fn manifest(
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
            custom_nodes: trees
                .iter()
                .filter(|t| t.source.role == Role::Node)
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
        files: Vec::new(),
    })
}

/// `build --dry-run`: what would happen, without fetching, installing or compiling anything.
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
    fn plain(stage: &str, commands: Vec<String>) -> Self {
        PlannedStage {
            stage: stage.to_owned(),
            digest: None,
            cached: None,
            required: None,
            enabled: None,
            commands,
        }
    }
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
                .is_some_and(|c| opts.cache.join("src").join(c).exists());
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
    let interpreter = match r.python.mode {
        crate::recipe::PythonMode::Embedded => format!(
            "cp -a $(prefix of {}) python/ ; patchelf --set-rpath '$ORIGIN/../lib' python/bin/python{}",
            if r.python.path.is_empty() {
                format!("$(uv python find --managed-python {})", r.python.version)
            } else {
                r.python.path.clone()
            },
            r.python.version
        ),
        crate::recipe::PythonMode::System => format!("link venv/bin/python to {}", r.python.path),
    };
    let mut stages = vec![PlannedStage {
        stage: "env".into(),
        cached: Some(
            lock.is_some()
                && env_d
                    .as_ref()
                    .is_some_and(|d| opts.cache.join("env").join(d).exists()),
        ),
        digest: Some(env_d.clone()),
        required: None,
        enabled: None,
        commands: vec![
            interpreter,
            "uv venv --relocatable venv ; drop `home` ; bin/python -> ../../python/bin/python"
                .to_owned(),
            format!(
                "uv pip install --require-hashes --no-deps {} -r <locked requirements>",
                env::index_args(r).join(" ")
            ),
        ],
    }];
    for e in &r.extensions {
        let commit = lock
            .as_ref()
            .and_then(|l| l.commit(Role::Extension, &e.name))
            .unwrap_or("");
        let d = env_d.as_deref().map(|env_d| ext_digest(e, commit, env_d));
        let envs: Vec<String> = e.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        stages.push(PlannedStage {
            stage: format!("extension {}", e.name),
            cached: Some(
                d.as_ref()
                    .is_some_and(|d| opts.cache.join("wheels").join(d).is_dir()),
            ),
            digest: Some(d),
            required: Some(e.required),
            enabled: None,
            commands: vec![format!(
                "{} uv build --wheel --no-build-isolation {}",
                envs.join(" "),
                e.git.as_deref().or(e.pypi.as_deref()).unwrap_or("")
            )],
        });
    }
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    stages.push(PlannedStage::plain(
        "stage",
        s(&[
            "cp -a env/<digest> stage",
            "uv pip install <wheels>",
            "ComfyUI + custom_nodes from git",
            bundle::LAUNCH_ENTRY,
        ]),
    ));
    stages.push(PlannedStage::plain(
        "freeze",
        vec![
            format!(
                "PYTHONHASHSEED=0 python -m compileall --invalidation-mode unchecked-hash -s <stage> -p {}",
                freeze::INSTALL_PREFIX
            ),
            "remove direct_url.json".to_owned(),
            "relocation lint".to_owned(),
        ],
    ));
    let mut smoke = vec![
        "launch.sh --cpu --listen 127.0.0.1 --port <free> (GPU-only flags dropped); GET /system_stats, /object_info".to_owned(),
    ];
    if !plan.workflows.is_empty() {
        smoke.push(format!(
            "check {} workflow(s) against /object_info; run {} through /prompt",
            plan.workflows.len(),
            plan.workflows.iter().filter(|w| w.run).count()
        ));
    }
    stages.push(PlannedStage {
        enabled: Some(opts.smoke),
        ..PlannedStage::plain("smoke", smoke)
    });
    stages.push(PlannedStage::plain(
        "host libs",
        s(&["patchelf --print-needed python/**: what the interpreter needs from the host"]),
    ));
    stages.push(PlannedStage::plain(
        "pack",
        vec![format!(
            "sign and write {}/{}-{}-<id>.bundle",
            opts.out.display(),
            r.bundle.name,
            r.bundle.version
        )],
    ));
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

/// A stage or env being assembled under `cache/tmp`: removed when the build stops before it is
/// renamed into place (a failed smoke start must not leave gigabytes behind).
struct Scratch<'a>(&'a Path);

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs_err::remove_dir_all(self.0);
        }
    }
}
