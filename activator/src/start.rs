//! Bringing a release up under systemd, in two halves: [`prepare`] does everything that can be
//! done while the old release still serves (data links, node state, the Manager's config, the
//! database's source checked, the unit's inputs written beside the ones in use), so a failure
//! there leaves the old release running untouched; [`bring_up`] then stops the unit, makes the
//! release's database copy (the service must be stopped for it), puts the inputs in place,
//! starts and checks it. [`switch_and_start`] is the one path from one release to another that
//! activation, rollback and the automatic rollback share: flip, bring up, and when the new one is
//! unhealthy, flip back and bring the old one up again, inputs and all.

use crate::data::{self, DatabasePlan};
use crate::health::{self, Health};
use crate::host::{refuse, Host};
use crate::state::State;
use crate::{release, service, switch};
use anyhow::Result;
use bundle::Manifest;
use std::time::{Duration, Instant};

/// A release made ready to start while another still serves.
pub struct Prepared {
    id: String,
    m: Manifest,
    db: DatabasePlan,
}

impl Prepared {
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Readies release `id` to start; `from`: the release serving now, whose database a first
/// activation copies. Changes nothing the running release uses.
pub fn prepare(host: &Host, id: &str, from: Option<&str>) -> Result<Prepared> {
    let dir = host.layout.release(id);
    let m = release::manifest(&dir)?;
    data::check(host)?;
    data::apply(host)?;
    data::node_state(host, &dir, &m)?;
    data::manager_config(host, &m)?;
    let db = data::plan_database(host, id, from)?;
    service::stage_inputs(host, &m, id, &db.path)?;
    Ok(Prepared {
        id: id.to_owned(),
        m,
        db,
    })
}

/// Restarts the unit on the prepared release (now current) and checks it; the time from the
/// stop to the first healthy answer is the health's `downtime_seconds`.
pub fn bring_up(host: &Host, p: &Prepared) -> Health {
    let stopped = Instant::now();
    let mut h = match try_bring_up(host, p) {
        Ok(h) => h,
        Err(e) => Health::failed(format!("{e:#}")),
    };
    h.downtime_seconds = stopped.elapsed().as_secs_f64();
    h
}

fn try_bring_up(host: &Host, p: &Prepared) -> Result<Health> {
    let unit = service::unit_name(host);
    let _ = service::systemctl(host, &["stop", &unit]);
    // A release that crash-looped until systemd's start limit leaves the unit refusing to start:
    // clear that, or the rollback that follows could not start the previous release.
    let _ = service::systemctl(host, &["reset-failed", &unit]);
    data::make_database(host, &p.db)?;
    service::commit_inputs(host)?;
    service::install_unit(host)?;
    service::systemctl(host, &["start", &unit])?;
    let device =
        (!host.cfg.health.device_type.is_empty()).then_some(host.cfg.health.device_type.as_str());
    // ComfyUI never exits by itself: a unit waiting to restart (or failed) has already lost.
    let gone = || {
        let o = service::systemctl(host, &["show", "-p", "ActiveState,SubState", &unit]).ok()?;
        let dead =
            o.stdout.contains("SubState=auto-restart") || o.stdout.contains("ActiveState=failed");
        dead.then(|| {
            format!(
                "the service exited ({})",
                o.stdout.split_whitespace().collect::<Vec<_>>().join(", ")
            )
        })
    };
    health::check(
        host.cfg.service.port,
        &p.m,
        device,
        Duration::from_secs(host.cfg.health.timeout_secs),
        host.cfg.health.missing_models == crate::config::MissingModels::Fail,
        &gone,
    )
}

/// How a switch under the service ended.
pub struct Switched {
    /// What the app was still doing when the switch began, and how long it was waited for.
    pub drained: crate::drain::Drained,
    /// The flip of `current` itself.
    pub flip: Duration,
    /// The release switched to, brought up and checked.
    pub health: Health,
    /// When it was unhealthy: the release returned to and how it came back (or why it could
    /// not be returned to).
    pub returned: Option<(String, std::result::Result<Health, String>)>,
}

/// Waits for the running app's jobs (`drain`; a refusal past its timeout changes nothing), flips
/// `current` to the prepared release and brings it up; when it is unhealthy, flips back to `back`
/// (after the same intact and unchanged checks a rollback makes) and brings that up again with
/// its own inputs. `action` is the journal's word for the switch.
pub fn switch_and_start(
    host: &Host,
    state: &mut State,
    next: &Prepared,
    back: Option<&str>,
    action: &str,
    drain: &crate::drain::Options,
) -> Result<Switched> {
    let drained = crate::drain::drain(host, drain)?;
    let flip = switch::switch(host, state, next.id(), action)?;
    let health = bring_up(host, next);
    if health.healthy {
        return Ok(Switched {
            drained,
            flip,
            health,
            returned: None,
        });
    }
    let returned = back.map(|b| (b.to_owned(), return_to(host, state, b)));
    Ok(Switched {
        drained,
        flip,
        health,
        returned,
    })
}

fn return_to(host: &Host, state: &mut State, id: &str) -> std::result::Result<Health, String> {
    let dir = host.layout.release(id);
    let checked = if release::is_intact(&dir) {
        release::refuse_changed(&dir, id, "not returning to it")
    } else {
        refuse(format!(
            "release {id} is damaged; run `comfyctl verify {id}`"
        ))
    };
    let back = checked
        .and_then(|()| prepare(host, id, None))
        .and_then(|p| {
            switch::switch(host, state, id, "auto-rollback")?;
            Ok(bring_up(host, &p))
        });
    match back {
        Ok(h) if h.healthy => Ok(h),
        Ok(h) => Err(h.reason.unwrap_or_default()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// "rolled back to X (healthy again)" and the like, for an error message.
pub fn describe_return(returned: &Option<(String, std::result::Result<Health, String>)>) -> String {
    match returned {
        Some((id, Ok(_))) => format!("rolled back to {} (healthy again)", short(id)),
        Some((id, Err(why))) => format!(
            "rolled back to {}, which is unhealthy too: {why}",
            short(id)
        ),
        None => "there was no previous release to roll back to".to_owned(),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Re-applies the host config to release `id` (current) and restarts it once the app's jobs are
/// done (`drain`); an unhealthy start is an error saying what was done (`did`), why, and the
/// unit's last journal lines.
pub fn restart_healthy(
    host: &Host,
    id: &str,
    did: &str,
    drain: &crate::drain::Options,
) -> Result<Health> {
    let p = prepare(host, id, None)?;
    crate::drain::drain(host, drain)?;
    let h = bring_up(host, &p);
    if !h.healthy {
        anyhow::bail!(
            "{did}, but it is unhealthy: {}\n{}",
            h.reason.clone().unwrap_or_default(),
            service::journal_note(host)
        );
    }
    Ok(h)
}
