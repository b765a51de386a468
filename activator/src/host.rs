//! A host as comfyctl sees it: its config, its layout, and the few facts every verb reads
//! (where `current` points, the installed releases).

use crate::config::{HostConfig, Layout, CONFIG_PATH};
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

pub struct Host {
    pub cfg: HostConfig,
    pub layout: Layout,
}

/// An error that means the input or the request was refused (exit code 2), not that something broke.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// An error this program refuses with (exit 2), for [`support::exit_code`].
pub fn is_refusal(c: &(dyn std::error::Error + 'static)) -> bool {
    c.downcast_ref::<Refusal>().is_some()
}

/// Shorthand for returning a [`Refusal`].
pub fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(Refusal(msg.into()).into())
}

impl Host {
    /// The trusted release keys (`keys/*.pub`, less `keys/revoked/`); none is a refusal that says
    /// what to install.
    pub fn trusted_keys(&self) -> Result<keys::TrustedKeys> {
        keys::TrustedKeys::load_dir(&self.layout.keys).or_else(|e| {
            refuse(format!(
                "{e}: install the release public key (comfy-build keygen's .pub) there"
            ))
        })
    }

    /// True when the host tree is this machine's own `/` (no `--root`).
    pub fn is_real_root(&self) -> bool {
        self.layout.root == std::path::Path::new("/")
    }

    pub fn open(root: &Path, config: Option<&Path>) -> Result<Self> {
        let path = config.map_or_else(|| root.join(CONFIG_PATH), Path::to_owned);
        let cfg = HostConfig::load(&path)?;
        let layout = Layout::new(root, &cfg);
        Ok(Self { cfg, layout })
    }

    /// Takes the activation lock (creating the layout first), waiting as long as the config says.
    pub fn lock(&self) -> Result<crate::lock::Lock> {
        self.layout.ensure()?;
        crate::lock::acquire(
            &self.layout.state(),
            std::time::Duration::from_secs(self.cfg.lock_wait_secs),
        )
    }

    /// The release id `current` points at, if any.
    pub fn current(&self) -> Option<String> {
        let t = fs_err::read_link(self.layout.current()).ok()?;
        t.file_name().and_then(|n| n.to_str()).map(str::to_owned)
    }

    /// Installed release directories (staging excluded), by id.
    pub fn installed(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let dir = self.layout.releases();
        if !dir.exists() {
            return Ok(out);
        }
        for e in fs_err::read_dir(&dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with('.') {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a release: first renamed out of sight (`.trash-*`, atomic), then deleted, so a kill
    /// mid-way never leaves a half-deleted directory that looks like a release. Under the lock only.
    pub fn discard(&self, id: &str) -> Result<()> {
        let dir = self.layout.release(id);
        let trash = self
            .layout
            .releases()
            .join(format!(".trash-{id}-{}", std::process::id()));
        fs_err::rename(&dir, &trash)?;
        crate::atomic::fsync_dir(&self.layout.releases())?;
        bundle::make_writable_and_remove(&trash)
            .with_context(|| format!("removing {}", trash.display()))
    }

    /// Removes unpacks and removals that a killed comfyctl left behind. Only called under the lock.
    pub fn clean_staging(&self) -> Result<Vec<PathBuf>> {
        let dir = self.layout.releases();
        // Collect first: removing entries while reading a directory may skip some.
        let mut stale = Vec::new();
        for e in fs_err::read_dir(&dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with(".staging-") || name.starts_with(".trash-") {
                stale.push(p);
            }
        }
        // Each activation stages under a name of its own, so a leftover that cannot be removed
        // (a path too deep for the tools, a busy mount) never blocks the next one: it is named.
        let mut removed = Vec::new();
        for p in stale {
            match bundle::make_writable_and_remove(&p) {
                Ok(()) => removed.push(p),
                Err(e) => tracing::warn!(
                    "cannot remove stale {} ({e:#}); remove it by hand, it blocks nothing",
                    p.display()
                ),
            }
        }
        Ok(removed)
    }

    /// Resolves a full id or a unique prefix of one (at least 6 characters).
    pub fn resolve_id(&self, prefix: &str) -> Result<String> {
        let all = self.installed()?;
        let hits: Vec<_> = all
            .iter()
            .filter(|id| prefix.len() >= 6 && id.starts_with(prefix))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => refuse(format!(
                "no installed release matches {prefix:?}; see `comfyctl releases`"
            )),
            _ => refuse(format!(
                "{prefix:?} matches several releases; give more of the id"
            )),
        }
    }
}
