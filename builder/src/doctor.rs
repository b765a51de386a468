//! `comfy-build doctor [RECIPE]`: the build-host half of the seed's troubleshooting guide as checks
//! (git, uv, the recipe's Python, gcc/g++ >= 9, nvcc under cuda_home and its version, the arch list
//! spelling, free disk, RAM against MAX_JOBS, reachability of the torch index and git remotes).

use crate::cache::Layout as _;
use crate::recipe::Recipe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::doctor::{gib, Report};

fn version_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = support::cmd::stdout(Command::new(cmd).args(args)).ok()?;
    Some(out.lines().next().unwrap_or("").trim().to_owned())
}

fn major(v: &str) -> Option<u32> {
    v.split_whitespace().last()?.split('.').next()?.parse().ok()
}

/// Runs `git ls-remote` with a deadline (an unreachable host must not hang the report).
fn reachable_git(url: &str, timeout: Duration) -> Result<(), String> {
    let o = support::cmd::output(
        Command::new("git")
            .args(["ls-remote", "--heads", url])
            .env("GIT_TERMINAL_PROMPT", "0"),
        timeout,
    )
    .map_err(|e| format!("{e:#}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("git ls-remote failed ({})", o.status))
    }
}

pub fn doctor(recipe: Option<(&Recipe, &Path)>, cache: &Path) -> Report {
    let mut r = Report::default();
    match version_of("git", &["--version"]) {
        Some(v) => r.ok("git", v),
        None => r.fail("git", "not found", "apt-get install git"),
    }
    match version_of("uv", &["--version"]) {
        Some(v) => r.ok("uv", v),
        None => r.fail(
            "uv",
            "not found",
            "pip install uv (scripts/install-deps.sh does it)",
        ),
    }
    for cc in ["gcc", "g++"] {
        match version_of(cc, &["-dumpfullversion"]).or_else(|| version_of(cc, &["--version"])) {
            Some(v) if major(&v).is_some_and(|m| m >= 9) => r.ok(cc, v),
            Some(v) => r.fail(
                cc,
                format!("{v} is older than 9"),
                "install gcc 9 or newer (build-essential)",
            ),
            None => r.fail(cc, "not found", "apt-get install build-essential"),
        }
    }
    let free = support::doctor::free_bytes(cache);
    match free {
        Some(f) if f < 2 << 30 => r.fail(
            "disk (cache)",
            format!("{} free at {}", gib(f), cache.display()),
            "free space or point --cache elsewhere",
        ),
        Some(f) if f < 30 << 30 => r.warn(
            "disk (cache)",
            format!("{} free at {}", gib(f), cache.display()),
            "a CUDA build needs ~30 GiB for the torch stack and stage",
        ),
        Some(f) => r.ok(
            "disk (cache)",
            format!("{} free at {}", gib(f), cache.display()),
        ),
        None => r.warn("disk (cache)", "cannot tell", "check `df` by hand"),
    }
    let Some((recipe, path)) = recipe else {
        r.ok("recipe", "none given: only the tools were checked");
        return r;
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    match crate::env::check_platform(&recipe.target.platform) {
        Ok(host) => r.ok(
            "platform",
            format!("{host} builds {}", recipe.target.platform),
        ),
        Err(e) => r.fail(
            "platform",
            format!("{e:#}"),
            format!(
                "run the build on a {} host with glibc 2.28 or newer",
                recipe.target.platform
            ),
        ),
    }
    let managed = recipe.python.path.is_empty();
    // The doctor installs nothing: a managed CPython not there yet is the build's to install.
    match crate::env::installed_interpreter(recipe) {
        Ok(i) => r.ok(
            "python",
            format!(
                "{} is Python {} ({})",
                if managed {
                    "uv's managed CPython"
                } else {
                    recipe.python.path.as_str()
                },
                i.version,
                i.prefix.display()
            ),
        ),
        Err(e) if managed => r.warn(
            "python",
            format!("{e:#}"),
            format!(
                "the build runs `uv python install {}` (GitHub or UV_PYTHON_INSTALL_MIRROR)",
                recipe.python.version
            ),
        ),
        Err(e) => r.fail(
            "python",
            format!("{e:#}"),
            format!(
                "a self-contained Python {} as python.path (or none: uv's managed CPython)",
                recipe.python.version
            ),
        ),
    }
    let needs_cuda = !recipe.torch.cuda.is_empty();
    let nvcc = Path::new(&recipe.target.cuda_home).join("bin/nvcc");
    if let Some(t) = &recipe.toolkit {
        toolkit_checks(&mut r, recipe, t, path, cache);
    } else if needs_cuda {
        let release_line = support::cmd::stdout(Command::new(&nvcc).arg("--version"))
            .ok()
            .map(|o| {
                o.lines()
                    .find(|l| l.contains("release"))
                    .unwrap_or("")
                    .to_owned()
            });
        match release_line {
            Some(line) if line.contains(&format!("release {}", recipe.torch.cuda)) => {
                r.ok("nvcc", line.trim().to_owned())
            }
            Some(line) => r.fail(
                "nvcc",
                format!("{} reports {}", nvcc.display(), line.trim()),
                format!(
                    "install the CUDA {} toolkit at {}",
                    recipe.torch.cuda, recipe.target.cuda_home
                ),
            ),
            None => r.fail(
                "nvcc",
                format!("{} not found", nvcc.display()),
                format!(
                    "install the CUDA {} toolkit at {} (target.cuda_home)",
                    recipe.torch.cuda, recipe.target.cuda_home
                ),
            ),
        }
    } else {
        r.ok("nvcc", "not needed: the recipe builds no CUDA code");
    }
    match crate::plan::check_arch_list(&recipe.target.arch_list) {
        Ok(()) if recipe.target.arch_list.is_empty() => r.ok("arch list", "none (no CUDA kernels)"),
        Ok(()) => r.ok(
            "arch list",
            format!(
                "{:?} is spelled as TORCH_CUDA_ARCH_LIST expects",
                recipe.target.arch_list
            ),
        ),
        Err(e) => r.fail(
            "arch list",
            e.to_string(),
            "write arch_list = \"12.1\" (SageAttention skips `121` and `sm_121` silently)",
        ),
    }
    let mem = support::doctor::mem_total().unwrap_or(0);
    for e in &recipe.extensions {
        let Some(jobs) = e.env.get("MAX_JOBS").and_then(|j| j.parse::<u64>().ok()) else {
            continue;
        };
        let per_job: u64 = if e.name.contains("flash") {
            5 << 30
        } else {
            2 << 30
        };
        let need = jobs * per_job;
        let name = format!("RAM for {} (MAX_JOBS={jobs})", e.name);
        if mem < need {
            r.warn(
                &name,
                format!("{} of RAM, ~{} wanted", gib(mem), gib(need)),
                format!("lower MAX_JOBS to {}", (mem / per_job).max(1)),
            );
        } else {
            r.ok(&name, format!("{} of RAM, ~{} wanted", gib(mem), gib(need)));
        }
    }
    if recipe.torch.install && !recipe.torch.index_url.is_empty() {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build();
        match client.map(|c| c.get(&recipe.torch.index_url).send()) {
            Ok(Ok(resp)) if resp.status().is_success() => {
                r.ok("torch index", format!("{} answers", recipe.torch.index_url))
            }
            Ok(Ok(resp)) => r.fail(
                "torch index",
                format!("{} answered {}", recipe.torch.index_url, resp.status()),
                "check the URL and the proxy",
            ),
            Ok(Err(e)) => r.fail(
                "torch index",
                format!("{} unreachable: {e}", recipe.torch.index_url),
                "check the network or mirror the index",
            ),
            Err(e) => r.fail("torch index", e.to_string(), "check the TLS setup"),
        }
    }
    let mut remotes: Vec<&str> = vec![&recipe.comfyui.git];
    remotes.extend(recipe.custom_nodes.iter().map(|n| n.git.as_str()));
    remotes.extend(recipe.extensions.iter().filter_map(|e| e.git.as_deref()));
    for url in remotes {
        let resolved = if url.contains("://") || Path::new(url).is_absolute() {
            url.to_owned()
        } else {
            dir.join(url).to_string_lossy().into_owned()
        };
        match reachable_git(&resolved, Duration::from_secs(10)) {
            Ok(()) => r.ok("git remote", url.to_owned()),
            Err(e) => {
                let cached = crate::git::mirror(cache, &resolved).exists();
                let msg = format!("{url}: {e}");
                if cached {
                    r.warn(
                        "git remote",
                        msg,
                        "a mirror is cached; pinned commits it holds still build",
                    );
                } else {
                    r.fail(
                        "git remote",
                        msg,
                        "check the URL and the network (or run where GitHub is reachable)",
                    );
                }
            }
        }
    }
    r
}

/// The version a pin asks for (`nvidia-cuda-nvcc==13.0.88` -> `13.0.88`).
fn pinned<'a>(packages: &'a [String], name: &str) -> Option<&'a str> {
    packages
        .iter()
        .find_map(|p| p.strip_prefix(name)?.strip_prefix("=="))
}

