//! The activation journal (`state/state.json`): which release is current, which were good or failed,
//! the highest sequence seen, and every switch in order. Rollback targets come from here, never from
//! directory mtimes (capistrano #351). Written atomically, only under the activation lock.

use crate::atomic;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a release has been through on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Unpacked and verified, never served healthy yet.
    Installed,
    /// Was current and passed its checks.
    Good,
    /// Failed pre-flight or health; never chosen as a rollback target.
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub target: String,
    pub installed_at: u64,
    #[serde(default)]
    pub activated_at: Option<u64>,
    pub status: Status,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub at: u64,
    /// `activate`, `rollback`, `auto-rollback`.
    pub action: String,
    pub id: String,
    #[serde(default)]
    pub from: Option<String>,
}

/// A switch that was started: written before `current` is flipped, cleared after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub from: Option<String>,
    pub action: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub highest_sequence: u64,
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseRecord>,
    #[serde(default)]
    pub history: Vec<Event>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    pub fn load(state_dir: &Path) -> Result<Self> {
        let p = Self::path(state_dir);
        match fs_err::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        atomic::write(&Self::path(state_dir), &serde_json::to_vec_pretty(self)?)
    }

    /// Brings the journal in line with where `current` really points (a kill between the flip and the
    /// journal write leaves the link ahead of the journal: the link is the truth).
    pub fn reconcile(&mut self, actual_current: Option<&str>) -> bool {
        let mut changed = false;
        if let Some(p) = self.pending.take() {
            changed = true;
            if actual_current == Some(p.id.as_str()) {
                self.finish_switch(&p.id, p.from, &p.action);
            }
        }
        if self.current.as_deref() != actual_current {
            self.current = actual_current.map(str::to_owned);
            changed = true;
        }
        changed
    }

    pub fn finish_switch(&mut self, id: &str, from: Option<String>, action: &str) {
        self.current = Some(id.to_owned());
        if let Some(r) = self.releases.get_mut(id) {
            r.activated_at = Some(now());
            self.highest_sequence = self.highest_sequence.max(r.sequence);
        }
        self.history.push(Event {
            at: now(),
            action: action.to_owned(),
            id: id.to_owned(),
            from,
        });
    }

    pub fn set_status(&mut self, id: &str, status: Status, reason: Option<String>) {
        if let Some(r) = self.releases.get_mut(id) {
            r.status = status;
            r.reason = reason;
        }
    }

    /// The release to roll back to: the most recently activated good release other than current
    /// whose directory still exists.
    pub fn previous_good(&self, exists: impl Fn(&str) -> bool) -> Option<String> {
        let cur = self.current.as_deref();
        self.history
            .iter()
            .rev()
            .map(|e| e.id.as_str())
            .find(|id| {
                Some(*id) != cur
                    && self
                        .releases
                        .get(*id)
                        .is_some_and(|r| r.status == Status::Good)
                    && exists(id)
            })
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, sequence: u64) -> ReleaseRecord {
        ReleaseRecord {
            name: "n".into(),
            version: "v".into(),
            sequence,
            target: "t".into(),
            installed_at: 0,
            activated_at: None,
            status,
            reason: None,
        }
    }

    #[test]
    fn a_kill_after_the_flip_is_finished_from_the_link() {
        let mut s = State::default();
        s.releases.insert("a".into(), record(Status::Good, 1));
        s.releases.insert("b".into(), record(Status::Installed, 2));
        s.finish_switch("a", None, "activate");
        // Killed between the flip to b and the journal write: the link says b.
        s.pending = Some(Pending {
            id: "b".into(),
            from: Some("a".into()),
            action: "activate".into(),
        });
        assert!(s.reconcile(Some("b")));
        assert_eq!(s.current.as_deref(), Some("b"));
        assert_eq!(s.highest_sequence, 2);
        assert_eq!(s.history.last().map(|e| e.id.as_str()), Some("b"));
        // Killed before the flip: the link still says a; the pending switch is dropped.
        s.pending = Some(Pending {
            id: "c".into(),
            from: Some("b".into()),
            action: "activate".into(),
        });
        assert!(s.reconcile(Some("b")));
        assert!(s.pending.is_none());
        assert_eq!(s.history.last().map(|e| e.id.as_str()), Some("b"));
        assert!(!s.reconcile(Some("b")), "nothing left to change");
    }

    #[test]
    fn the_rollback_target_is_the_last_good_other_than_current() {
        let mut s = State::default();
        for (id, st) in [
            ("a", Status::Good),
            ("b", Status::Failed),
            ("c", Status::Good),
        ] {
            s.releases.insert(id.into(), record(st, 1));
            s.finish_switch(id, None, "activate");
        }
        assert_eq!(s.previous_good(|_| true).as_deref(), Some("a"));
        assert_eq!(s.previous_good(|id| id != "a"), None);
    }
}
