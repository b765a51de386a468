//! What real custom nodes do beyond their git tree and `requirements.txt` (ComfyUI-Manager runs a
//! node's `install.py` after cloning it, and those scripts clone more code, download models and
//! pip-install packages), done from pinned inputs: nested git sources placed inside a node's
//! folder, declared model files fetched and checked by SHA-256, and each node's `install.py`
//! either named and left alone (the default) or run as an account that owns nothing of the build
//! (not the cache, not the env, not the signing key), in mount, pid and (unless the recipe allows
//! it) network namespaces of its own, with a read-only view of the stage but its node's folder;
//! what it tries to pip-install is refused by name, and everything it wrote is checked: inside
//! the node it becomes part of the release (bytecode recompiled from source), a declared model
//! is checked, anything else fails the build.

use crate::cache::Layout as _;
use crate::plan::{Checkout, Role};
use crate::recipe::{InstallScript, ModelSection};
use crate::smoke::{snapshot, written};
use anyhow::{bail, Context as _, Result};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The folder of a node (or a nested source) in the stage: `ComfyUI/custom_nodes/<node>[/<path>]`.
fn folder(stage: &Path, c: &Checkout) -> Option<PathBuf> {
    let nodes = stage.join("ComfyUI/custom_nodes");
    let dir = |name: &str| {
        if c.source.disabled {
            format!("{name}.disabled")
        } else {
            name.to_owned()
        }
    };
    match (&c.source.role, &c.source.nested_in) {
        (Role::Node, _) => Some(nodes.join(dir(&c.source.name))),
        (Role::Nested, Some((node, path))) => Some(nodes.join(dir(node)).join(path)),
        _ => None,
    }
}

/// Places every nested source inside its node's folder in the stage (after the nodes are).
pub fn place_nested(stage: &Path, trees: &[Checkout]) -> Result<()> {
    for c in trees.iter().filter(|c| c.source.role == Role::Nested) {
        let dest = folder(stage, c).context("a nested source without its node")?;
        if dest.exists() && fs_err::read_dir(&dest)?.next().is_some() {
            bail!(
                "custom node {}: {} is already in the node's own tree; a nested source cannot \
                 replace it (pin the node's own copy instead)",
                c.source.name,
                dest.display()
            );
        }
        if let Some(p) = dest.parent() {
            fs_err::create_dir_all(p)?;
        }
        support::cmd::run(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", c.tree.display()))
                .arg(&dest),
        )?;
    }
    Ok(())
}

fn sha256_of(p: &Path) -> Result<String> {
    Ok(support::sha256_hex(fs_err::File::open(p)?)?)
}

/// A declared model in the build cache (`cache/models/<sha256>`), fetched from its mirror or URL
/// once and checked by size and SHA-256.
pub fn fetch_model(m: &ModelSection, recipe_dir: &Path, cache: &Path) -> Result<PathBuf> {
    let sha = m.sha256.to_ascii_lowercase();
    let dest = cache.model(&sha);
    if dest.is_file() {
        return Ok(dest);
    }
    if let Some(p) = dest.parent() {
        fs_err::create_dir_all(p)?;
    }
    let tmp = cache.model(&format!(".{sha}.part-{}", std::process::id()));
    if !m.mirror.is_empty() {
        fs_err::copy(recipe_dir.join(&m.mirror), &tmp)
            .with_context(|| format!("model {}: copying its mirror {}", m.path, m.mirror))?;
    } else {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3600))
            .connect_timeout(Duration::from_secs(30))
            .build()?;
        let mut resp = client
            .get(&m.url)
            .send()
            .and_then(reqwest::blocking::Response::error_for_status)
            .with_context(|| format!("model {}: fetching {}", m.path, m.url))?;
        let mut f = fs_err::File::create(&tmp)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = resp.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > m.size {
                let _ = fs_err::remove_file(&tmp);
                bail!(
                    "model {}: {} sends more than the declared {} bytes",
                    m.path,
                    m.url,
                    m.size
                );
            }
            f.write_all(&buf[..n])?;
        }
    }
    let size = fs_err::metadata(&tmp)?.len();
    let got = sha256_of(&tmp)?;
    if size != m.size || got != sha {
        let _ = fs_err::remove_file(&tmp);
        bail!(
            "model {}: got {size} bytes with sha256 {got}, the recipe declares {} bytes with {sha}",
            m.path,
            m.size
        );
    }
    fs_err::rename(&tmp, &dest)?;
    Ok(dest)
}

