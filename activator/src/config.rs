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
    /// A download that receives nothing for this long is stopped (the same command resumes it).
    #[serde(default = "default_stall")]
    pub stall_secs: u64,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub models: ModelsConfig,
}

/// Where `comfyctl models --fetch` gets the model files a release declares.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// A mirror to fetch from instead of each file's own URL: `<base_url>/<path>` (a fleet's
    /// file server; the releases' URLs otherwise).
    #[serde(default)]
    pub base_url: String,
}

/// The systemd unit (the seed's `service_*` variables).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_service_name")]
    pub name: String,
    /// `comfyui` (a dedicated system user, created by `comfyctl setup`) or `root` as the seed ran.
    #[serde(default = "default_service_user")]
    pub user: String,
    #[serde(default = "default_service_user")]
    pub group: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The account pre-flight and doctor's checks run a release's code as: never the service
    /// user, whose processes could signal or trace them (`comfyctl setup` creates it; `nobody`
    /// stands in until then).
    #[serde(default = "default_check_user")]
    pub check_user: String,
    /// Before the unit stops: wait for the app's running and pending jobs (`queue`), the
    /// running one only (`running`), or none (`off`).
    #[serde(default)]
    pub drain: crate::drain::Policy,
    /// How long a stop waits for them before it is refused (nothing changed).
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: default_service_name(),
            user: default_service_user(),
            group: default_service_user(),
            port: default_port(),
            listen: default_listen(),
            check_user: default_check_user(),
            drain: crate::drain::Policy::default(),
            drain_timeout_secs: default_drain_timeout(),
        }
    }
}

/// Where the mutable directories live: empty = local under `data/`, else a path (NFS).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub models: String,
    #[serde(default)]
    pub input: String,
    #[serde(default)]
    pub output: String,
    /// Mapped targets must be mount points (an unmounted NFS share is an empty local directory).
    #[serde(default)]
    pub require_mount: bool,
    /// The largest database (and each of its WAL files) copied for a release's first
    /// activation; a larger one is refused (the service owns it and could grow it at will).
    #[serde(default = "default_max_database")]
    pub max_database_bytes: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            models: String::new(),
            input: String::new(),
            output: String::new(),
            require_mount: false,
            max_database_bytes: default_max_database(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
    /// Overrides the device type the manifest expects (`cpu` on a host without a GPU).
    #[serde(default)]
    pub device_type: String,
    /// A release's workflow naming a model file this host's app does not list: `warn` (reported,
    /// still healthy) or `fail` (unhealthy: the activation rolls back).
    #[serde(default)]
    pub missing_models: MissingModels,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingModels {
    #[default]
    Warn,
    Fail,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            timeout_secs: default_health_timeout(),
            device_type: String::new(),
            missing_models: MissingModels::Warn,
        }
    }
}

/// Multi-user access (the seed's `comfyui_group`, `comfyui_users`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub users: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            group: default_group(),
            users: Vec::new(),
        }
    }
}

fn default_service_name() -> String {
    "comfyui".into()
}
fn default_service_user() -> String {
    "comfyui".into()
}
fn default_port() -> u16 {
    8188
}
fn default_listen() -> String {
    "0.0.0.0".into()
}
fn default_check_user() -> String {
    "comfyui-check".into()
}
fn default_drain_timeout() -> u64 {
    1800
}
fn default_max_database() -> u64 {
    4 << 30
}
fn default_health_timeout() -> u64 {
    120
}
fn default_group() -> String {
    "comfyui-users".into()
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
fn default_stall() -> u64 {
    60
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
    /// What comfyctl writes for the unit (its environment file, the model-paths file): root's
    /// alone, readable by the service's group.
    pub fn unit_inputs(&self) -> PathBuf {
        self.state().join("unit")
    }
    pub fn current(&self) -> PathBuf {
        self.install.join("current")
    }
    pub fn downloads(&self) -> PathBuf {
        self.state().join("downloads")
    }
    pub fn data(&self) -> PathBuf {
        self.install.join("data")
    }
    pub fn unit(&self, name: &str) -> PathBuf {
        self.root
            .join("etc/systemd/system")
            .join(format!("{name}.service"))
    }

    /// Creates the directories activation needs (never touches anything that exists).
    pub fn ensure(&self) -> Result<()> {
        for d in [self.releases(), self.store(), self.state()] {
            fs_err::create_dir_all(&d)?;
        }
        Ok(())
    }
}
