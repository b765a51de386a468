//! The build pipeline: sources -> lock -> env (interpreter, venv, packages) -> extensions -> stage
//! (assemble, freeze, lint, smoke, host libraries) -> pack and sign. Each stage is cached under
//! `--cache` by the digest of its inputs; `--dry-run` prints the stages, their digests, whether
//! they are cached and the commands they would run. One file per part: `sources` (fetch and
//! export), `lock` (requirements and their resolution), `digest` (the stage digests build and dry
//! run share), `manifest` (what the release's manifest says), `dry_run`.

mod digest;
mod dry_run;
mod lock;
mod manifest;
mod sources;
mod stages;

pub use dry_run::{dry_run, DryRun, PlannedSource, PlannedStage};
pub use lock::lock;

use crate::cache::Layout as _;
use digest::{
    env_digest, ext_base, ext_digest, stage_digest, toolkit_digest, toolkit_part, wheel_key,
    StageInputs,
};
use manifest::manifest;
use sources::{checkout, fetch};
use stages::Stage;

use crate::env;
use crate::lock::Lock;
use crate::plan::{Checkout, Plan, Role};
use crate::{ext, freeze, hostlibs, install, launch, smoke, state, toolkit};
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::cmd as process;

/// How to run a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub cache: PathBuf,
    pub out: PathBuf,
    pub locked: bool,
    pub smoke: bool,
    pub jobs: usize,
}

/// Where a build reports what it does: a line as each step begins (`label`, what it does) and
/// warnings that do not stop it. `comfy-build` prints them on stderr; the library itself prints
/// nothing.
pub trait Progress {
    fn line(&self, label: &str, detail: &str);
    fn warn(&self, text: &str);
}

/// The build's steps, reported as they begin and timed: a step lasts until the next one begins.
struct Steps<'a> {
    out: &'a dyn Progress,
    began: std::cell::RefCell<Vec<(String, Instant)>>,
}