/// What the install-script step found, for the build's output.
pub struct Scripts {
    pub lines: Vec<String>,
}

/// Names (skip) or runs (run) every enabled node's and nested source's `install.py`, in recipe
/// order. `venv` is the stage's venv (protected by an overlay while a script runs).
pub fn run_scripts(
    stage: &Path,
    trees: &[Checkout],
    models: &[ModelSection],
    recipe_dir: &Path,
    cache: &Path,
) -> Result<Scripts> {
    let mut lines = Vec::new();
    for c in trees
        .iter()
        .filter(|c| matches!(c.source.role, Role::Node | Role::Nested) && !c.source.disabled)
    {
        let Some(dir) = folder(stage, c) else {
            continue;
        };
        if !dir.join("install.py").is_file() {
            continue;
        }
        let name = &c.source.name;
        if c.source.install_script == InstallScript::Skip {
            lines.push(format!(
                "{name}: install.py not run (install_script = \"skip\"); it may clone code, download \
                 models or install packages the node needs at import: pin them in the recipe \
                 (nested sources, [[models]], packages) or set install_script = \"run\""
            ));
            continue;
        }
        let wrote = run_one(stage, c, &dir, models, recipe_dir, cache)?;
        lines.push(format!(
            "{name}: install.py ran ({}network){}",
            if c.source.install_network { "" } else { "no " },
            if wrote.is_empty() {
                ", wrote nothing in the node".to_owned()
            } else {
                format!("; in the release: {}", wrote.join(", "))
            }
        ));
    }
    Ok(Scripts { lines })
}

/// The account an install script runs as: it owns nothing of the build (not the cache, not the
/// env, not the signing key), so the kernel refuses what it must not do.
const NOBODY: u32 = 65534;

/// What `pip`, `pip3`, `uv` and `python -m pip` become for an install script: they record what
/// the script asked to install (for the refusal that names it) and fail.
const SHIM: &str = "#!/bin/sh\nprintf '%s\\n' \"$*\" >>\"$COMFY_INSTALL_REQUESTS\"\necho \"refused: packages come from the recipe's lock, not from install scripts\" >&2\nexit 1\n";
const SHIM_PY: &str = "import os, sys\nwith open(os.environ['COMFY_INSTALL_REQUESTS'], 'a') as f:\n    f.write(' '.join(sys.argv[1:]) + '\\n')\nsys.exit('refused: packages come from the recipe\\'s lock, not from install scripts')\n";

/// The view an install script gets, set up as root in a mount namespace of its own before it
/// becomes the unprivileged account: the stage read-only, its node's folder writable, the
/// declared models, a home, the pip shims; private /tmp, /var/tmp, /dev/shm; a pid namespace, so
/// nothing it starts outlives it.
const VIEW: &str = r#"set -eu
v=$1/view
mkdir -p "$v"
mount -t tmpfs -o mode=0755 tmpfs "$v"
mkdir -p "$v/stage" "$v/models" "$v/home" "$v/shim"
mount --bind "$2" "$v/stage"
mount -o remount,bind,ro "$v/stage"
mount --bind "$2/$3" "$v/stage/$3"
mount --bind "$1/models" "$v/models"
mount --bind "$1/home" "$v/home"
mount --bind "$1/shim" "$v/shim"
mount -o remount,bind,ro "$v/shim"
# A private /tmp holding the view: made beside it, then moved over /tmp (the stage itself may
# live below /tmp, and must be bound before /tmp is covered).
t=$1/tmp
mkdir -p "$t"
mount -t tmpfs -o mode=1777 tmpfs "$t"
mkdir "$t/install"
mount --move "$v" "$t/install"
mount --move "$t" /tmp
for d in /var/tmp /dev/shm; do
  if [ -d "$d" ]; then mount -t tmpfs -o mode=1777 tmpfs "$d"; fi
