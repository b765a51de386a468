//! The recipe as written: TOML with every unknown key refused (the error names it). Validation into a
//! [`crate::plan::Plan`] happens separately (parse, then validate).

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub bundle: BundleSection,
    pub comfyui: GitRef,
    pub python: PythonSection,
    pub torch: TorchSection,
    pub target: TargetSection,
    /// A CUDA toolkit from pinned PyPI wheels instead of `target.cuda_home`.
    #[serde(default)]
    pub toolkit: Option<ToolkitSection>,
    #[serde(default)]
    pub packages: PackagesSection,
    #[serde(default)]
    pub extensions: Vec<ExtensionSection>,
    #[serde(default)]
    pub custom_nodes: Vec<NodeSection>,
    #[serde(default)]
    pub launch: LaunchSection,
    #[serde(default)]
    pub preflight: Vec<PreflightSection>,
    /// The operator's workflows, checked against the built app (and on the host).
    #[serde(default)]
    pub workflows: Vec<WorkflowSection>,
    /// Model files nodes or their install scripts need: on the host's model store, not in the
    /// bundle.
    #[serde(default)]
    pub models: Vec<ModelSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Below the models tree (`ultralytics/bbox/face_yolov8m.pt`).
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Where to fetch it (https): recorded in the manifest for hosts.
    #[serde(default)]
    pub url: String,
    /// A local copy the build takes instead of fetching (relative to the recipe).
    #[serde(default)]
    pub mirror: String,
}

/// What the build does with a custom node's `install.py`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallScript {
    /// Not run (the build says so, and what the script would do is the recipe's to pin).
    #[default]
    Skip,
    /// Run at build time, in the stage, without network unless `install_network`.
    Run,
}

/// A pinned git source placed inside a custom node's folder (what its install script would
/// clone, unpinned, from the network).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NestedSection {
    /// Inside the node's folder, e.g. `impact_subpack`.
    pub path: String,
    pub git: String,
    pub rev: String,
    #[serde(default)]
    pub install_script: InstallScript,
    #[serde(default)]
    pub install_network: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSection {
    /// A workflow in ComfyUI's API format ("Export (API)"), relative to the recipe.
    pub file: String,
    /// Also queue it (build: on the CPU; host: on its device). Only for workflows needing no model.
    #[serde(default)]
    pub run: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSection {
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub target: String,
    /// What `/system_stats` must report when healthy: `cuda` or `cpu`.
    pub device_type: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitRef {
    /// URL, or a path relative to the recipe.
    pub git: String,
    /// Branch, tag or commit; the lock pins the commit.
    pub rev: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PythonMode {
    Embedded,
    System,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSection {
    pub version: String,
    pub mode: PythonMode,
    /// Interpreter: an absolute path or a name looked up on PATH. Empty (embedded mode): uv's
    /// managed CPython of `version` (python-build-standalone), found or installed through uv.
    #[serde(default)]
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TorchSection {
    /// Install the pins (false: they only constrain other installs).
    pub install: bool,
    pub index_url: String,
    pub pins: Vec<String>,
    /// `torch.version.cuda` the build must have, empty for none.
    #[serde(default)]
    pub cuda: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub platform: String,
    #[serde(default)]
    pub cuda_home: String,
    /// TORCH_CUDA_ARCH_LIST spelling: `12.1`, `12.1a`, `12.1+PTX` (never `121` or `sm_121`).
    #[serde(default)]
    pub arch_list: String,
}

/// The CUDA compiler and its companions as pinned PyPI wheels (`nvidia-cuda-nvcc`, `-crt`,
/// `nvidia-nvvm`, `nvidia-cuda-cccl`, `nvidia-cuda-cuobjdump`): installed into the build cache from
/// the lock's hashes beside the env (whose `nvidia/cu13` torch's own dependencies fill with headers
/// and libraries), which together make `CUDA_HOME` for the extensions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolkitSection {
    /// Exact pins (`name==version`); the compiler's companions at the compiler's release.
    pub packages: Vec<String>,
    /// Also install them into the release (the unit can then point `TRITON_PTXAS_PATH` at the
    /// release's own ptxas); by default they are build-only.
    #[serde(default)]
    pub in_release: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesSection {
    /// Extra packages every release gets (the seed's onnxruntime, python-dotenv, psutil).
    #[serde(default)]
    pub core: Vec<String>,
    /// Requirement names dropped from custom nodes' requirements (`*` suffix = prefix match).
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSection {
    pub name: String,
    /// Source: a git repository (with `rev`) or a PyPI sdist pin (`pypi = "torchao==0.15.0"`).
    #[serde(default)]
    pub git: Option<String>,
    #[serde(default)]
    pub rev: Option<String>,
    #[serde(default)]
    pub pypi: Option<String>,
    /// Module the pre-flight imports.
    pub import: String,
    /// A failed build stops the whole build (the seed insists on sageattention).
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub git: String,
    pub rev: String,
    /// Directory name under custom_nodes (default: the repository name).
    #[serde(default)]
    pub name: Option<String>,
    /// Shipped as `<name>.disabled`, which ComfyUI skips.
    #[serde(default)]
    pub disabled: bool,
    /// Paths inside the node's directory it writes at run time, beyond those the smoke start sees
    /// (`rgthree_config.json`; a trailing `/` marks a directory). Each becomes a link into the
    /// host's per-node state.
    #[serde(default)]
    pub state: Vec<String>,
    /// Classes this node registers that `/object_info` may fail to describe without failing the
    /// build (by name).
    #[serde(default)]
    pub broken_classes: Vec<String>,
    /// Run the node's `install.py` at build time, or not (the default).
    #[serde(default)]
    pub install_script: InstallScript,
    /// Let that script reach the network (default: none).
    #[serde(default)]
    pub install_network: bool,
    /// Pinned git sources inside the node's folder.
    #[serde(default)]
    pub nested: Vec<NestedSection>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSection {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightSection {
    pub name: String,
    pub python: String,
}

impl Recipe {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    pub fn load(path: &Path) -> Result<(Self, Vec<u8>)> {
        let bytes = fs_err::read(path)?;
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        let r = Self::parse(text).with_context(|| format!("invalid recipe {}", path.display()))?;
        Ok((r, bytes))
    }
}
