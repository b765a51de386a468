//! Bringing a release up under systemd once `current` points at it: data links, unit, environment,
//! the release's own database copy (made while the service is stopped), start, health check.

use crate::health::{self, Health};
use crate::host::Host;
use crate::{data, release, service};
use anyhow::Result;
use std::time::Duration;

/// Restarts the unit on release `id` (now current) and checks it. `from`: the release that was
/// running, whose database a first activation copies.
pub fn start_release(host: &Host, id: &str, from: Option<&str>) -> Health {
    match try_start(host, id, from) {
        Ok(h) => h,
        Err(e) => Health::failed(format!("{e:#}")),
    }
}

/// Starts release `id` (now current) and insists it is healthy: an unhealthy start is an error
/// saying what was done (`did`), why it is unhealthy and the unit's last journal lines.
pub fn start_healthy(host: &Host, id: &str, did: &str) -> Result<Health> {
    let h = start_release(host, id, None);
    if !h.healthy {
        anyhow::bail!(
            "{did}, but it is unhealthy: {}\n{}",
            h.reason.unwrap_or_default(),
            service::journal_note(host)
        );
    }
    Ok(h)
}

fn try_start(host: &Host, id: &str, from: Option<&str>) -> Result<Health> {
    let dir = host.layout.release(id);
    let m = release::manifest(&dir)?;
    data::apply(host)?;
    data::node_state(host, &dir, &m)?;
    data::manager_config(host, &m)?;
    service::install_unit(host)?;
    let unit = service::unit_name(host);
    let _ = service::systemctl(host, &["stop", &unit]);
    // A release that crash-looped until systemd's start limit leaves the unit refusing to start:
    // clear that, or the rollback that follows could not start the previous release.
    let _ = service::systemctl(host, &["reset-failed", &unit]);
    let db = data::database(host, id, from)?;
    service::write_env(host, &m, id, &db)?;
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
        &m,
        device,
        Duration::from_secs(host.cfg.health.timeout_secs),
        host.cfg.health.missing_models == crate::config::MissingModels::Fail,
        &gone,
    )
}
