//! Host configuration (`/etc/comfyui/comfyctl.toml`) and the host layout it implies. `--root DIR`
//! prefixes every host path, so every verb works on a scratch root.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The config file path relative to the root.
pub const CONFIG_PATH: &str = "etc/comfyui/comfyctl.toml";

/// What an operator sets per host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Bundle target this host runs, e.g. `linux-aarch64-cu130-sm_121`; others are refused.
    pub target: String,
    /// Install root (the seed's `comfyui_install_dir`).
    #[serde(default = "default_install_dir")]
    pub install_dir: PathBuf,
    /// Directory of trusted `*.pub` release keys (`revoked/` inside it is refused).
    #[serde(default = "default_keys_dir")]
    pub keys_dir: PathBuf,
    /// Good releases kept by gc (current, previous and the last good one are always kept).
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// How long a second activation waits for the lock.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_secs: u64,
    /// Largest bundle download accepted.
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
}

fn default_install_dir() -> PathBuf {
    PathBuf::from("/opt/comfyui")
}
fn default_keys_dir() -> PathBuf {
    PathBuf::from("/etc/comfyui/keys")
}
fn default_keep() -> usize {
    3
}
fn default_lock_wait() -> u64 {
    10
}
fn default_max_download() -> u64 {
    64 << 30
}

impl HostConfig {
    /// Reads the config; a missing file is an error that says what to write.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path).with_context(|| {
            format!(
                "no host config; write {} with at least `target = \"linux-aarch64-cu130-sm_121\"`",
                path.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Every host path, already prefixed with `--root`.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub install: PathBuf,
    pub keys: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, cfg: &HostConfig) -> Self {
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        Self {
            root: root.to_owned(),
            install: under(&cfg.install_dir),
            keys: under(&cfg.keys_dir),
        }
    }
    pub fn releases(&self) -> PathBuf {
        self.install.join("releases")
    }
    pub fn release(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }
    pub fn store(&self) -> PathBuf {
        self.install.join("store")
    }
    pub fn state(&self) -> PathBuf {
        self.install.join("state")
    }
    pub fn current(&self) -> PathBuf {
        self.install.join("current")
    }
    pub fn downloads(&self) -> PathBuf {
        self.state().join("downloads")
    }

    /// Creates the directories activation needs (never touches anything that exists).
    pub fn ensure(&self) -> Result<()> {
        for d in [self.releases(), self.store(), self.state()] {
            fs_err::create_dir_all(&d)?;
        }
        Ok(())
    }
}
