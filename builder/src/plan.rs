//! Parse, then validate: a [`Recipe`] becomes a [`Plan`] with every source resolved to a URL and a
//! directory name, and every rule a build would otherwise trip over late checked up front.

use crate::recipe::{PythonMode, Recipe};
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What a git source is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Comfyui,
    Node,
    Extension,
    /// A git source inside a custom node's folder (`custom_nodes.nested`).
    Nested,
}

/// One git source of the build.
#[derive(Clone, Debug)]
pub struct Source {
    pub role: Role,
    /// Directory name (custom nodes) or extension name.
    pub name: String,
    /// As written in the recipe (what the lock and manifest record).
    pub url: String,
    /// What git is given: the URL, or a local path made absolute.
    pub fetch_url: String,
    pub rev: String,
    pub disabled: bool,
    /// Custom nodes: paths inside the node it writes (recipe `state`), and classes it may register
    /// without `/object_info` describing them (recipe `broken_classes`).
    pub state: Vec<String>,
    pub broken_classes: Vec<String>,
    /// Nested sources: the node's directory name and the path inside it (the source's `name` is
    /// `<node>/<path>`).
    pub nested_in: Option<(String, String)>,
    /// Run its `install.py` at build time, and whether with network.
    pub install_script: crate::recipe::InstallScript,
    pub install_network: bool,
}

/// A source checked out at its locked commit: what a build assembles the release from.
#[derive(Clone, Debug)]
pub struct Checkout {
    pub source: Source,
    pub commit: String,
    /// The exported tree (no `.git`).
    pub tree: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub recipe: Recipe,
    pub recipe_path: PathBuf,
    pub recipe_sha256: String,
    pub sources: Vec<Source>,
    /// The recipe's workflows, read and checked for the API format.
    pub workflows: Vec<bundle::Workflow>,
}

fn repo_name(url: &str) -> String {
    let base = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url);
    // A git bundle file (`X.git.bundle`) names the repository it holds, like a URL does.
    let base = base.strip_suffix(".bundle").unwrap_or(base);
    base.trim_end_matches(".git").to_owned()
}

fn resolve_url(dir: &Path, url: &str) -> String {
    if url.contains("://") || url.starts_with("git@") || Path::new(url).is_absolute() {
        url.to_owned()
    } else {
        dir.join(url).to_string_lossy().into_owned()
    }
}

fn check_name(what: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
    {
        bail!("{what} {v:?} must be non-empty and use only [A-Za-z0-9._+-]");
    }
    Ok(())
}

/// `TORCH_CUDA_ARCH_LIST` entries as torch and SageAttention read them: `12.1`, `9.0a`, `8.6+PTX`.
/// `121` or `sm_121` are silently skipped by SageAttention's setup.py, so no kernel would be built.
pub fn check_arch_list(list: &str) -> Result<()> {
    for a in list.split([';', ' ', ',']).filter(|a| !a.is_empty()) {
        let core = a.trim_end_matches("+PTX").trim_end_matches(['a', 'f']);
        let ok = core.split_once('.').is_some_and(|(maj, min)| {
            !maj.is_empty()
                && !min.is_empty()
                && maj.bytes().all(|b| b.is_ascii_digit())
                && min.bytes().all(|b| b.is_ascii_digit())
        });
        if !ok {
            bail!("arch {a:?} in arch_list is not spelled as TORCH_CUDA_ARCH_LIST expects: write `12.1` (not `121` or `sm_121`)");
        }
        if a.ends_with('f') {
            bail!(
                "arch {a:?}: torch's cpp_extension rejects the `f` suffix; write `12.1` or `12.1a`"
            );
        }
    }
    Ok(())
}

