//! Garbage collection: keep the newest N good releases, and always current, the rollback target and
//! the last good release; failed releases never push good ones out (capistrano #1907, #2120). Store
//! objects no release links to are removed after.

use crate::host::Host;
use crate::state::{State, Status};
use crate::store::Store;
use anyhow::Result;
use std::collections::HashSet;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub removed_releases: Vec<String>,
    pub removed_objects: u64,
    pub freed_bytes: u64,
    /// Files removed from `state/downloads` (left by killed activations, or stale partials).
    pub removed_downloads: u64,
    pub download_bytes: u64,
}

/// A partial download older than this is not worth resuming.
const STALE_PART: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Downloads happen outside the activation lock: a file written in the last hour may belong to
/// an activation still downloading or waiting for the lock.
const IN_USE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Empties `state/downloads`: what killed activations left (whole bundles, delta copies, locks)
/// once an hour old, partial downloads once a week old (until then the same command resumes them).
fn sweep_downloads(dir: &std::path::Path, report: &mut GcReport) -> Result<()> {
    let Ok(entries) = fs_err::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let meta = e.metadata()?;
        let name = e.file_name().to_string_lossy().into_owned();
        let age = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        let keep_for = if name.ends_with(".part") {
            STALE_PART
        } else {
            IN_USE
        };
        if age < keep_for {
            continue;
        }
        if meta.is_dir() {
            fs_err::remove_dir_all(e.path())?;
        } else {
            fs_err::remove_file(e.path())?;
        }
        report.removed_downloads += 1;
        report.download_bytes += meta.len();
    }
    Ok(())
}

/// With `sweep_always` false the store is swept only when a release was removed (nothing else can
/// leave an object unreferenced), which keeps an activation that removed nothing cheap.
pub fn gc(host: &Host, state: &mut State, sweep_always: bool) -> Result<GcReport> {
    let installed = host.installed()?;
    let current = host.current();
    let exists = |id: &str| installed.iter().any(|i| i == id);
    let mut keep: HashSet<String> = HashSet::new();
    keep.extend(current.clone());
    keep.extend(state.previous_good(exists));
    // Good releases, most recently switched to first (journal order, not timestamps).
    let last_switch = |id: &str| state.history.iter().rposition(|e| e.id == id);
    let mut good: Vec<(&String, Option<usize>)> = state
        .releases
        .iter()
        .filter(|(id, r)| r.status == Status::Good && exists(id))
        .map(|(id, _)| (id, last_switch(id)))
        .collect();
    good.sort_by_key(|g| std::cmp::Reverse(g.1));
    keep.extend(good.first().map(|g| g.0.clone()));
    for (id, _) in good.iter().take(host.cfg.keep.max(1)) {
        keep.insert((*id).clone());
    }
    let mut report = GcReport::default();
    for id in &installed {
        if keep.contains(id) {
            continue;
        }
        host.discard(id)?;
        state.releases.remove(id);
        report.removed_releases.push(id.clone());
    }
    state.save(&host.layout.state())?;
    if sweep_always {
        sweep_downloads(&host.layout.downloads(), &mut report)?;
    }
    if !sweep_always && report.removed_releases.is_empty() {
        return Ok(report);
    }
    let swept = Store::new(host.layout.store()).sweep()?;
    report.removed_objects = swept.objects;
    report.freed_bytes = swept.bytes;
    Ok(report)
}
