//! Knowing before switching: `comfyctl diff` (what a release changes against `current`) and
//! `comfyctl activate --dry-run` (every check an activation makes that needs no change, then the
//! diff and the plan). Neither writes anything but a URL's partial copy, removed on return.

use crate::delta::Remote;
use crate::host::{refuse, Host};
use crate::store::Store;
use crate::{activate, release, source};
use anyhow::{Context as _, Result};
use bundle::Manifest;
use serde::Serialize;
use std::path::PathBuf;
use support::diff::ReleaseDiff;

/// A file removed when dropped (the partial copy of a remote bundle).
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs_err::remove_file(p);
        }
    }
}

/// A release to compare or plan, opened the way activation opens it.
pub(crate) struct Opened {
    pub(crate) id: String,
    pub(crate) manifest: Manifest,
    bundle: Option<bundle::Bundle>,
    /// For a URL: the bytes the activation would download to this host.
    download: Option<u64>,
    _scratch: Scratch,
}

/// An installed id (or unique prefix), a bundle file or a URL; bundles must carry a trusted
/// signature, as for an activation.
pub(crate) fn open(host: &Host, src: &str, store: &Store) -> Result<Opened> {
    if source::is_url(src) {
        let t = host.trusted_keys()?;
        fs_err::create_dir_all(host.layout.downloads())?;
        let dest = host
            .layout
            .downloads()
            .join(format!("plan-{}.bundle", std::process::id()));
        let scratch = Scratch(Some(dest.clone()));
        let stall = std::time::Duration::from_secs(host.cfg.stall_secs.max(1));
        let r = Remote::open(src, &dest, &t, host.cfg.max_download_bytes, stall)
            .with_context(|| format!("refusing {src}"))?;
        // With no release yet, activation downloads the whole bundle.
        let download = if host.current().is_some() {
            r.fetched + r.still_to_fetch(store)
        } else {
            r.total
        };
        let b = r.bundle;
        return Ok(Opened {
            id: b.id.clone(),
            manifest: b.manifest.clone(),
            bundle: Some(b),
            download: Some(download),
            _scratch: scratch,
        });
    }
    if std::path::Path::new(src).is_file() {
        let b = bundle::Bundle::open(std::path::Path::new(src), &host.trusted_keys()?)
            .with_context(|| format!("refusing {src}"))?;
        return Ok(Opened {
            id: b.id.clone(),
            manifest: b.manifest.clone(),
            bundle: Some(b),
            download: None,
            _scratch: Scratch(None),
        });
    }
    let id = host.resolve_id(src).with_context(|| {
        format!("{src} is neither a bundle file, a URL nor an installed release")
    })?;
    Ok(Opened {
        manifest: release::manifest(&host.layout.release(&id))?,
        id,
        bundle: None,
        download: None,
        _scratch: Scratch(None),
    })
}

/// `comfyctl diff [SOURCE] [--from ID]`: from `--from` (default: `current`) to SOURCE; with no
/// SOURCE, from the release a rollback would return to, to `current`.
pub fn diff(host: &Host, src: Option<&str>, from: Option<&str>) -> Result<ReleaseDiff> {
    let store = Store::read_only(host.layout.store());
    let Some(current) = host.current() else {
        return refuse("no current release to compare with; give --from ID");
    };
    let (base, new) = match (src, from) {
        (Some(s), f) => (
            f.map_or(Ok(current), |f| host.resolve_id(f))?,
            open(host, s, &store)?,
        ),
        (None, Some(f)) => (host.resolve_id(f)?, open(host, &current, &store)?),
        (None, None) => {
            let state = activate::load_state_read_only(host)?;
            let installed = host.installed()?;
            let Some(prev) = state.previous_good(|id| installed.iter().any(|i| i == id)) else {
                return refuse(
                    "no previous release to compare `current` with; give a bundle, URL or --from ID",
                );
            };
            (prev, open(host, &current, &store)?)
        }
    };
    let old = release::manifest(&host.layout.release(&base))?;
    let mut d = support::diff::diff(&base, &old, &new.id, &new.manifest);
    d.download_bytes = new.download;
    Ok(d)
}

/// What an activation would do, found without changing anything.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub version: String,
    pub sequence: u64,
    /// `activate` (unpack and switch), `switch` (installed and intact: switch only) or `none`
    /// (already current).
    pub action: &'static str,
    pub files_to_write: u64,
    pub bytes_to_write: u64,
    pub files_reused: u64,
    pub bytes_reused: u64,
    /// Store objects found changed since they were stored (the activation writes them afresh).
    pub changed_objects: Vec<String>,
    pub host_libraries: usize,
    /// The NFS/data targets were checked (not with `--no-service`, as for the activation).
    pub data_checked: bool,
    /// Declared model files this host lacks (a warning by the host's policy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_warnings: Vec<String>,
    pub diff: Option<ReleaseDiff>,
}

/// `comfyctl activate SOURCE --dry-run`: the signature, target, sequence, host libraries, data
/// targets and free space, as the activation would check them; the store's share; the diff.
pub fn dry_run(host: &Host, src: &str, allow_downgrade: bool, service: bool) -> Result<Plan> {
    let store = Store::read_only(host.layout.store());
    let o = open(host, src, &store)?;
    let m = &o.manifest;
    let state = activate::load_state_read_only(host)?;
    let current = host.current();
    // The activation's own checks, so the dry run refuses exactly as it would.
    let admission = activate::admit(host, m, &o.id, src, &state, allow_downgrade, true)?;
    let host_libraries =
        crate::hostlibs::require(m).map_err(|e| anyhow::anyhow!("pre-flight would fail: {e:#}"))?;
    if service {
        crate::data::check(host)?;
    }
    let mut plan = Plan {
        id: o.id.clone(),
        name: m.name.clone(),
        version: m.version.clone(),
        sequence: m.sequence,
        action: match (admission.is_current, admission.intact) {
            (true, true) => "none",
            (false, true) => "switch",
            _ => "activate",
        },
        files_to_write: 0,
        bytes_to_write: 0,
        files_reused: 0,
        bytes_reused: 0,
        changed_objects: Vec::new(),
        host_libraries,
        data_checked: service,
        model_warnings: admission.model_warnings,
        diff: None,
    };
    if !admission.intact {
        if let Some(b) = &o.bundle {
            activate::check_space(host, b, &store)?;
        }
        let share = activate::store_share(m, &store);
        plan.files_to_write = share.files_to_write;
        plan.bytes_to_write = share.bytes_to_write;
        plan.files_reused = share.files_reused;
        plan.bytes_reused = share.bytes_reused;
        plan.changed_objects = store.quarantined();
    }
    if let Some(cur) = &current {
        let old = release::manifest(&host.layout.release(cur))?;
        let mut d = support::diff::diff(cur, &old, &o.id, m);
        d.download_bytes = o.download;
        plan.diff = Some(d);
    }
    Ok(plan)
}
