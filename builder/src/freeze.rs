//! Freeze: the stage becomes what ships. Reproducible bytecode (unchecked-hash, PYTHONHASHSEED=0,
//! source paths rewritten to the install path), no `direct_url.json`, then the relocation lint: no
//! file may mention the staging directory.

use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;
use support::cmd as process;

/// Where `co_filename` points in shipped bytecode (tracebacks on a host show real paths).
pub const INSTALL_PREFIX: &str = "/opt/comfyui/current";

pub fn freeze(stage: &Path) -> Result<()> {
    let mut walk = walkdir::WalkDir::new(stage.join("venv"))
        .min_depth(1)
        .into_iter();
    while let Some(e) = walk.next() {
        let e = e?;
        if e.file_type().is_dir() && e.path().extension().is_some_and(|x| x == "dist-info") {
            walk.skip_current_dir();
            normalise_dist_info(e.path())?;
        }
    }
    let _ = fs_err::remove_file(stage.join("venv/.lock"));
    // The stdlib and the env's packages were compiled with the env; new here: ComfyUI, nodes, wheels.
    compile_dirs(stage, &[stage.join("venv/lib"), stage.join("ComfyUI")]);
    Ok(())
}

/// Reproducible bytecode for the stdlib, the venv and `extra` (unchecked-hash, PYTHONHASHSEED=0,
/// `-s root -p INSTALL_PREFIX` so the same file gives the same bytes wherever it was compiled).
/// Files already compiled are skipped, so the env stage's work is not redone per stage.
pub fn compile(root: &Path, python_version: &str, extra: &[std::path::PathBuf]) {
    let mut dirs = vec![root.join("venv/lib")];
    let stdlib = root.join(format!("python/lib/python{python_version}"));
    if stdlib.exists() {
        dirs.push(stdlib);
    }
    dirs.extend(extra.iter().cloned());
    compile_dirs(root, &dirs);
}

/// Runs `compileall` with one change: a source whose bytecode is already an unchecked-hash `.pyc`
/// of the same source bytes is skipped. compileall's own up-to-date test only knows timestamp
/// bytecode, so without this every stage recompiled the whole venv the env stage had compiled.
const COMPILE_SKIPPING_CURRENT: &str = r#"
import compileall, importlib.util, py_compile, sys
_compile = py_compile.compile
def compile(file, cfile=None, dfile=None, doraise=False, optimize=-1, invalidation_mode=None, quiet=0):
    try:
        with open(cfile, "rb") as f:
            head = f.read(16)
        with open(file, "rb") as f:
            source = f.read()
        if (head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == b"\x01\x00\x00\x00"
                and head[8:16] == importlib.util.source_hash(source)):
            return cfile
    except (OSError, TypeError):
        pass
    return _compile(file, cfile, dfile, doraise, optimize, invalidation_mode, quiet)
py_compile.compile = compile
sys.argv[0] = "compileall"
sys.exit(int(not compileall.main()))
"#;

fn compile_dirs(root: &Path, dirs: &[std::path::PathBuf]) {
    let out = Command::new(root.join("venv/bin/python"))
        .args([
            "-c",
            COMPILE_SKIPPING_CURRENT,
            "-q",
            // One process, files in compileall's sorted order: marshal's output depends on the
            // interpreter's state (reference flags), so parallel workers, which take files in
            // varying order, made a few .pyc differ from build to build (seen with the real
            // release: pycparser's c_parser, transformers' automatic_speech_recognition).
            "-j",
            "1",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
        ])
        .arg(root)
        .args(["-p", INSTALL_PREFIX])
        .args(dirs)
        .env("PYTHONHASHSEED", "0")
        .env("SOURCE_DATE_EPOCH", "0")
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        // compileall exits 1 when some file (py2-only code shipped in a package) does not compile;
        // those modules are never imported, so this is a warning, not a failure.
        Ok(o) => tracing::warn!(
            "compileall reported files it could not compile:\n{}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(e) => tracing::warn!("compileall did not run: {e}"),
    }
}

/// Install-time files that name the build (`direct_url.json`: the wheel's path; `uv_cache.json`: a
/// timestamp) go, and RECORD stops listing them, so the same inputs give the same bytes.
fn normalise_dist_info(dir: &Path) -> Result<()> {
    const VOLATILE: &[&str] = &["direct_url.json", "uv_cache.json"];
    let mut removed = false;
    for f in VOLATILE {
        let p = dir.join(f);
        if p.exists() {
            fs_err::remove_file(&p)?;
            removed = true;
        }
    }
    let record = dir.join("RECORD");
    if removed && record.exists() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = fs_err::read_to_string(&record)?;
        let kept: String = text
            .lines()
            .filter(|l| {
                !VOLATILE
                    .iter()
                    .any(|f| l.starts_with(&format!("{name}/{f},")))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs_err::write(&record, kept)?;
    }
    Ok(())
}

/// Fails naming every file that contains any of `needles` (the staging and cache paths). With
/// `only_unshared`, files hardlinked from the cached env (linted when it was built) are skipped.
pub fn lint(stage: &Path, needles: &[String], only_unshared: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let finders: Vec<_> = needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_bytes()).into_owned())
        .collect();
    let mut bad = Vec::new();
    for e in walkdir::WalkDir::new(stage).min_depth(1) {
        let e = e?;
        let ft = e.file_type();
        if ft.is_symlink() {
            let t = fs_err::read_link(e.path())?;
            if needles
                .iter()
                .any(|n| t.to_string_lossy().contains(n.as_str()))
            {
                bad.push(e.into_path());
            }
        } else if ft.is_file() {
            if only_unshared && e.metadata()?.nlink() > 1 {
                continue;
            }
            let bytes = fs_err::read(e.path())?;
            if finders.iter().any(|f| f.find(&bytes).is_some()) {
                bad.push(e.into_path());
            }
        }
    }
    if !bad.is_empty() {
        bad.sort();
        let shown: Vec<String> = bad
            .iter()
            .take(20)
            .map(|p| format!("  {}", p.strip_prefix(stage).unwrap_or(p).display()))
            .collect();
        bail!(
            "relocation lint: {} file(s) contain the build path and would break once installed:\n{}",
            bad.len(),
            shown.join("\n")
        );
    }
    Ok(())
}

/// `name==version` of everything in the venv, sorted (the manifest's frozen package list).
pub fn frozen_packages(stage: &Path, cache: &Path) -> Result<Vec<String>> {
    let out = process::stdout(
        crate::uv::command(cache)
            .args(["pip", "freeze", "--python"])
            .arg(stage.join("venv/bin/python")),
    )?;
    let mut v: Vec<String> = out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

/// What the freeze stage runs, for `build --dry-run`.
pub fn commands() -> Vec<String> {
    vec![
        format!(
            "PYTHONHASHSEED=0 python -m compileall --invalidation-mode unchecked-hash -s <stage> -p {INSTALL_PREFIX}"
        ),
        "remove direct_url.json".to_owned(),
        "relocation lint".to_owned(),
    ]
}
