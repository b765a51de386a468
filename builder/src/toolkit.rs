//! A CUDA toolkit from pinned PyPI wheels (`[toolkit]`), and what the kernels it compiled are
//! built for. CUDA 13's wheels share one prefix, `site-packages/nvidia/cu13` (bin, include, lib):
//! the env already holds the runtime libraries and headers torch's own dependencies bring (cublas,
//! cusparse, ...); the toolkit stage is a hardlink copy of the env with the compiler's wheels
//! installed into it from the lock's hashes, and `cuda-home/` made of links the way torch's
//! `cpp_extension` looks for a toolkit (`bin`, `include`, `nvvm`, `lib64/*`, `libcudart.so`). It
//! lives in the build cache, never in the release (unless the recipe asks), and is cached by the
//! env and the pins. After a build, `cuobjdump --list-elf` names the SASS architectures of every
//! extension module, and a release whose kernels lack the recipe's architecture is refused.

use crate::cache::Layout as _;
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cmd as process;

/// A toolkit stage in the build cache.
pub struct Toolkit {
    /// `cache/toolkit/<digest>`: `venv/` (the env plus the toolkit) and `cuda-home/`.
    pub dir: PathBuf,
}

impl Toolkit {
    pub fn cuda_home(&self) -> PathBuf {
        self.dir.join("cuda-home")
    }
    /// The interpreter extensions are compiled with (the env's, with the toolkit beside it).
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }
}

/// `site-packages/nvidia/cu13` below a venv.
fn cu13(venv: &Path) -> Result<PathBuf> {
    for e in fs_err::read_dir(venv.join("lib"))? {
        let p = e?.path().join("site-packages/nvidia/cu13");
        if p.is_dir() {
            return Ok(p);
        }
    }
    bail!(
        "{} has no site-packages/nvidia/cu13: the toolkit wheels are CUDA 13's (torch's CUDA 13 \
         build brings the runtime beside them)",
        venv.display()
    )
}

