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
    prepare_as(host, id, from, true)
}

/// [`prepare`]; `strict` false (returning to a release that served before) lets node state and
/// the Manager's config that cannot be made be a warning: they were made when it last ran, and
/// a link the service planted there must not keep the old release from coming back.
fn prepare_as(host: &Host, id: &str, from: Option<&str>, strict: bool) -> Result<Prepared> {
    let dir = host.layout.release(id);
    let m = release::manifest(&dir)?;
    data::check(host)?;
    data::apply(host)?;
    let extras = data::node_state(host, &dir, &m)
        .and_then(|_| data::manager_config(host, &m))
        .map(|_| ());
    match extras {
        Err(e) if !strict => {
            tracing::warn!("returning to {} without it: {e:#}", support::short_id(id))
        }
        other => other?,
    }
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
    let mut h = health::check(
        host.cfg.service.port,
        &p.m,
        device,
        Duration::from_secs(host.cfg.health.timeout_secs),
        host.cfg.health.missing_models == crate::config::MissingModels::Fail,
        Some(crate::accounts::service(host)?.uid),
        &gone,
    )?;
    health::with_declared_models(host, &p.m, &mut h);
    Ok(h)
}

/// How a switch under the service ended.
pub struct Switched {
    /// What the app was still doing when the switch began, and how long it was waited for.
    pub drained: crate::drain::Drained,
    /// The flip of `current` itself.
    pub flip: Duration,
    /// The release switched to, brought up and checked.
    pub health: Health,
    /// When it was unhealthy: the release returned to and how that went.
    pub returned: Option<(String, Returned)>,
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

/// How going back to the release that served before ended.
pub enum Returned {
    /// Switched back, started and healthy.
    Healthy(Health),
    /// Switched back and started, but unhealthy too.
    Unhealthy(String),
    /// Not switched back (it is damaged, or could not be made ready): the unhealthy release
    /// stays current.
    Stayed(String),
}

fn return_to(host: &Host, state: &mut State, id: &str) -> Returned {
    let dir = host.layout.release(id);
    let ready = if release::is_intact(&dir) {
        release::refuse_changed(&dir, id, "not returning to it")
    } else {
        refuse(format!(
            "release {id} is damaged; run `comfyctl verify {id}`"
        ))
    }
    .and_then(|()| prepare_as(host, id, None, false));
    let p = match ready {
        Ok(p) => p,
        Err(e) => return Returned::Stayed(format!("{e:#}")),
    };
    if let Err(e) = switch::switch(host, state, id, "auto-rollback") {
        return Returned::Stayed(format!("{e:#}"));
    }
    let h = bring_up(host, &p);
    if h.healthy {
        Returned::Healthy(h)
    } else {
        Returned::Unhealthy(h.reason.unwrap_or_default())
    }
}

/// "rolled back to X (healthy again)" and the like, for an error message.
pub fn describe_return(returned: &Option<(String, Returned)>) -> String {
    match returned {
        Some((id, Returned::Healthy(h))) => format!(
            "rolled back to {} (healthy again, down {:.1}s)",
            support::short_id(id),
            h.downtime_seconds
        ),
        Some((id, Returned::Unhealthy(why))) => {
            format!(
                "rolled back to {}, which is unhealthy too: {why}",
                support::short_id(id)
            )
        }
        Some((id, Returned::Stayed(why))) => format!(
            "could not return to {} ({why}); the unhealthy release stays current: fix that, then \
             `comfyctl rollback`",
            support::short_id(id)
        ),
        None => "there was no previous release to roll back to".to_owned(),
    }
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