impl<'a> Steps<'a> {
    fn new(out: &'a dyn Progress) -> Self {
        Self {
            out,
            began: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// A step of stage `name` begins.
    fn step(&self, name: &str, detail: impl std::fmt::Display) {
        self.out.line(name, &detail.to_string());
        self.began
            .borrow_mut()
            .push((name.to_owned(), Instant::now()));
    }

    /// A line that is not a step of its own (its time counts to the step it belongs to).
    fn note(&self, label: &str, detail: impl std::fmt::Display) {
        self.out.line(label, &detail.to_string());
    }

    fn warn(&self, text: impl std::fmt::Display) {
        self.out.warn(&text.to_string());
    }

    /// Each kind of step's time summed, in the order the kinds first ran.
    fn times(&self, end: Instant) -> Vec<StageTime> {
        let s = self.began.borrow();
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
    }
}

/// Time spent in one kind of step of a build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

/// What the stage step found, kept beside the cached stage.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StageRecord {
    smoke: Option<smoke::SmokeReport>,
    state: Vec<bundle::StatePath>,
    /// Shared libraries the stage's ELF files need from the host.
    host_libs: Vec<String>,
    /// The extensions' compiled modules that imported from the frozen release.
    #[serde(default)]
    imports: Vec<String>,
    /// What the install step did: declared models, each install script run or named.
    #[serde(default)]
    install: Vec<String>,
}

/// Prints what the stage's checks found, from its record: a stage taken from the cache reports
/// the same workflows, node state and host libraries as the build that made it (issue 25: a
/// reused stage printed none of them, and a reader of the build's text saw no check at all).
fn report_stage_checks(p: &Steps, plan: &Plan, record: &StageRecord, cached: bool) {
    let when = if cached {
        ", when the cached stage was built"
    } else {
        ""
    };
    for l in &record.install {
        p.step(Stage::Install { plan }.label(), format!("{l}{when}"));
    }
    if !record.imports.is_empty() {
        p.step(
            "imports",
            format!(
                "{} compiled module(s) import from the frozen release: {}{when}",
                record.imports.len(),
                record.imports.join(", ")
            ),
        );
    }
    if let Some(smoke) = &record.smoke {
        p.step(
            "nodes",
            format!(
                "{} node class(es) seen in /object_info from {} custom node(s){when}",
                smoke.nodes.values().map(Vec::len).sum::<usize>(),
                smoke.nodes.len()
            ),
        );
        if !plan.workflows.is_empty() {
            p.step(
                "workflows",
                format!(
                    "{} checked against /object_info, {} run on the CPU ({:.1}s{when})",
                    plan.workflows.len(),
                    plan.workflows.iter().filter(|w| w.run).count(),
                    smoke.workflow_seconds
                ),
            );
        }
    }
    if !record.state.is_empty() {
        p.step(
            "state",
            format!(
                "{} path(s) the app writes become links into the host's node state: {}",
                record.state.len(),
                record
                    .state
                    .iter()
                    .map(|s| s.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    p.step(
        Stage::HostLibs.label(),
        format!(
            "{} shared libraries of the interpreter come from the host: {}",
            record.host_libs.len(),
            record.host_libs.join(" ")
        ),
    );
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
    // `--use-sage-attention` makes ComfyUI import sageattention at start (no GPU needed) and say
    // so; a release that asks for it must show it did.
    if plan
        .recipe
        .launch
        .args
        .iter()
        .any(|a| a == "--use-sage-attention")
        && !fs_err::read_to_string(log)
            .unwrap_or_default()
            .contains("Using sage attention")
    {
        problems.push(
            "the release starts with --use-sage-attention, but the smoke start did not log \
             `Using sage attention`"
                .to_owned(),
        );
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
    /// Its compiled modules, by import name (checked to import from the frozen release).
    modules: Vec<String>,
}

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub struct Built {
    pub id: String,
    pub path: PathBuf,
    pub stage_cached: bool,
    /// The release tree the bundle was packed from (in the build cache).
    pub stage: PathBuf,
    pub seconds: f64,
    /// Where the time went, per kind of step.
    pub stages: Vec<StageTime>,
    /// Frames in the bundle, and how many were copied from an earlier bundle (not compressed).
    pub frames: usize,
    pub frames_copied: usize,
    /// Bytes hashed for file digests (files an earlier pack had not read), read once with their frames.
    pub digest_bytes_read: u64,
}

/// The extension stage: each recipe extension's wheel, compiled (against a private copy of the
/// env, with the toolkit's compiler where the recipe has one) or taken from the cache by digest,
/// and its kernels checked for the recipe's GPU. A required one that fails stops the build; an
/// optional one is skipped with a warning.
fn build_extensions(
    p: &Steps,
    plan: &Plan,
    lock: &Lock,
    trees: &[Checkout],
    cache: &Path,
    env_d: &str,
    toolkit: Option<&(toolkit::Toolkit, String)>,
) -> Result<Vec<BuiltWheel>> {
    let r = &plan.recipe;
    let env_dir = cache.env_dir(env_d);
    let ext_base = ext_base(env_d, toolkit.map(|(_, d)| d.as_str()));
    // What reads the kernels' architectures: the toolkit's cuobjdump, or the system toolkit's.
    let cuobjdump = |e: &crate::recipe::ExtensionSection| -> Option<PathBuf> {
        let home = match &toolkit {
            Some((tk, _)) => tk.cuda_home(),
            None if !r.target.cuda_home.is_empty() => PathBuf::from(&r.target.cuda_home),
            None => PathBuf::from(e.env.get("CUDA_HOME")?),
        };
        Some(home.join("bin/cuobjdump")).filter(|p| p.exists())
    };
    let mut wheels = Vec::new();
    for e in &r.extensions {
        let commit = lock.commit(Role::Extension, &e.name).unwrap_or("");
        let d = ext_digest(e, commit, &ext_base);
        let src = trees
            .iter()
            .find(|t| t.source.role == Role::Extension && t.source.name == e.name)
            .map(|t| t.tree.clone());
        let stage = Stage::Extension {
            recipe: r,
            ext: e,
            digest: Some(d.clone()),
        };
        let exists = stage.cached(cache) == Some(true);
        p.step(
            stage.label(),
            format!(
                "{} {} {}",
                e.name,
                support::short_id(&d),
                if exists { "cached" } else { "compiling" }
            ),
        );
        // Build against a private copy of the env so nothing the build writes lands in the cache.
        let built = if exists {
            ext::wheel(
                e,
                src.as_deref(),
                Path::new("/nonexistent"),
                &[],
                &d,
                cache,
                lock.source_date_epoch,
            )
        } else {
            let (python, extra) = match &toolkit {
                Some((tk, _)) => {
                    let home = tk.cuda_home();
                    let path = format!(
                        "{}:{}",
                        home.join("bin").display(),
                        std::env::var("PATH").unwrap_or_default()
                    );
                    (
                        tk.python(),
                        vec![
                            ("CUDA_HOME".to_owned(), home.display().to_string()),
                            ("PATH".to_owned(), path),
                        ],
                    )
                }
                None => (env_dir.join("venv/bin/python"), Vec::new()),
            };
            let t = Instant::now();
            let w = ext::wheel(
                e,
                src.as_deref(),
                &python,
                &extra,
                &d,
                cache,
                lock.source_date_epoch,
            );
            if w.is_ok() {
                p.step(
                    stage.label(),
                    format!("{} compiled in {:.0}s", e.name, t.elapsed().as_secs_f64()),
                );
            }
            w
        };
        // The kernels must be built for the recipe's GPU: `cuobjdump --list-elf` names them.
        let built = built.and_then(|wheel| {
            let modules = if r.target.arch_list.is_empty() {
                Vec::new()
            } else {
                let Some(dump) = cuobjdump(e) else {
                    bail!(
                        "no cuobjdump in the CUDA toolkit to check {}'s kernels are built for {}",
                        e.name,
                        r.target.arch_list
                    );
                };
                let found = toolkit::wheel_sass(
                    &wheel,
                    &dump,
                    &cache.scratch(&format!("sass-{}", support::short_id(&d))),
                )?;
                for (m, arches) in &found {
                    p.step(
                        "sass",
                        format!(
                            "{m}: {}",
                            if arches.is_empty() {
                                "no device code".to_owned()
                            } else {
                                arches.join(" ")
                            }
                        ),
                    );
                }
                toolkit::check_sass(&e.name, &found, &r.target.arch_list)?;
                toolkit::module_names(&found)
            };
            Ok((wheel, modules))
        });
        match built {
            Ok((wheel, modules)) => wheels.push(BuiltWheel {
                ext: e.clone(),
                commit: commit.to_owned(),
                wheel,
                modules,
            }),
            Err(err) if e.required => {
                return Err(err.context(format!("required extension {} failed to build", e.name)))
            }
            Err(err) => p.warn(format!("optional extension {} skipped: {err:#}", e.name)),
        }
    }
    Ok(wheels)
}

/// The env stage: reused from the cache, or built in scratch and renamed into place.
fn ensure_env(
    p: &Steps,
    r: &crate::recipe::Recipe,
    lock: &Lock,
    interp: &env::Interpreter,
    env_d: &str,
    cache: &Path,
) -> Result<PathBuf> {
    let stage = Stage::Env {
        recipe: r,
        digest: Some(env_d.to_owned()),
    };
    let env_dir = cache.env_dir(env_d);
    if stage.cached(cache) == Some(true) {
        p.step(
            stage.label(),
            format!("{} cached", support::short_id(env_d)),
        );
        return Ok(env_dir);
    }
    p.step(
        stage.label(),
        format!(
            "{} building: interpreter, venv, {} locked packages",
            support::short_id(env_d),
            lock.requirements.matches("==").count()
        ),
    );
    let tmp = cache.scratch(&format!("env-{env_d}"));
    let _ = fs_err::remove_dir_all(&tmp);
    let scratch = Scratch(&tmp);
    env::build_env(r, interp, &lock.requirements, cache, &tmp)?;
    if let Some(p) = env_dir.parent() {
        fs_err::create_dir_all(p)?;
    }
    fs_err::rename(&tmp, &env_dir)?;
    drop(scratch);
    Ok(env_dir)
}

/// The toolkit stage, where the recipe has one: the env with the CUDA toolkit wheels beside it,
/// whose nvcc must know the recipe's architectures. Returns it with its digest.
fn ensure_toolkit(
    p: &Steps,
    plan: &Plan,
    lock: &Lock,
    env_d: &str,
    env_dir: &Path,
    cache: &Path,
) -> Result<Option<(toolkit::Toolkit, String)>> {
    let r = &plan.recipe;
    let Some(t) = &r.toolkit else {
        return Ok(None);
    };
    if lock.toolkit.is_empty() {
        bail!(
            "{} has no [toolkit] pins; run `comfy-build lock {}`",
            plan.lock_path().display(),
            plan.recipe_path.display()
        );
    }
    let d = toolkit_digest(env_d, &lock.toolkit);
    let stage = Stage::Toolkit {
        recipe: r,
        toolkit: t,
        digest: Some(d.clone()),
    };
    let what = if stage.cached(cache) == Some(true) {
        "cached"
    } else {
        "installing the CUDA toolkit wheels beside the env"
    };
    p.step(stage.label(), format!("{} {what}", support::short_id(&d)));
    let (tk, _) = toolkit::ensure(env_dir, &lock.toolkit, &d, cache)?;
    let (release, missing) = toolkit::nvcc_report(&tk.cuda_home(), &r.target.arch_list)?;
    if !missing.is_empty() {
        bail!(
            "the toolkit's nvcc ({release}) does not know {}; pin a newer nvidia-cuda-nvcc",
            missing.join(", ")
        );
    }
    p.step(stage.label(), format!("nvcc: {release}"));
    Ok(Some((tk, d)))
}

/// The lock the build uses: the recipe's, if it is fresh; otherwise refreshed and saved, or with
/// `--locked` refused.
fn resolve_lock(p: &Steps, plan: &Plan, cache: &Path, locked: bool) -> Result<Lock> {
    let lock_path = plan.lock_path();
    Ok(match Lock::load(&lock_path)? {
        Some(l) => match l.stale_reason(plan) {
            None => l,
            Some(why) if locked => bail!(
                "{} is stale ({why}); run `comfy-build lock {}`",
                lock_path.display(),
                plan.recipe_path.display()
            ),
            Some(why) => {
                p.step(
                    "lock",
                    format!("refreshing {} ({why})", lock_path.display()),
                );
                let l = lock::locked_by(p, plan, cache, Some(&l))?;
                l.save(&lock_path)?;
                l
            }
        },
        None if locked => bail!(
            "{} does not exist; run `comfy-build lock {}`",
            lock_path.display(),
            plan.recipe_path.display()
        ),
        None => {
            p.step("lock", format!("writing {}", lock_path.display()));
            let l = lock::locked_by(p, plan, cache, None)?;
            l.save(&lock_path)?;
            l
        }
    })
}

/// The release tree in `tmp`: a hardlink farm of the cached env with the extension wheels (and
/// the toolkit, where the release carries it), ComfyUI and its custom nodes at their locked
/// commits, the nested sources, the declared models checked, the install scripts named or run,
/// and the launch entry. Returns what the install step reports.
#[allow(clippy::too_many_arguments)]
fn assemble(
    plan: &Plan,
    lock: &Lock,
    trees: &[Checkout],
    wheels: &[BuiltWheel],
    toolkit: bool,
    env_dir: &Path,
    cache: &Path,
    tmp: &Path,
) -> Result<Vec<String>> {
    let r = &plan.recipe;
    // A hardlink farm of the cached env: nothing below writes into an existing file in place.
    process::run(
        Command::new("cp")
            .arg("-al")
            .arg(format!("{}/.", env_dir.display()))
            .arg(tmp),
    )?;
    for BuiltWheel { wheel: w, .. } in wheels {
        ext::install(w, &tmp.join("venv/bin/python"), cache)?;
    }
    if let (Some(t), true) = (&r.toolkit, toolkit) {
        if t.in_release {
            ext::install_locked(&lock.toolkit, &tmp.join("venv/bin/python"), cache, "copy")?;
        }
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
    // What nodes' install scripts would fetch, pinned: nested sources, declared models;
    // then each script named, or run with its writes checked.
    install::place_nested(tmp, trees)?;
    let recipe_dir = plan
        .recipe_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let mut install_lines = Vec::new();
    if !r.models.is_empty() {
        let mut bytes = 0;
        for m in &r.models {
            install::fetch_model(m, &recipe_dir, cache)?;
            bytes += m.size;
        }
        install_lines.push(format!(
            "{} model file(s) declared ({bytes} bytes), each checked by sha256; not in the \
             bundle: hosts fetch them (`comfyctl models --fetch`)",
            r.models.len()
        ));
    }
    install_lines.extend(install::run_scripts(tmp, trees, &r.models, &recipe_dir, cache)?.lines);
    let launch_sh = tmp.join(bundle::LAUNCH_ENTRY);
    fs_err::write(&launch_sh, launch::render(&r.launch.env))?;
    fs_err::set_permissions(&launch_sh, std::fs::Permissions::from_mode(0o755))?;
    Ok(install_lines)
}

/// `comfy-build build`.
pub fn build(
    plan: &Plan,
    key: &keys::SecretKey,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Built> {
    let t0 = Instant::now();
    let p = Steps::new(progress);
    env::check_platform(&plan.recipe.target.platform)?;
    let cache = &opts.cache;
    fs_err::create_dir_all(cache)?;
    let cache = fs_err::canonicalize(cache)?;
    let r = &plan.recipe;
    let lock_path = plan.lock_path();
    let lock = resolve_lock(&p, plan, &cache, opts.locked)?;
    let lock_sha = hex::encode(Sha256::digest(fs_err::read(&lock_path)?));

    p.step(
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
    let env_dir = ensure_env(&p, r, &lock, &interp, &env_d, &cache)?;
    // A CUDA toolkit from wheels: the env with the compiler beside it, in the cache only.
    let toolkit = ensure_toolkit(&p, plan, &lock, &env_d, &env_dir, &cache)?;
    let wheels = build_extensions(&p, plan, &lock, &trees, &cache, &env_d, toolkit.as_ref())?;

    let workflows = serde_json::to_string(&plan.workflows)?;
    let stage_d = stage_digest(&StageInputs {
        env: &env_d,
        lock_sha256: &lock_sha,
        recipe_sha256: &plan.recipe_sha256,
        wheel_keys: wheels.iter().map(|b| wheel_key(&cache, &b.wheel)).collect(),
        smoke: opts.smoke,
        workflows_json: &workflows,
        toolkit: r.toolkit.as_ref().map(|t| toolkit_part(t, &lock.toolkit)),
    });
    let stage_value = Stage::Assemble {
        digest: Some(stage_d.clone()),
    };
    let stage = cache.stage_dir(&stage_d);
    let smoke_file = cache.stage_record(&stage_d);
    let stage_cached = stage_value.cached(&cache) == Some(true);
    let enabled: Vec<String> = trees
        .iter()
        .filter(|t| t.source.role == Role::Node && !t.source.disabled)
        .map(|t| t.source.name.clone())
        .collect();
    if stage_cached {
        p.step(
            stage_value.label(),
            format!("{} cached", support::short_id(&stage_d)),
        );
    } else {
        p.step(
            stage_value.label(),
            format!("{} assembling", support::short_id(&stage_d)),
        );
        let tmp = cache.scratch(&format!("stage-{stage_d}"));
        let _ = fs_err::remove_dir_all(&tmp);
        fs_err::create_dir_all(&tmp)?;
        let scratch = Scratch(&tmp);
        let install_lines = assemble(
            plan,
            &lock,
            &trees,
            &wheels,
            toolkit.is_some(),
            &env_dir,
            &cache,
            &tmp,
        )?;
        p.step(Stage::Freeze.label(), "bytecode, metadata, relocation lint");
        freeze::freeze(&tmp)?;
        freeze::lint(
            &tmp,
            &[
                tmp.to_string_lossy().into_owned(),
                cache.to_string_lossy().into_owned(),
            ],
            true,
        )?;
        // Every compiled module of every extension imports from the frozen release with its own
        // interpreter (no GPU needed to import), not only the packages' top modules.
        let imports: Vec<String> = wheels.iter().flat_map(|w| w.modules.clone()).collect();
        if !imports.is_empty() {
            let home = tempfile::tempdir()?;
            process::run(
                Command::new(tmp.join("venv/bin/python"))
                    .args([
                        "-I",
                        "-B",
                        "-c",
                        "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
                    ])
                    .args(&imports)
                    .env("HOME", home.path())
                    .env("CUDA_VISIBLE_DEVICES", ""),
            )
            .context("importing the extensions' compiled modules from the frozen release")?;
        }
        let smoke = if opts.smoke {
            p.step(
                Stage::Smoke {
                    plan,
                    enabled: true,
                }
                .label(),
                "starting the frozen app on loopback, as the host's unit does",
            );
            let copy = cache.scratch(&format!("smoke-{}", support::short_id(&stage_d)));
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
            let log = cache.log(&format!("smoke-{}.log", support::short_id(&stage_d)));
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
            Some(report)
        } else {
            None
        };
        let state = state::apply(&tmp, &state::paths(&trees, smoke.as_ref())?)?;
        let host_libs = hostlibs::host_libs(&tmp)?;
        if let Some(p) = stage.parent() {
            fs_err::create_dir_all(p)?;
        }
        fs_err::write(
            &smoke_file,
            serde_json::to_vec(&StageRecord {
                smoke,
                state,
                host_libs,
                imports,
                install: install_lines,
            })?,
        )?;
        fs_err::rename(&tmp, &stage)?;
        drop(scratch);
    }
    let record: StageRecord = serde_json::from_slice(&fs_err::read(&smoke_file)?)?;
    report_stage_checks(&p, plan, &record, stage_cached);

    p.step(
        Stage::Pack {
            recipe: r,
            out: &opts.out,
        }
        .label(),
        "signing the bundle",
    );
    let manifest = manifest(
        plan, &lock, &lock_sha, &trees, &wheels, record, &stage, &cache,
    )?;
    fs_err::create_dir_all(&opts.out)?;
    let tmp_out = opts.out.join(format!(
        ".{}-{}.partial.bundle",
        r.bundle.name, r.bundle.version
    ));
    let packs = PackCache(cache.pack_cache());
    let pack_opts = bundle::PackOptions {
        jobs: opts.jobs,
        reuse: packs.load(),
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
        support::short_id(&packed.id)
    ));
    fs_err::rename(&tmp_out, &path)?;
    p.note(
        "packed",
        format!(
            "{} frames, {} copied from an earlier bundle; {} hashed (files not known by identity)",
            packed.frames,
            packed.reused_frames,
            support::diff::human_bytes(packed.hashed_bytes)
        ),
    );
    if let Err(e) = packs.save(&path, &packed) {
        p.warn(format!(
            "the pack cache was not updated ({e:#}); the next build packs from scratch"
        ));
    }
    let stages = p.times(Instant::now());
    p.note(
        "times",
        stages
            .iter()
            .map(|t| format!("{} {:.1}s", t.stage, t.seconds))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(Built {
        id: packed.id,
        path,
        stage_cached,
        stage: stage.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        stages,
        frames: packed.frames,
        frames_copied: packed.reused_frames,
        digest_bytes_read: packed.hashed_bytes,
    })
}

/// What the next pack can take from this one (`cache/pack`): the digests of the files it read, by
/// identity, and the frame tables of the newest bundles it wrote, so a rebuild reads and compresses
/// only what changed.
struct PackCache(PathBuf);

/// Frame tables kept: the newest bundles a rebuild is likely to share frames with.
const FRAME_TABLES: usize = 3;

impl PackCache {
    fn tables(&self) -> Vec<(std::time::SystemTime, PathBuf)> {
        let mut t: Vec<_> = fs_err::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".frames"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        t.sort();
        t.reverse();
        t
    }

    fn load(&self) -> bundle::reuse::Reuse {
        bundle::reuse::Reuse {
            digests: bundle::reuse::DigestCache::load(&self.0.join("digests")),
            sources: self
                .tables()
                .iter()
                .filter_map(|(_, p)| bundle::reuse::FrameSource::load(p))
                .collect(),
        }
    }

    fn save(&self, bundle_path: &Path, packed: &bundle::Packed) -> Result<()> {
        fs_err::create_dir_all(&self.0)?;
        packed.digests.save(&self.0.join("digests"))?;
        let path = fs_err::canonicalize(bundle_path)?;
        bundle::reuse::FrameSource::new(&path, packed.frame_records.clone())?.save(
            &self
                .0
                .join(format!("{}.frames", support::short_id(&packed.id))),
        )?;
        for (_, old) in self.tables().into_iter().skip(FRAME_TABLES) {
            let _ = fs_err::remove_file(old);
        }
        Ok(())
    }
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

#[cfg(test)]
mod steps_tests {
    use super::*;

    /// Keeps what a build reports.
    #[derive(Default)]
    struct Recorded(std::cell::RefCell<Vec<String>>);

    impl Progress for Recorded {
        fn line(&self, label: &str, detail: &str) {
            self.0.borrow_mut().push(format!("{label}: {detail}"));
        }
        fn warn(&self, text: &str) {
            self.0.borrow_mut().push(format!("warning: {text}"));
        }
    }

    #[test]
    fn steps_go_to_the_printer_given_and_each_kind_is_timed_until_the_next_step() {
        let out = Recorded::default();
        let p = Steps::new(&out);
        let t0 = Instant::now();
        p.step("env", "building");
        std::thread::sleep(Duration::from_millis(30));
        p.note("packed", "not a step");
        p.step("smoke", "starting");
        std::thread::sleep(Duration::from_millis(10));
        p.step("env", "again");
        p.warn("optional extension x skipped");
        let times = p.times(Instant::now());
        let total = t0.elapsed().as_secs_f64();
        assert_eq!(
            out.0.borrow().as_slice(),
            [
                "env: building",
                "packed: not a step",
                "smoke: starting",
                "env: again",
                "warning: optional extension x skipped"
            ]
        );
        let names: Vec<&str> = times.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(names, ["env", "smoke"]);
        assert!(
            times[0].seconds >= 0.030 && times[1].seconds >= 0.010,
            "{times:?}"
        );
        let sum: f64 = times.iter().map(|t| t.seconds).sum();
        assert!(sum <= total, "{sum} > {total}");
    }
}