/// Makes `cuda-home/` in `dir` from the toolkit prefix at `cu` (relative links, so the stage can
/// be renamed): what torch's `cpp_extension` expects of `CUDA_HOME`.
fn link_cuda_home(dir: &Path, cu: &Path) -> Result<()> {
    let home = dir.join("cuda-home");
    let lib64 = home.join("lib64");
    fs_err::create_dir_all(&lib64)?;
    let rel = cu
        .strip_prefix(dir)
        .context("the toolkit prefix is outside its stage")?;
    let up = |depth: usize| PathBuf::from("../".repeat(depth)).join(rel);
    for d in ["bin", "include", "nvvm"] {
        if !cu.join(d).exists() {
            bail!("the toolkit wheels gave no {}", cu.join(d).display());
        }
        std::os::unix::fs::symlink(up(1).join(d), home.join(d))?;
    }
    for e in fs_err::read_dir(cu.join("lib"))? {
        let name = e?.file_name();
        std::os::unix::fs::symlink(up(2).join("lib").join(&name), lib64.join(&name))?;
    }
    // cpp_extension links `-lcudart`; the wheels ship only the versioned name.
    if !lib64.join("libcudart.so").exists() {
        let versioned = fs_err::read_dir(cu.join("lib"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with("libcudart.so."))
            .context(
                "the toolkit has no libcudart.so.*: add nvidia-cuda-runtime's (torch brings it)",
            )?;
        std::os::unix::fs::symlink(versioned, lib64.join("libcudart.so"))?;
    }
    Ok(())
}

/// The toolkit stage for the env at `env_dir` and the locked pins `locked` (hashed
/// requirements), made once per `digest`; true when it was cached.
pub fn ensure(env_dir: &Path, locked: &str, digest: &str, cache: &Path) -> Result<(Toolkit, bool)> {
    let dir = cache.toolkit_dir(digest);
    if dir.join("cuda-home").is_dir() {
        return Ok((Toolkit { dir }, true));
    }
    let tmp = cache.scratch(&format!("toolkit-{digest}"));
    let _ = fs_err::remove_dir_all(&tmp);
    fs_err::create_dir_all(&tmp)?;
    // A hardlink farm of the env: uv adds the toolkit's files as new links and never writes into
    // an existing one, so the env (and uv's cache behind it) stays as it was.
    process::run(
        Command::new("cp")
            .arg("-al")
            .arg(format!("{}/.", env_dir.display()))
            .arg(&tmp),
    )?;
    crate::ext::install_locked(locked, &tmp.join("venv/bin/python"), cache, "hardlink")
        .context("installing the [toolkit] wheels")?;
    link_cuda_home(&tmp, &cu13(&tmp.join("venv"))?)?;
    fs_err::create_dir_all(cache.toolkits())?;
    fs_err::rename(&tmp, &dir)?;
    Ok((Toolkit { dir }, false))
}

/// `nvcc --version`'s release line and whether `nvcc --list-gpu-arch` knows every architecture
/// of `arch_list` (`12.1` -> `compute_121`).
pub fn nvcc_report(cuda_home: &Path, arch_list: &str) -> Result<(String, Vec<String>)> {
    let nvcc = cuda_home.join("bin/nvcc");
    let version = process::stdout(Command::new(&nvcc).arg("--version"))
        .with_context(|| format!("running {}", nvcc.display()))?;
    let release = version
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let known = process::stdout(Command::new(&nvcc).arg("--list-gpu-arch")).unwrap_or_default();
    let missing = wanted_sms(arch_list)
        .into_iter()
        .map(|sm| sm.replacen("sm_", "compute_", 1))
        .filter(|c| !known.split_whitespace().any(|k| k == c))
        .collect();
    Ok((release, missing))
}

/// `sm_XYZ` for each architecture of a `TORCH_CUDA_ARCH_LIST` spelling (`12.1`, `12.1a`,
/// `12.1+PTX`; `;`, `,` or spaces between them).
pub fn wanted_sms(arch_list: &str) -> Vec<String> {
    arch_list
        .split([';', ',', ' '])
        .filter(|a| !a.is_empty())
        .map(|a| {
            let a = a.trim_end_matches("+PTX");
            format!("sm_{}", a.replace('.', ""))
        })
        .collect()
}

/// The modules (`.so` files) of a wheel with the SASS architectures `cuobjdump --list-elf` finds
/// in each (none for a module without device code), in the wheel's path order.
pub fn wheel_sass(
    wheel: &Path,
    cuobjdump: &Path,
    scratch: &Path,
) -> Result<Vec<(String, Vec<String>)>> {
    let _ = fs_err::remove_dir_all(scratch);
    fs_err::create_dir_all(scratch)?;
    process::run(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(wheel)
            .arg(scratch),
    )
    .with_context(|| format!("unpacking {}", wheel.display()))?;
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(scratch) {
        let e = e?;
        let p = e.path();
        if !e.file_type().is_dir() && e.file_name().to_string_lossy().contains(".so") {
            // A module without device code makes cuobjdump exit non-zero: no kernels.
            let o = support::cmd::output(
                Command::new(cuobjdump).arg("--list-elf").arg(p),
                std::time::Duration::from_secs(120),
            )?;
            let mut arches: Vec<String> = o
                .stdout
                .split_whitespace()
                .filter_map(|w| w.split('.').find(|part| part.starts_with("sm_")))
                .map(str::to_owned)
                .collect();
            arches.sort();
            arches.dedup();
            let rel = p
                .strip_prefix(scratch)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            out.push((rel, arches));
        }
    }
    out.sort();
    let _ = fs_err::remove_dir_all(scratch);
    Ok(out)
}

/// Refuses an extension whose kernels lack an architecture the recipe asks for: every module with
/// device code must hold each wanted `sm_` (`sm_121` is met by `sm_121a`), and some module must
/// hold device code at all (a misspelt arch list builds none, silently).
pub fn check_sass(ext: &str, modules: &[(String, Vec<String>)], arch_list: &str) -> Result<()> {
    let want = wanted_sms(arch_list);
    if want.is_empty() {
        return Ok(());
    }
    if modules.iter().all(|(_, a)| a.is_empty()) {
        bail!(
            "extension {ext} holds no CUDA kernels at all (modules: {}); TORCH_CUDA_ARCH_LIST must \
             be spelt like `12.1`, and the extension must be built with a CUDA toolkit",
            modules.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    for (m, arches) in modules.iter().filter(|(_, a)| !a.is_empty()) {
        for w in &want {
            if !arches.iter().any(|a| a.starts_with(w.as_str())) {
                bail!(
                    "extension {ext}: {m} has kernels for {} but none for {w}, which \
                     target.arch_list asks for; the release would fail on the GPU",
                    arches.join(" ")
                );
            }
        }
    }
    Ok(())
}

/// The importable module names of a wheel's compiled modules
/// (`sageattention/_fused.cpython-312-x86_64-linux-gnu.so` -> `sageattention._fused`).
pub fn module_names(modules: &[(String, Vec<String>)]) -> Vec<String> {
    modules
        .iter()
        .filter(|(p, _)| !p.contains(".libs/") && !p.contains(".data/"))
        .filter_map(|(p, _)| {
            let (dir, file) = p.rsplit_once('/').unwrap_or(("", p));
            let stem = file.split('.').next()?;
            let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
            parts.push(stem);
            Some(parts.join("."))
        })
        .collect()
}

/// What the toolkit stage runs, for `build --dry-run`.
pub fn commands(t: &crate::recipe::ToolkitSection, arch_list: &str) -> Vec<String> {
    vec![
        "cp -al env/<digest> toolkit/<digest>".to_owned(),
        format!(
            "uv pip install --require-hashes --no-deps <locked: {}>",
            t.packages.join(" ")
        ),
        "cuda-home/{bin,include,nvvm} -> venv/.../nvidia/cu13/*, lib64/* -> lib/*, libcudart.so -> libcudart.so.13".to_owned(),
        format!(
            "nvcc --version; nvcc --list-gpu-arch must know {}",
            wanted_sms(arch_list)
                .iter()
                .map(|s| s.replacen("sm_", "compute_", 1))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, a: &[&str]) -> (String, Vec<String>) {
        (p.to_owned(), a.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn arch_lists_become_sass_names() {
        assert_eq!(wanted_sms("12.1"), ["sm_121"]);
        assert_eq!(wanted_sms("8.9;12.1+PTX"), ["sm_89", "sm_121"]);
        assert_eq!(wanted_sms("12.1a"), ["sm_121a"]);
        assert!(wanted_sms("").is_empty());
    }

    #[test]
    fn kernels_without_the_recipes_arch_are_refused_by_module() {
        let ok = [
            m(
                "sageattention/_fused.cpython-312-x86_64-linux-gnu.so",
                &["sm_121a"],
            ),
            m(
                "sageattention/_qattn_sm80.cpython-312-x86_64-linux-gnu.so",
                &["sm_121a"],
            ),
            m(
                "sageattention/cpu_only.cpython-312-x86_64-linux-gnu.so",
                &[],
            ),
        ];
        check_sass("sageattention", &ok, "12.1").unwrap();
        let wrong = [m("sageattention/_fused.so", &["sm_89"]), ok[1].clone()];
        let e = check_sass("sageattention", &wrong, "12.1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sageattention/_fused.so has kernels for sm_89 but none for sm_121"),
            "{e}"
        );
        let none = [m("sageattention/_fused.so", &[])];
        let e = check_sass("sageattention", &none, "12.1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CUDA kernels at all"), "{e}");
        check_sass("fastmath", &none, "").unwrap();
        assert_eq!(
            module_names(&ok),
            [
                "sageattention._fused",
                "sageattention._qattn_sm80",
                "sageattention.cpu_only"
            ]
        );
    }
}
