//! Read-only verbs: `releases`, `status`, `verify`.

use crate::activate::load_state;
use crate::host::{refuse, Host};
use crate::release;
use crate::state::{State, Status};
use crate::store::Store;
use anyhow::Result;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReleaseRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub sequence: u64,
    pub status: Option<Status>,
    pub activated_at: Option<u64>,
    pub current: bool,
    pub reason: Option<String>,
}

pub fn releases(host: &Host) -> Result<Vec<ReleaseRow>> {
    let state = State::load(&host.layout.state())?;
    let current = host.current();
    let mut rows = Vec::new();
    for id in host.installed()? {
        let rec = state.releases.get(&id);
        let (name, version, sequence) = match (rec, release::manifest(&host.layout.release(&id))) {
            (Some(r), _) => (r.name.clone(), r.version.clone(), r.sequence),
            (None, Ok(m)) => (m.name, m.version, m.sequence),
            (None, Err(_)) => ("?".into(), "?".into(), 0),
        };
        rows.push(ReleaseRow {
            current: current.as_deref() == Some(id.as_str()),
            status: rec.map(|r| r.status),
            activated_at: rec.and_then(|r| r.activated_at),
            reason: rec.and_then(|r| r.reason.clone()),
            id,
            name,
            version,
            sequence,
        });
    }
    rows.sort_by_key(|r| (r.sequence, r.activated_at));
    Ok(rows)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub current: Option<ReleaseRow>,
    pub previous_good: Option<String>,
    pub highest_sequence: u64,
    pub releases: usize,
    pub store_objects: u64,
    pub store_bytes: u64,
    pub target: String,
}

pub fn status(host: &Host) -> Result<StatusReport> {
    let rows = releases(host)?;
    let state = if host.layout.state().exists() {
        load_state(host)?
    } else {
        State::default()
    };
    let installed = host.installed()?;
    let (objects, bytes) = Store::new(host.layout.store()).usage();
    Ok(StatusReport {
        current: rows.iter().find(|r| r.current).cloned(),
        previous_good: state.previous_good(|id| installed.iter().any(|i| i == id)),
        highest_sequence: state.highest_sequence,
        releases: rows.len(),
        store_objects: objects,
        store_bytes: bytes,
        target: host.cfg.target.clone(),
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub problems: Vec<release::Problem>,
}

pub fn verify(host: &Host, id: Option<&str>) -> Result<VerifyReport> {
    let id = match id {
        Some(p) => host.resolve_id(p)?,
        None => match host.current() {
            Some(c) => c,
            None => return refuse("no current release to verify; give an id"),
        },
    };
    let trusted = keys::TrustedKeys::load_dir(&host.layout.keys).ok();
    let problems = match release::verify(&host.layout.release(&id), trusted.as_ref()) {
        Ok(p) => p,
        Err(e) => vec![release::Problem {
            path: release::MANIFEST.into(),
            problem: format!("{e:#}"),
        }],
    };
    Ok(VerifyReport {
        ok: problems.is_empty(),
        id,
        problems,
    })
}
