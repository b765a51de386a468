//! `comfyctl rollback`: back to the previous good release from the journal (or `--to ID`). No unpack:
//! lock, switch, done.

use crate::activate::load_state;
use crate::host::{refuse, Host};
use crate::{release, switch};
use anyhow::Result;
use std::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RollbackReport {
    pub changed: bool,
    pub from: Option<String>,
    pub to: String,
    pub flip_ms: f64,
    pub seconds: f64,
    pub health: Option<crate::health::Health>,
    /// The running app's jobs waited for before the unit stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<crate::drain::Drained>,
}

pub fn rollback(
    host: &Host,
    to: Option<&str>,
    service: bool,
    drain: &crate::drain::Options,
) -> Result<RollbackReport> {
    let t0 = Instant::now();
    let _lock = host.lock()?;
    let mut state = load_state(host)?;
    let installed = host.installed()?;
    let target = match to {
        Some(p) => host.resolve_id(p)?,
        None => match state.previous_good(|id| installed.iter().any(|i| i == id)) {
            Some(id) => id,
            None => {
                return refuse("no previous good release to roll back to; see `comfyctl releases`")
            }
        },
    };
    if !release::is_intact(&host.layout.release(&target)) {
        return refuse(format!(
            "release {target} is damaged; run `comfyctl verify {target}`"
        ));
    }
    release::refuse_changed(&host.layout.release(&target), &target, "not rolling back")?;
    let from = host.current();
    if from.as_deref() == Some(target.as_str()) {
        return Ok(RollbackReport {
            changed: false,
            from,
            to: target,
            flip_ms: 0.0,
            seconds: t0.elapsed().as_secs_f64(),
            health: None,
            drain: None,
        });
    }
    if !service {
        let took = switch::switch(host, &mut state, &target, "rollback")?;
        return Ok(RollbackReport {
            health: None,
            changed: true,
            from,
            to: target,
            flip_ms: took.as_secs_f64() * 1000.0,
            seconds: t0.elapsed().as_secs_f64(),
            drain: None,
        });
    }
    // Made ready while the current release still serves: a failure here changes nothing.
    let prepared = crate::start::prepare(host, &target, None)?;
    let s = crate::start::switch_and_start(
        host,
        &mut state,
        &prepared,
        from.as_deref(),
        "rollback",
        drain,
    )?;
    if !s.health.healthy {
        anyhow::bail!(
            "rolled back to {target}, but it is unhealthy: {}; {}\n{}",
            s.health.reason.clone().unwrap_or_default(),
            crate::start::describe_return(&s.returned).replacen("rolled back to", "returned to", 1),
            crate::service::journal_note(host)
        );
    }
    let took = s.flip;
    let drained = Some(s.drained);
    let health = Some(s.health);
    Ok(RollbackReport {
        health,
        drain: drained,
        changed: true,
        from,
        to: target,
        flip_ms: took.as_secs_f64() * 1000.0,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
