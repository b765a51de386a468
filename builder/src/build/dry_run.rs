//! `build --dry-run`: what would happen, without fetching, installing or compiling anything.

use super::digest::{
    env_digest, ext_base, ext_digest, stage_digest, toolkit_digest, toolkit_part, wheel_key,
    StageInputs,
};
use super::BuildOptions;
use crate::cache::Layout as _;
use crate::lock::Lock;
use crate::plan::{Plan, Role, Source};
use crate::{env, freeze};
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

/// What compiling an extension costs, where it was measured (or estimated) for a 12.1 build.
fn compile_cost(e: &crate::recipe::ExtensionSection) -> Option<String> {
    let n = e.name.to_ascii_lowercase();
    Some(
        if n.contains("sage") {
            "cost: measured for 12.1 on a 2-core x86_64 machine with MAX_JOBS=2: 8 min 22 s and 9 min 11 s in two builds, 3.2 GiB per compiler job at peak (5.0 GiB in all); the Spark's 20 cores take less"
        } else if n.contains("flash") {
            "cost: estimated, FLASH_ATTN_CUDA_ARCHS=120: tens of minutes with MAX_JOBS=4 on the Spark, several hours on 2 cores (hundreds of kernel instantiations, about 4 GB per job)"
        } else if n.contains("torchao") {
            "cost: estimated, a few minutes (a handful of CUDA sources); PyPI's wheel, where one is built for the recipe's torch, needs no compile"
        } else {
            return None;
        }
        .to_owned(),
    )
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
                    .is_some_and(|d| opts.cache.env_dir(d).exists()),
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
    let tk_locked = lock.as_ref().map_or("", |l| l.toolkit.as_str());
    let tk_d = match (&r.toolkit, &env_d) {
        (Some(_), Some(env_d)) if !tk_locked.is_empty() => Some(toolkit_digest(env_d, tk_locked)),
        _ => None,
    };
    if let Some(t) = &r.toolkit {
        stages.push(PlannedStage {
            stage: "toolkit".into(),
            cached: Some(
                tk_d.as_ref()
                    .is_some_and(|d| opts.cache.toolkit_dir(d).join("cuda-home").is_dir()),
            ),
            digest: Some(tk_d.clone()),
            required: None,
            enabled: None,
            commands: vec![
                "cp -al env/<digest> toolkit/<digest>".to_owned(),
                format!(
                    "uv pip install --require-hashes --no-deps <locked: {}>",
                    t.packages.join(" ")
                ),
                "cuda-home/{bin,include,nvvm} -> venv/.../nvidia/cu13/*, lib64/* -> lib/*, libcudart.so -> libcudart.so.13".to_owned(),
                format!(
                    "nvcc --version; nvcc --list-gpu-arch must know {}",
                    crate::toolkit::wanted_sms(&r.target.arch_list)
                        .iter()
                        .map(|s| s.replacen("sm_", "compute_", 1))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ],
        });
    }
    let base = env_d
        .as_deref()
        .map(|env_d| ext_base(env_d, tk_d.as_deref()));
    let mut ext_digests = Vec::new();
    for e in &r.extensions {
        let commit = lock
            .as_ref()
            .and_then(|l| l.commit(Role::Extension, &e.name))
            .unwrap_or("");
        let d = base.as_deref().map(|base| ext_digest(e, commit, base));
        ext_digests.push(d.clone());
        let envs: Vec<String> = e.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        stages.push(PlannedStage {
            stage: format!("extension {}", e.name),
            cached: Some(d.as_ref().is_some_and(|d| opts.cache.wheel_dir(d).is_dir())),
            digest: Some(d),
            required: Some(e.required),
            enabled: None,
            commands: {
                let mut c = vec![format!(
                    "{}{} uv build --wheel --no-build-isolation {}",
                    if r.toolkit.is_some() {
                        "CUDA_HOME=toolkit/<digest>/cuda-home PATH=$CUDA_HOME/bin:$PATH "
                    } else {
                        ""
                    },
                    envs.join(" "),
                    e.git.as_deref().or(e.pypi.as_deref()).unwrap_or("")
                )];
                if !r.target.arch_list.is_empty() {
                    c.push(format!(
                        "cuobjdump --list-elf <each module>: refused without {}",
                        crate::toolkit::wanted_sms(&r.target.arch_list).join(" ")
                    ));
                }
                if let Some(cost) = compile_cost(e) {
                    c.push(cost);
                }
                c
            },
        });
    }
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut install = Vec::new();
    for src in plan.sources.iter().filter(|x| x.role == Role::Nested) {
        if let Some((node, path)) = &src.nested_in {
            install.push(format!(
                "place {} @ {} in custom_nodes/{node}/{path}",
                src.url, src.rev
            ));
        }
    }
    for m in &r.models {
        install.push(format!(
            "model models/{} ({} bytes, sha256 {}) from {}: checked, not in the bundle",
            m.path,
            m.size,
            support::short_id(&m.sha256),
            if m.mirror.is_empty() {
                &m.url
            } else {
                &m.mirror
            }
        ));
    }
    for src in plan
        .sources
        .iter()
        .filter(|x| matches!(x.role, Role::Node | Role::Nested) && !x.disabled)
    {
        install.push(match src.install_script {
            crate::recipe::InstallScript::Run => format!(
                "run {}/install.py ({}network, env behind an overlay; writes outside the node fail)",
                src.name,
                if src.install_network { "" } else { "no " }
            ),
            crate::recipe::InstallScript::Skip => {
                format!("{}/install.py, if any: named, not run", src.name)
            }
        });
    }
    stages.push(PlannedStage::plain("install", install));
    let stage_d = stage_digest_if_known(
        plan,
        opts,
        lock.as_ref(),
        stale.is_none(),
        env_d.as_deref(),
        &ext_digests,
    );
    stages.push(PlannedStage {
        digest: Some(stage_d.clone()),
        cached: Some(
            stage_d
                .as_ref()
                .is_some_and(|d| opts.cache.stage_dir(d).exists()),
        ),
        ..PlannedStage::plain(
            "stage",
            s(&[
                "cp -al env/<digest> stage (hardlinks; nothing below writes a file in place)",
                "uv pip install <wheels>",
                "ComfyUI + custom_nodes from git",
                bundle::LAUNCH_ENTRY,
            ]),
        )
    });
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
