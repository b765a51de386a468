//! What real custom nodes do beyond their git tree and `requirements.txt` (ComfyUI-Manager runs a
//! node's `install.py` after cloning it, and those scripts clone more code, download models and
//! pip-install packages), done from pinned inputs: nested git sources placed inside a node's
//! folder, declared model files fetched and checked by SHA-256, and each node's `install.py`
//! either named and left alone (the default) or run in the stage with no network (unless the
//! recipe allows it), the env behind an overlay so no package can change, and everything it wrote
//! checked: inside the node it becomes part of the release; a declared model is checked; anything
//! else fails the build.

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
        crate::process::run(
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
    let dest = cache.join("models").join(&sha);
    if dest.is_file() {
        return Ok(dest);
    }
    fs_err::create_dir_all(cache.join("models"))?;
    let tmp = cache
        .join("models")
        .join(format!(".{sha}.part-{}", std::process::id()));
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
    let (up, work, home) = (s.join("up"), s.join("work"), s.join("home"));
    for d in [&up, &work, &home] {
        fs_err::create_dir_all(d)?;
    }
    let comfy = stage.join("ComfyUI");
    let before = snapshot(&comfy)?;
    let models_before = snapshot(&models_dir)?;
    let venv = stage.join("venv");
    let log = cache
        .join("logs")
        .join(format!("install-{}.log", name.replace('/', "--")));
    let mut cmd = Command::new("unshare");
    if !rustix::process::getuid().is_root() {
        cmd.arg("--map-root-user");
    }
    cmd.args(["--mount", "--propagation", "private"]);
    if !c.source.install_network {
        cmd.arg("--net");
    }
    cmd.args(["--", "sh", "-c"])
        .arg(
            "mount -t overlay overlay -o \"lowerdir=$1,upperdir=$2,workdir=$3\" \"$1\" || exit 97; \
             cd \"$4\" && exec \"$1/bin/python\" install.py",
        )
        .arg("sh")
        .arg(&venv)
        .arg(&up)
        .arg(&work)
        .arg(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("LANG", "C.UTF-8")
        .env("COMFYUI_PATH", &comfy)
        .env("COMFYUI_MODEL_PATH", &models_dir)
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    crate::process::run_logged(&mut cmd, &log)
        .with_context(|| format!("custom node {name}: install.py failed"))?;
    // No package may change: the env is the lock's.
    let mut touched: Vec<String> = Vec::new();
    let mut stack = vec![up.clone()];
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d)? {
            let p = e?.path();
            let rel = p
                .strip_prefix(&up)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if rel.split('/').any(|x| x == "__pycache__") {
                continue;
            }
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if n.ends_with(".dist-info") {
                touched.push(n.trim_end_matches(".dist-info").to_owned());
            } else if p.is_dir() {
                stack.push(p);
            } else if !rel.contains(".dist-info/") {
                touched.push(rel);
            }
        }
    }
    if !touched.is_empty() {
        touched.sort();
        touched.dedup();
        bail!(
            "custom node {name}: install.py installed or changed packages in the locked env ({}); \
             add what the node needs to the recipe (its requirements, or [packages] core) instead \
             (log {})",
            touched.join(", "),
            log.display()
        );
    }
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
    if !outside.is_empty() || !removed.is_empty() {
        bail!(
            "custom node {name}: install.py changed the app outside its own folder ({}{}); only \
             what it writes in {node_rel} can become part of the release",
            outside
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if removed.is_empty() {
                String::new()
            } else {
                format!("; removed {}", removed.join(", "))
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
