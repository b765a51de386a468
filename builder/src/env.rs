//! The interpreter and the relocatable venv with every locked package: cached as one tree
//! (`python/`, `venv/`) under `env/<digest>`, where the digest covers the interpreter, the locked
//! requirements and the uv version.

use crate::recipe::{PythonMode, Recipe};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::cmd as process;

/// The build host's interpreter as the recipe names it.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub prefix: PathBuf,
    pub version: String,
}

/// uv's managed CPython `version` (a self-contained python-build-standalone prefix): the one uv
/// already has, else installed by `uv python install` (GitHub, or UV_PYTHON_INSTALL_MIRROR).
pub fn managed_python(version: &str, install: bool) -> Result<PathBuf> {
    let find = || {
        process::stdout(Command::new("uv").args(["python", "find", "--managed-python", version]))
            .map(|p| PathBuf::from(p.trim()))
    };
    if let Ok(p) = find() {
        return Ok(p);
    }
    if !install {
        bail!("uv's managed CPython {version} is not installed (`uv python install {version}`)");
    }
    process::run(Command::new("uv").args(["python", "install", version])).with_context(|| {
        format!(
            "installing uv's managed CPython {version} (python.path is empty); where GitHub is \
             not reachable set UV_PYTHON_INSTALL_MIRROR, or set python.path to a self-contained \
             Python {version} prefix's interpreter"
        )
    })?;
    find().with_context(|| format!("uv installed CPython {version} but cannot find it"))
}

/// The recipe's interpreter, installing uv's managed CPython when the recipe names none.
pub fn find_interpreter(r: &Recipe) -> Result<Interpreter> {
    interpreter(r, true)
}

/// Like [`find_interpreter`], but installs nothing (dry runs and the doctor).
pub fn installed_interpreter(r: &Recipe) -> Result<Interpreter> {
    interpreter(r, false)
}

fn interpreter(r: &Recipe, install: bool) -> Result<Interpreter> {
    let exe = if r.python.path.is_empty() {
        managed_python(&r.python.version, install)?
    } else {
        PathBuf::from(&r.python.path)
    };
    let out = process::stdout(Command::new(&exe).args([
        "-c",
        "import sys; print(sys.base_prefix); print('%d.%d' % sys.version_info[:2])",
    ]))
    .with_context(|| format!("running the recipe's interpreter {exe:?} (python.path)"))?;
    let mut lines = out.lines();
    let prefix = PathBuf::from(lines.next().unwrap_or_default());
    let version = lines.next().unwrap_or_default().to_owned();
    if version != r.python.version {
        bail!(
            "{} is Python {version}, the recipe asks for {}",
            exe.display(),
            r.python.version
        );
    }
    if r.python.mode == crate::recipe::PythonMode::Embedded {
        check_embedded_prefix(&prefix, &version)?;
    }
    Ok(Interpreter { prefix, version })
}

/// This host's platform in a recipe's spelling (`linux-x86_64`, `linux-aarch64`).
pub fn host_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// This host's glibc version (`2.36`), when it has one.
pub fn host_glibc() -> Option<String> {
    let out = process::stdout(Command::new("getconf").arg("GNU_LIBC_VERSION")).ok()?;
    out.split_whitespace().nth(1).map(str::to_owned)
}

/// Refuses a build host whose machine or libc cannot build `platform`: the venv's native
/// packages and the compiled extensions are the host's own, so an x86_64 host cannot build the
/// aarch64 release (said before anything is fetched or compiled, not after an hour of nvcc).
pub fn check_platform(platform: &str) -> Result<String> {
    python_platform(platform)?;
    let host = host_platform();
    if host != platform {
        bail!(
            "this host is {host} and the recipe's target.platform is {platform}: packages and \
             extensions are built for the host they run on; build on a {platform} host (for \
             linux-aarch64: an arm64 CI runner or the DGX Spark itself)"
        );
    }
    // The wheels uv picks are manylinux_2_28: glibc 2.28 or newer.
    let glibc = host_glibc();
    match glibc.as_deref().map(|v| {
        let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
        (p.next().unwrap_or(0), p.next().unwrap_or(0))
    }) {
        Some(v) if v < (2, 28) => bail!(
            "this host's glibc is {}; the release's wheels need 2.28 or newer (manylinux_2_28)",
            glibc.unwrap_or_default()
        ),
        Some(_) => Ok(format!("{host}, glibc {}", glibc.unwrap_or_default())),
        None => bail!(
            "this host has no glibc (getconf GNU_LIBC_VERSION failed); build on a glibc Linux"
        ),
    }
}