impl Plan {
    pub fn new(recipe: Recipe, recipe_path: &Path, recipe_bytes: &[u8]) -> Result<Self> {
        let r = &recipe;
        let dir = recipe_path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        check_name("bundle name", &r.bundle.name)?;
        check_name("bundle version", &r.bundle.version)?;
        check_name("bundle target", &r.bundle.target)?;
        if !matches!(r.bundle.device_type.as_str(), "cuda" | "cpu") {
            bail!(
                "bundle.device_type must be \"cuda\" or \"cpu\", not {:?}",
                r.bundle.device_type
            );
        }
        if !r
            .python
            .version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            bail!("python.version {:?} must look like 3.12", r.python.version);
        }
        if r.python.mode == PythonMode::System && !Path::new(&r.python.path).is_absolute() {
            bail!(
                "python.mode = \"system\" needs an absolute python.path that exists on every host"
            );
        }
        check_arch_list(&r.target.arch_list)?;
        if let Some(t) = &r.toolkit {
            if !r.target.cuda_home.is_empty() {
                bail!("target.cuda_home and [toolkit] both give a CUDA toolkit; keep one");
            }
            if t.packages.is_empty() || t.packages.iter().any(|p| !p.contains("==")) {
                bail!(
                    "toolkit.packages must be exact pins (`nvidia-cuda-nvcc==13.0.88`), got {:?}",
                    t.packages
                );
            }
            if !t
                .packages
                .iter()
                .any(|p| p.starts_with("nvidia-cuda-nvcc=="))
            {
                bail!("toolkit.packages has no nvidia-cuda-nvcc: it is the compiler");
            }
            if let Some(e) = r
                .extensions
                .iter()
                .find(|e| e.env.contains_key("CUDA_HOME"))
            {
                bail!(
                    "extension {} sets CUDA_HOME, but [toolkit] makes it; drop it from its env",
                    e.name
                );
            }
        }
        if r.torch.pins.iter().any(|p| !p.contains("==")) {
            bail!(
                "torch.pins must be exact (`name==version`), got {:?}",
                r.torch.pins
            );
        }
        for a in &r.launch.args {
            if a.starts_with('-') && !a.starts_with("--") {
                bail!("launch flag {a:?}: ComfyUI flags are long options (`--name`)");
            }
        }
        let mut sources = vec![Source {
            role: Role::Comfyui,
            name: "ComfyUI".into(),
            url: r.comfyui.git.clone(),
            fetch_url: resolve_url(&dir, &r.comfyui.git),
            rev: r.comfyui.rev.clone(),
            disabled: false,
            state: Vec::new(),
            broken_classes: Vec::new(),
            nested_in: None,
            install_script: Default::default(),
            install_network: false,
        }];
        let mut names = std::collections::HashSet::new();
        for n in &r.custom_nodes {
            let name = n.name.clone().unwrap_or_else(|| repo_name(&n.git));
            check_name("custom node name", &name)?;
            if !names.insert(name.clone()) {
                bail!("two custom nodes would both live in custom_nodes/{name}; set `name` on one");
            }
            for st in &n.state {
                let p = st.trim_end_matches('/');
                if p.is_empty()
                    || p.starts_with('/')
                    || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                {
                    bail!("custom node {name}: state path {st:?} must be a plain relative path inside the node");
                }
            }
            sources.push(Source {
                role: Role::Node,
                name: name.clone(),
                url: n.git.clone(),
                fetch_url: resolve_url(&dir, &n.git),
                rev: n.rev.clone(),
                disabled: n.disabled,
                state: n.state.clone(),
                broken_classes: n.broken_classes.clone(),
                nested_in: None,
                install_script: n.install_script,
                install_network: n.install_network,
            });
            let mut inner = std::collections::HashSet::new();
            for x in &n.nested {
                let p = x.path.trim_end_matches('/');
                if p.is_empty()
                    || p.starts_with('/')
                    || p.split('/')
                        .any(|c| c.is_empty() || c == "." || c == ".." || c == ".git")
                {
                    bail!("custom node {name}: nested path {:?} must be a plain relative path inside the node", x.path);
                }
                if !inner.insert(p.to_owned()) {
                    bail!("custom node {name}: two nested sources at {p}");
                }
                sources.push(Source {
                    role: Role::Nested,
                    name: format!("{name}/{p}"),
                    url: x.git.clone(),
                    fetch_url: resolve_url(&dir, &x.git),
                    rev: x.rev.clone(),
                    disabled: n.disabled,
                    state: Vec::new(),
                    broken_classes: Vec::new(),
                    nested_in: Some((name.clone(), p.to_owned())),
                    install_script: x.install_script,
                    install_network: x.install_network,
                });
            }
        }
        for e in &r.extensions {
            check_name("extension name", &e.name)?;
            match (&e.git, &e.rev, &e.pypi) {
                (Some(g), Some(rev), None) => sources.push(Source {
                    role: Role::Extension,
                    name: e.name.clone(),
                    url: g.clone(),
                    fetch_url: resolve_url(&dir, g),
                    rev: rev.clone(),
                    disabled: false,
                    state: Vec::new(),
                    broken_classes: Vec::new(),
                    nested_in: None,
                    install_script: Default::default(),
                    install_network: false,
                }),
                (None, None, Some(p)) if p.contains("==") => {}
                _ => bail!(
                    "extension {}: give either `git` and `rev`, or `pypi = \"name==version\"`",
                    e.name
                ),
            }
        }
        let mut model_paths = std::collections::HashSet::new();
        for m in &r.models {
            bundle::paths::check_path(&m.path)
                .map_err(|e| anyhow::anyhow!("model {:?}: {e}", m.path))?;
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("model {}: sha256 must be 64 hex digits", m.path);
            }
            if m.url.is_empty() && m.mirror.is_empty() {
                bail!(
                    "model {}: give `url` (https) or `mirror` (a local copy) to fetch it from",
                    m.path
                );
            }
            if !m.url.is_empty() && !m.url.starts_with("https://") && !m.url.starts_with("http://")
            {
                bail!("model {}: url must be https", m.path);
            }
            if !model_paths.insert(m.path.clone()) {
                bail!("model {} is declared twice", m.path);
            }
        }
        for k in r.launch.env.keys() {
            let ok = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                bail!("launch.env key {k:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
            }
        }
        let mut workflows = Vec::new();
        for w in &r.workflows {
            let path = dir.join(&w.file);
            let text =
                fs_err::read_to_string(&path).with_context(|| format!("workflow {}", w.file))?;
            let wf = comfyui::workflow::parse(&text)
                .with_context(|| format!("workflow {}", path.display()))?;
            let name = Path::new(&w.file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_name("workflow file name", &name)?;
            if workflows.iter().any(|x: &bundle::Workflow| x.name == name) {
                bail!("two workflows are named {name:?}");
            }
            workflows.push(bundle::Workflow {
                name,
                run: w.run,
                prompt: serde_json::to_string(&wf)?,
            });
        }
        Ok(Self {
            workflows,
            recipe,
            recipe_path: recipe_path.to_owned(),
            recipe_sha256: hex::encode(Sha256::digest(recipe_bytes)),
            sources,
        })
    }

    pub fn lock_path(&self) -> PathBuf {
        let mut s = self.recipe_path.as_os_str().to_owned();
        s.push(".lock");
        PathBuf::from(s)
    }
}

