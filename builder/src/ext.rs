//! Compiled extensions (sageattention, flash-attention, torchao; the demo's C extension): built as
//! wheels with `--no-build-isolation` against the release's own venv and the recipe's environment,
//! cached by the digest of every input, so an unchanged extension is never compiled twice.

use crate::cache::Layout as _;
use crate::recipe::ExtensionSection;
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use support::cmd as process;

/// Builds (or finds in the cache) the wheel for one extension. `src` is its exported source tree.
pub fn wheel(
    ext: &ExtensionSection,
    src: Option<&Path>,
    venv_python: &Path,
    extra_env: &[(String, String)],
    digest: &str,
    cache: &Path,
    epoch: u64,
) -> Result<PathBuf> {
    let dir = cache.wheel_dir(digest);
    if let Some(w) = find_wheel(&dir)? {
        return Ok(w);
    }
    let tmp = cache.scratch(&format!("wheel-{digest}"));
    let _ = fs_err::remove_dir_all(&tmp);
    fs_err::create_dir_all(&tmp)?;
    let log = cache.log(&format!("{}-{}.log", ext.name, support::short_id(digest)));
    let mut c = crate::uv::command(cache);
    c.args(["build", "--wheel", "--no-build-isolation", "--python"])
        .arg(venv_python)
        .arg("--out-dir")
        .arg(&tmp);
    // A private copy of the source: the build writes build/ and *.egg-info into its tree, and
    // one known path lets the compiler map it away.
    let copy = tmp.join("src");
    match (src, &ext.pypi) {
        (Some(s), _) => {
            process::run(std::process::Command::new("cp").arg("-a").arg(s).arg(&copy))?;
        }
        (None, Some(spec)) => {
            // pip fetches the sdist (sources only, no dependencies); tar unpacks it here.
            let sdist = tmp.join("sdist");
            process::run(
                std::process::Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--quiet",
                        "--no-deps",
                        "--no-binary",
                        ":all:",
                        "--dest",
                    ])
                    .arg(&sdist)
                    .arg(spec),
            )
            .with_context(|| format!("fetching the source of {spec}"))?;
            let file = fs_err::read_dir(&sdist)?
                .next()
                .context("pip downloaded nothing")??
                .path();
            if !file.to_string_lossy().ends_with(".tar.gz") {
                bail!(
                    "{spec}: PyPI's source distribution is {}, not a .tar.gz sdist; pin a version that has one",
                    file.display()
                );
            }
            fs_err::create_dir_all(&copy)?;
            process::run(
                std::process::Command::new("tar")
                    .args(["-xzf"])
                    .arg(&file)
                    .args(["--strip-components=1", "--no-same-owner", "-C"])
                    .arg(&copy),
            )
            .with_context(|| format!("unpacking {}", file.display()))?;
        }
        (None, None) => bail!("extension {} has no source", ext.name),
    }
    // Paths must not leak into objects: the same inputs give the same wheel contents, and the
    // release's relocation lint finds no build path. The source copy and everything else in the
    // cache (torch's headers in the env or the toolkit: `__FILE__` in their asserts, debug
    // directories) are mapped away, for the host compiler and, through nvcc, for CUDA sources
    // too. The most specific map comes last (GCC takes the last that matches).
    let maps = format!(
        "-ffile-prefix-map={}=/build -ffile-prefix-map={}=/src",
        cache.display(),
        copy.display()
    );
    let cflags = format!("-g0 {maps}");
    c.arg(&copy).env("CFLAGS", &cflags).env("CXXFLAGS", &cflags);
    c.env("SOURCE_DATE_EPOCH", epoch.to_string());
    // The toolkit's CUDA_HOME and PATH first; the recipe's own settings after.
    for (k, v) in extra_env {
        c.env(k, v);
    }
    for (k, v) in &ext.env {
        c.env(k, v);
    }
    let nvcc_maps: Vec<String> = maps.split(' ').map(|m| format!("-Xcompiler {m}")).collect();
    let nvcc_flags = match ext.env.get("NVCC_APPEND_FLAGS") {
        Some(own) => format!("{own} {}", nvcc_maps.join(" ")),
        None => nvcc_maps.join(" "),
    };
    c.env("NVCC_APPEND_FLAGS", nvcc_flags);
    process::run_logged(&mut c, &log)
        .with_context(|| format!("compiling extension {}", ext.name))?;
    let built = find_wheel(&tmp)?.with_context(|| {
        format!(
            "building {} produced no wheel; see {}",
            ext.name,
            log.display()
        )
    })?;
    let name = built.file_name().context("wheel has no name")?.to_owned();
    fs_err::create_dir_all(&dir)?;
    fs_err::rename(&built, dir.join(&name))?;
    let _ = fs_err::remove_dir_all(&tmp);
    Ok(dir.join(name))
}

pub(crate) fn find_wheel(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    for e in fs_err::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "whl") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Installs a built wheel into the stage's venv.
pub fn install(wheel: &Path, venv_python: &Path, cache: &Path) -> Result<()> {
    process::run(
        crate::uv::command(cache)
            .args([
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--link-mode",
                "copy",
                "--python",
            ])
            .arg(venv_python)
            .arg(wheel),
    )?;
    Ok(())
}

/// Installs hashed, pinned requirements (`locked`, uv's `pip compile` output) into a venv with
/// no dependencies resolved: the `[toolkit]` wheels beside the env (`hardlink`, in the cache), or
/// into the stage when the recipe wants them in the release (`copy`).
pub fn install_locked(
    locked: &str,
    venv_python: &Path,
    cache: &Path,
    link_mode: &str,
) -> Result<()> {
    let tmp = tempfile::tempdir_in(cache)?;
    let req = tmp.path().join("locked.txt");
    fs_err::write(&req, locked)?;
    process::run(
        crate::uv::command(cache)
            .args([
                "pip",
                "install",
                "--quiet",
                "--require-hashes",
                "--no-deps",
                "--link-mode",
                link_mode,
                "--python",
            ])
            .arg(venv_python)
            .arg("-r")
            .arg(&req),
    )?;
    Ok(())
}

/// What building extension `e` runs, for `build --dry-run`.
pub fn commands(e: &crate::recipe::ExtensionSection, r: &crate::recipe::Recipe) -> Vec<String> {
    let envs: Vec<String> = e.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
