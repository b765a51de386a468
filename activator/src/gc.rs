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

/// The releases gc keeps: current, the rollback target, and the `keep` good releases switched to
/// most recently (at least one), of those `installed`.
pub fn keep_set(
    state: &State,
    installed: &[String],
    current: Option<String>,
    keep_n: usize,
) -> HashSet<String> {
    let exists = |id: &str| installed.iter().any(|i| i == id);
    let mut keep: HashSet<String> = HashSet::new();
    keep.extend(current);
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
    for (id, _) in good.iter().take(keep_n.max(1)) {
        keep.insert((*id).clone());
    }
    keep
}

/// With `sweep_always` false the store is swept only when a release was removed (nothing else can
/// leave an object unreferenced), which keeps an activation that removed nothing cheap.
pub fn gc(host: &Host, state: &mut State, sweep_always: bool) -> Result<GcReport> {
    let installed = host.installed()?;
    let keep = keep_set(state, &installed, host.current(), host.cfg.keep);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Event, ReleaseRecord};

    fn journal(releases: &[(&str, Status)], switches: &[&str]) -> State {
        let mut s = State::default();
        for (id, status) in releases {
            s.releases.insert(
                (*id).into(),
                ReleaseRecord {
                    name: "n".into(),
                    version: (*id).into(),
                    sequence: 1,
                    target: "t".into(),
                    installed_at: 0,
                    activated_at: None,
                    status: *status,
                    reason: None,
                },
            );
        }
        for id in switches {
            s.history.push(Event {
                at: 0,
                action: "activate".into(),
                id: (*id).into(),
                from: None,
            });
        }
        s.current = switches.last().map(|x| (*x).to_owned());
        s
    }

    #[test]
    fn keeps_current_the_rollback_target_and_the_newest_good() {
        let s = journal(
            &[
                ("a", Status::Good),
                ("b", Status::Good),
                ("c", Status::Failed),
                ("d", Status::Good),
                ("e", Status::Good),
            ],
            &["a", "b", "c", "d", "b", "e"],
        );
        let installed: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let sorted = |k: HashSet<String>| {
            let mut v: Vec<String> = k.into_iter().collect();
            v.sort();
            v
        };
        // keep = 1: current e, rollback target b (switched to after d), nothing more.
        assert_eq!(
            sorted(keep_set(&s, &installed, Some("e".into()), 1)),
            ["b", "e"]
        );
        // keep = 3: and d, the next most recently switched-to good release; never the failed c.
        assert_eq!(
            sorted(keep_set(&s, &installed, Some("e".into()), 3)),
            ["b", "d", "e"]
        );
        // A release whose directory is gone is not a rollback target: the next one is.
        let without_b: Vec<String> = ["a", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(
            sorted(keep_set(&s, &without_b, Some("e".into()), 1)),
            ["d", "e"]
        );
    }
}