/// The flags a ComfyUI checkout accepts, read from its `comfy/cli_args.py` (`add_argument("--x"`).
pub fn known_flags(cli_args_py: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for (i, _) in cli_args_py.match_indices("add_argument(") {
        let rest = &cli_args_py[i + "add_argument(".len()..];
        let args_end = rest.find(')').unwrap_or(rest.len());
        for part in rest[..args_end].split(',') {
            let t = part.trim().trim_matches(['"', '\'']);
            if t.starts_with("--") {
                out.insert(t.to_owned());
            }
        }
    }
    out
}

/// Every `--flag` of the launch spec must exist in the pinned ComfyUI, or it would exit 2 at start.
pub fn check_flags(args: &[String], cli_args_py: &str) -> Result<()> {
    let known = known_flags(cli_args_py);
    for a in args {
        let flag = a.split('=').next().unwrap_or(a);
        if flag.starts_with("--") && !known.contains(flag) {
            bail!("launch flag {flag} is not accepted by the pinned ComfyUI (comfy/cli_args.py): it would exit 2 at start");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_spellings() {
        for ok in ["", "12.1", "12.1a", "12.1+PTX", "9.0;12.0"] {
            check_arch_list(ok).unwrap();
        }
        for bad in ["121", "sm_121", "12", "12.1f"] {
            assert!(check_arch_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_are_checked_against_cli_args() {
        let py = "parser.add_argument(\"--listen\", type=str)\nparser.add_argument('--port', type=int)\nparser.add_argument(\"--cpu\", action=\"store_true\")";
        check_flags(
            &[
                "--listen".into(),
                "0.0.0.0".into(),
                "--port=8188".into(),
                "--cpu".into(),
            ],
            py,
        )
        .unwrap();
        let err = check_flags(&["--use-xformers".into()], py).unwrap_err();
        assert!(err.to_string().contains("--use-xformers"), "{err}");
    }
}