/// A toolkit from wheels, checked as a system one is: the compiler's release against torch's
/// CUDA, its companions at the compiler's release (a newer crt or nvvm beside it makes ptxas refuse
/// the compiler's output: `Unsupported .version`), the lock, and, once the build cache holds it,
/// `nvcc` itself and the architectures it knows.
fn toolkit_checks(
    r: &mut Report,
    recipe: &Recipe,
    t: &crate::recipe::ToolkitSection,
    recipe_path: &Path,
    cache: &Path,
) {
    let Some(nvcc) = pinned(&t.packages, "nvidia-cuda-nvcc") else {
        r.fail(
            "nvcc",
            "[toolkit] has no nvidia-cuda-nvcc",
            "pin nvidia-cuda-nvcc==<CUDA release>",
        );
        return;
    };
    if !recipe.torch.cuda.is_empty() && !nvcc.starts_with(&format!("{}.", recipe.torch.cuda)) {
        r.fail(
            "nvcc",
            format!(
                "nvidia-cuda-nvcc=={nvcc} beside torch's CUDA {}",
                recipe.torch.cuda
            ),
            format!("pin the CUDA {} compiler", recipe.torch.cuda),
        );
    } else {
        r.ok(
            "nvcc",
            format!("nvidia-cuda-nvcc=={nvcc} from PyPI (build cache only)"),
        );
    }
    let mismatched: Vec<String> = ["nvidia-cuda-crt", "nvidia-nvvm"]
        .iter()
        .filter_map(|n| {
            pinned(&t.packages, n)
                .filter(|v| *v != nvcc)
                .map(|v| format!("{n}=={v}"))
        })
        .collect();
    let missing: Vec<&str> = [
        "nvidia-cuda-crt",
        "nvidia-nvvm",
        "nvidia-cuda-cccl",
        "nvidia-cuda-cuobjdump",
    ]
    .into_iter()
    .filter(|n| pinned(&t.packages, n).is_none())
    .collect();
    if !mismatched.is_empty() {
        r.fail(
            "toolkit wheels",
            format!("{} beside nvcc {nvcc}", mismatched.join(", ")),
            format!("pin them at {nvcc}: ptxas refuses a newer crt's or nvvm's output (`Unsupported .version`)"),
        );
    } else if !missing.is_empty() {
        r.fail(
            "toolkit wheels",
            format!("[toolkit] lacks {}", missing.join(", ")),
            "add them (cuobjdump checks the kernels' architectures)",
        );
    } else {
        r.ok(
            "toolkit wheels",
            format!("{} pinned at the compiler's release", t.packages.join(" ")),
        );
    }
    let plan_lock = recipe_path.with_extension("toml.lock");
    match crate::lock::Lock::load(&plan_lock) {
        Ok(Some(l)) if !l.toolkit.is_empty() => {
            r.ok("toolkit lock", format!("hashed in {}", plan_lock.display()))
        }
        _ => r.warn(
            "toolkit lock",
            format!("{} holds no [toolkit] pins", plan_lock.display()),
            format!("comfy-build lock {}", recipe_path.display()),
        ),
    }
    // Once a build installed it: the compiler itself.
    let homes: Vec<PathBuf> = fs_err::read_dir(cache.toolkits())
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.path().join("cuda-home")))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for home in homes {
        match crate::toolkit::nvcc_report(&home, &recipe.target.arch_list) {
            Ok((release, missing)) if missing.is_empty() => {
                r.ok("toolkit nvcc", format!("{release} ({})", home.display()))
            }
            Ok((release, missing)) => r.fail(
                "toolkit nvcc",
                format!("{release} does not know {}", missing.join(" ")),
                "pin a newer nvidia-cuda-nvcc",
            ),
            Err(e) => r.fail(
                "toolkit nvcc",
                format!("{e:#}"),
                "remove it from the build cache; the next build installs it again",
            ),
        }
    }
}