done
cd "/tmp/install/stage/$3"
exec setpriv --reuid "$4" --regid "$4" --clear-groups --no-new-privs --inh-caps=-all \
  --bounding-set=-all -- env -i PATH=/tmp/install/shim/bin:/usr/local/bin:/usr/bin:/bin \
  HOME=/tmp/install/home LANG=C.UTF-8 COMFYUI_PATH=/tmp/install/stage/ComfyUI \
  COMFYUI_MODEL_PATH=/tmp/install/models PYTHONPATH=/tmp/install/shim/py \
  COMFY_INSTALL_REQUESTS=/tmp/install/home/.requested CUDA_VISIBLE_DEVICES= \
  PYTHONDONTWRITEBYTECODE=1 /tmp/install/stage/venv/bin/python install.py
"#;

fn chown_tree(dir: &Path, owner: u32) -> Result<()> {
    support::cmd::run(
        Command::new("chown")
            .args(["-R", "-h", "-P"])
            .arg(format!("{owner}:{owner}"))
            .arg(dir),
    )?;
    Ok(())
}

/// Bytecode in a folder an install script could write: removed, so the freeze step compiles it
/// from the sources that ship (a planted `.pyc` could otherwise run other code).
fn remove_bytecode(dir: &Path) -> Result<()> {
    let mut walk = walkdir::WalkDir::new(dir).min_depth(1).into_iter();
    while let Some(e) = walk.next() {
        let e = e?;
        let p = e.path();
        let t = e.file_type();
        if t.is_dir() && e.file_name() == "__pycache__" {
            walk.skip_current_dir();
            fs_err::remove_dir_all(p)?;
        } else if !t.is_dir() && p.extension().is_some_and(|x| x == "pyc") {
            fs_err::remove_file(p)?;
        }
    }
    Ok(())
}

