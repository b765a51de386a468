//! The interpreter and the relocatable venv with every locked package: cached as one tree
//! (`python/`, `venv/`) under `env/<digest>`, where the digest covers the interpreter, the locked
//! requirements and the uv version.

use crate::process;
use crate::recipe::{PythonMode, Recipe};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The build host's interpreter as the recipe names it.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub prefix: PathBuf,
    pub version: String,
}

pub fn find_interpreter(r: &Recipe) -> Result<Interpreter> {
    let out = process::stdout(Command::new(&r.python.path).args([
        "-c",
        "import sys; print(sys.base_prefix); print('%d.%d' % sys.version_info[:2])",
    ]))
    .with_context(|| {
        format!(
            "running the recipe's interpreter {:?} (python.path)",
            r.python.path
        )
    })?;
    let mut lines = out.lines();
    let prefix = PathBuf::from(lines.next().unwrap_or_default());
    let version = lines.next().unwrap_or_default().to_owned();
    if version != r.python.version {
        bail!(
            "{} is Python {version}, the recipe asks for {}",
            r.python.path,
            r.python.version
        );
    }
    Ok(Interpreter { prefix, version })
}

/// uv's `--python-platform` for a recipe platform.
pub fn python_platform(platform: &str) -> Result<&'static str> {
    Ok(match platform {
        "linux-x86_64" => "x86_64-manylinux_2_28",
        "linux-aarch64" => "aarch64-manylinux_2_28",
        other => bail!("target.platform {other:?} is not supported (linux-x86_64, linux-aarch64)"),
    })
}

/// Index arguments: PyPI, plus the torch index when torch is installed from it (an empty
/// `index_url` takes torch from the default index too).
pub fn index_args(r: &Recipe) -> Vec<String> {
    if r.torch.install && !r.torch.index_url.is_empty() {
        vec![
            "--extra-index-url".into(),
            r.torch.index_url.clone(),
            "--index-strategy".into(),
            "unsafe-best-match".into(),
        ]
    } else {
        Vec::new()
    }
}

pub fn uv(cache: &Path) -> Command {
    let mut c = Command::new("uv");
    c.env("UV_CACHE_DIR", cache.join("uv"))
        .env("UV_NO_PROGRESS", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VIRTUAL_ENV");
    c
}

/// Copies the interpreter prefix into `dest` (embedded mode), without what a release never runs,
/// and points its RUNPATH at `$ORIGIN/../lib` so it loads its own libpython.
fn embed(interp: &Interpreter, dest: &Path) -> Result<()> {
    process::run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", interp.prefix.display()))
            .arg(dest),
    )?;
    let lib = dest.join(format!("lib/python{}", interp.version));
    for d in [
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3/tests",
        "site-packages",
    ] {
        let p = lib.join(d);
        if p.exists() {
            fs_err::remove_dir_all(&p)?;
        }
    }
    fs_err::create_dir_all(lib.join("site-packages"))?;
    let exe = format!("python{}", interp.version);
    for e in fs_err::read_dir(dest.join("bin"))? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != exe && n != "python3" && n != "python" {
            fs_err::remove_file(e.path())?;
        }
    }
    for d in ["share", "lib/pkgconfig"] {
        let _ = fs_err::remove_dir_all(dest.join(d));
    }
    remove_pycache(dest)?;
    let bin = dest.join("bin").join(&exe);
    let rpath = process::stdout(Command::new("patchelf").arg("--print-rpath").arg(&bin))
        .context("patchelf is needed to make the embedded interpreter relocatable (apt-get install patchelf)")?;
    if !rpath.is_empty() {
        process::run(
            Command::new("patchelf")
                .args(["--set-rpath", "$ORIGIN/../lib"])
                .arg(&bin),
        )?;
    }
    Ok(())
}

/// Removes every `__pycache__` below `dir` (freeze writes reproducible ones).
pub fn remove_pycache(dir: &Path) -> Result<()> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                if e.file_name() == "__pycache__" {
                    fs_err::remove_dir_all(e.path())?;
                } else {
                    stack.push(e.path());
                }
            }
        }
    }
    Ok(())
}

/// Builds `dest/{python,venv}`: interpreter, relocatable venv (no `home`, relative `bin/python`),
/// and the locked requirements installed with uv.
pub fn build_env(
    r: &Recipe,
    interp: &Interpreter,
    requirements: &str,
    cache: &Path,
    dest: &Path,
) -> Result<()> {
    fs_err::create_dir_all(dest)?;
    let exe = format!("python{}", interp.version);
    let python_target = match r.python.mode {
        PythonMode::Embedded => {
            let py = dest.join("python");
            fs_err::create_dir_all(&py)?;
            embed(interp, &py)?;
            PathBuf::from("../../python/bin").join(&exe)
        }
        PythonMode::System => PathBuf::from(&r.python.path),
    };
    let venv = dest.join("venv");
    let base_python = match r.python.mode {
        PythonMode::Embedded => dest.join("python/bin").join(&exe),
        PythonMode::System => PathBuf::from(&r.python.path),
    };
    process::run(
        uv(cache)
            .args(["venv", "--quiet", "--relocatable", "--python"])
            .arg(&base_python)
            .arg(&venv),
    )?;
    // FACTS: a stale absolute `home` is fatal; without one, a relative bin/python is followed.
    let cfg = fs_err::read_to_string(venv.join("pyvenv.cfg"))?;
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("home"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs_err::write(venv.join("pyvenv.cfg"), cfg)?;
    let link = venv.join("bin/python");
    fs_err::remove_file(&link)?;
    std::os::unix::fs::symlink(&python_target, &link)?;
    let _ = fs_err::remove_file(venv.join(".lock"));
    let req = dest.join(".requirements.txt");
    fs_err::write(&req, requirements)?;
    let mut c = uv(cache);
    c.args([
        "pip",
        "install",
        "--quiet",
        "--require-hashes",
        "--no-deps",
        "--link-mode",
        "copy",
        "--python",
    ])
    .arg(venv.join("bin/python"))
    .args(index_args(r))
    .arg("-r")
    .arg(&req);
    process::run(&mut c).context("installing the locked requirements")?;
    fs_err::remove_file(&req)?;
    crate::freeze::compile(dest, &interp.version, &[]);
    crate::freeze::lint(
        dest,
        &[
            dest.to_string_lossy().into_owned(),
            cache.to_string_lossy().into_owned(),
        ],
        false,
    )?;
    Ok(())
}