/// An embedded interpreter's prefix is copied whole into the release: it must hold one Python
/// and nothing else (a distribution's `/usr` holds the whole system, and on a Spark the CUDA
/// toolkit). Refuses any other prefix with what to use instead.
pub fn check_embedded_prefix(prefix: &Path, version: &str) -> Result<()> {
    let shared = ["/", "/usr", "/usr/local", "/opt"];
    let why = if shared.iter().any(|s| prefix == Path::new(s)) {
        Some(format!("{} is a system prefix", prefix.display()))
    } else {
        let top_ok = ["bin", "include", "lib", "lib64", "share"];
        let mut odd: Vec<String> = Vec::new();
        for e in fs_err::read_dir(prefix)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !top_ok.contains(&name.as_str()) {
                odd.push(name);
            }
        }
        let lib = prefix.join("lib");
        if lib.is_dir() {
            for e in fs_err::read_dir(&lib)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                let python_own = name.starts_with("python")
                    || name.starts_with("libpython")
                    || name == "pkgconfig"
                    || ["tcl", "tk", "itcl", "thread", "libtcl", "libtk", "Tix"]
                        .iter()
                        .any(|p| name.starts_with(p));
                if !python_own {
                    odd.push(format!("lib/{name}"));
                }
            }
        }
        (!odd.is_empty()).then(|| {
            odd.sort();
            let shown: Vec<&str> = odd.iter().take(6).map(String::as_str).collect();
            format!(
                "{} holds more than one Python ({}{})",
                prefix.display(),
                shown.join(", "),
                if odd.len() > 6 { ", ..." } else { "" }
            )
        })
    };
    match why {
        None => Ok(()),
        Some(why) => bail!(
            "python.mode = \"embedded\" copies the interpreter's whole prefix into the release, and \
             {why}; point python.path at a self-contained Python {version} (uv's managed CPython: \
             `uv python install {version}`, or leave python.path empty and the builder does it; or a pyenv prefix), or \
             use python.mode = \"system\" to run on the host's own Python"
        ),
    }
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
    let mut walk = walkdir::WalkDir::new(dir).min_depth(1).into_iter();
    while let Some(e) = walk.next() {
        let e = e?;
        if e.file_type().is_dir() && e.file_name() == "__pycache__" {
            walk.skip_current_dir();
            fs_err::remove_dir_all(e.path())?;
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
        crate::uv::command(cache)
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
    let mut c = crate::uv::command(cache);
    c.args([
        "pip",
        "install",
        "--quiet",
        "--require-hashes",
        "--no-deps",
        // Files are hardlinks of uv's cache (same filesystem: one `--cache`), so the env costs
        // next to nothing beyond the cache. Nothing after this writes into an existing file in
        // place: bytecode and launch files are new files, stages are `cp -al` farms.
        "--link-mode",
        "hardlink",
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

/// What the env stage runs, for `build --dry-run`.
pub fn commands(r: &Recipe) -> Vec<String> {
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
    vec![
        interpreter,
        "uv venv --relocatable venv ; drop `home` ; bin/python -> ../../python/bin/python"
            .to_owned(),
        format!(
            "uv pip install --require-hashes --no-deps {} -r <locked requirements>",
            index_args(r).join(" ")
        ),
    ]
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn prefix(top: &[&str], lib: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in top {
            fs_err::create_dir_all(t.path().join(d)).unwrap();
        }
        for d in lib {
            fs_err::create_dir_all(t.path().join("lib").join(d)).unwrap();
        }
        t
    }

    #[test]
    fn a_prefix_holding_one_python_is_accepted() {
        // pyenv's and python-build-standalone's shapes.
        let t = prefix(
            &["bin", "include", "lib", "share"],
            &[
                "python3.12",
                "libpython3.12.so",
                "pkgconfig",
                "tcl8.6",
                "tk8.6",
                "itcl4.2.2",
            ],
        );
        check_embedded_prefix(t.path(), "3.12").unwrap();
    }

    #[test]
    fn a_prefix_holding_more_is_refused_with_what_to_use() {
        for p in ["/usr", "/usr/local", "/"] {
            let e = format!(
                "{:#}",
                check_embedded_prefix(Path::new(p), "3.12").unwrap_err()
            );
            assert!(
                e.contains("system prefix") && e.contains("uv python install 3.12"),
                "{e}"
            );
        }
        let t = prefix(&["bin", "lib", "games", "sbin"], &["python3.12"]);
        let e = format!("{:#}", check_embedded_prefix(t.path(), "3.12").unwrap_err());
        assert!(e.contains("games, sbin"), "{e}");
        let t = prefix(
            &["bin", "lib"],
            &["python3.12", "x86_64-linux-gnu", "systemd"],
        );
        let e = format!("{:#}", check_embedded_prefix(t.path(), "3.12").unwrap_err());
        assert!(e.contains("lib/systemd, lib/x86_64-linux-gnu"), "{e}");
        assert!(e.contains("python.mode = \"system\""), "{e}");
    }

    #[test]
    fn the_other_machine_is_refused_before_anything_is_built() {
        let other = if std::env::consts::ARCH == "aarch64" {
            "linux-x86_64"
        } else {
            "linux-aarch64"
        };
        let e = format!("{:#}", check_platform(other).unwrap_err());
        assert!(e.contains(&format!("build on a {other} host")), "{e}");
        assert!(check_platform(&host_platform()).unwrap().contains("glibc"));
        assert!(check_platform("windows-x86_64").is_err());
    }
}