/// Runs one `install.py`; returns what it wrote inside its node's folder.
fn run_one(
    stage: &Path,
    c: &Checkout,
    dir: &Path,
    models: &[ModelSection],
    recipe_dir: &Path,
    cache: &Path,
) -> Result<Vec<String>> {
    let name = &c.source.name;
    if !rustix::process::getuid().is_root() {
        bail!(
            "custom node {name}: install_script = \"run\" needs the builder to run as root (the \
             script runs as an unprivileged account in namespaces of its own); run comfy-build as \
             root, or set install_script = \"skip\" and pin what the script does in the recipe"
        );
    }
    let scratch = tempfile::tempdir_in(cache)?;
    let s = scratch.path();
    // The declared models, where the script looks for them (COMFYUI_MODEL_PATH): a script that
    // finds its files there downloads nothing.
    let models_dir = s.join("models");
    fs_err::create_dir_all(&models_dir)?;
    for m in models {
        let src = fetch_model(m, recipe_dir, cache)?;
        let dest = models_dir.join(&m.path);
        if let Some(p) = dest.parent() {
            fs_err::create_dir_all(p)?;
        }
        fs_err::copy(&src, &dest)?;
    }
    let home = s.join("home");
    fs_err::create_dir_all(&home)?;
    for (bin, text) in [
        ("shim/bin/pip", SHIM),
        ("shim/bin/pip3", SHIM),
        ("shim/bin/uv", SHIM),
    ] {
        let p = s.join(bin);
        fs_err::create_dir_all(p.parent().context("shim")?)?;
        fs_err::write(&p, text)?;
        fs_err::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    fs_err::create_dir_all(s.join("shim/py/pip"))?;
    fs_err::write(s.join("shim/py/pip/__init__.py"), "")?;
    fs_err::write(s.join("shim/py/pip/__main__.py"), SHIM_PY)?;
    let comfy = stage.join("ComfyUI");
    let before = snapshot(&comfy)?;
    let models_before = snapshot(&models_dir)?;
    let rel = dir
        .strip_prefix(stage)
        .context("the node's folder is outside the stage")?
        .to_string_lossy()
        .into_owned();
    let log = cache.log(&format!("install-{}.log", name.replace('/', "--")));
    // What the script may write: its node's folder, the models, its home. Nothing else is its.
    for d in [dir, &models_dir, &home] {
        chown_tree(d, NOBODY)?;
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
    ]);
    if !c.source.install_network {
        cmd.arg("--net");
    }
    cmd.args(["--", "sh", "-c", VIEW, "sh"])
        .arg(s)
        .arg(stage)
        .arg(&rel)
        .arg(NOBODY.to_string())
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    let ran = support::cmd::run_logged(&mut cmd, &log);
    chown_tree(dir, 0)?;
    remove_bytecode(dir)?;
    let requested = fs_err::read_to_string(home.join(".requested")).unwrap_or_default();
    if !requested.trim().is_empty() {
        bail!(
            "custom node {name}: install.py tried to install packages ({}); the env is the \
             recipe's lock: add what the node needs to the recipe (its requirements, or \
             [packages] core) instead (log {})",
            requested.trim().lines().collect::<Vec<_>>().join("; "),
            log.display()
        );
    }
    ran.with_context(|| format!("custom node {name}: install.py failed"))?;
    let after = snapshot(&comfy)?;
    let (changed, removed) = written(&before, &after);
    let node_rel = dir
        .strip_prefix(&comfy)
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned();
    let inside = |p: &str| p == node_rel || p.starts_with(&format!("{node_rel}/"));
    let outside: Vec<&String> = changed
        .iter()
        .map(|(p, _)| p)
        .filter(|p| !inside(p))
        .collect();
    let removed_outside: Vec<&String> = removed.iter().filter(|p| !inside(p)).collect();
    if !outside.is_empty() || !removed_outside.is_empty() {
        bail!(
            "custom node {name}: install.py changed the app outside its own folder ({}{}); only \
             what it writes in {node_rel} can become part of the release",
            outside
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if removed_outside.is_empty() {
                String::new()
            } else {
                format!(
                    "; removed {}",
                    removed_outside
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let models_after = snapshot(&models_dir)?;
    let (new_models, _) = written(&models_before, &models_after);
    for (p, is_dir) in new_models {
        if is_dir {
            // Folders the script made for its models: fine when all they hold is declared.
            let mut bad = Vec::new();
            for (f, st) in &models_after {
                if f.starts_with(&format!("{p}/"))
                    && !st.dir
                    && !models.iter().any(|m| m.path == *f)
                {
                    bad.push(f.clone());
                }
            }
            if !bad.is_empty() {
                bad.sort();
                bail!(
                    "custom node {name}: install.py wrote model files the recipe does not declare: \
                     {}; add a [[models]] entry for each (path, sha256, size, url)",
                    bad.join(", ")
                );
            }
        } else {
            match models.iter().find(|m| m.path == p) {
                None => bail!(
                    "custom node {name}: install.py wrote models/{p}, which the recipe does not \
                     declare; add a [[models]] entry (path, sha256, size, url)"
                ),
                Some(m) => {
                    let got = sha256_of(&models_dir.join(&p))?;
                    if got != m.sha256.to_ascii_lowercase() {
                        bail!(
                            "custom node {name}: install.py replaced models/{p} with a file of \
                             sha256 {got}, not the declared {}",
                            m.sha256
                        );
                    }
                }
            }
        }
    }
    Ok(changed
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p != &node_rel)
        .collect())
}

/// What the install step runs inside the stage, for `build --dry-run`: nested sources placed,
/// models checked, each node's install script run or named.
pub fn commands(plan: &crate::plan::Plan) -> Vec<String> {
    use crate::plan::Role;
    let r = &plan.recipe;
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
    install
}
