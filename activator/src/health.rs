//! Health: ComfyUI binds its port only after every custom node imported, and an import failure does
//! not stop it. So: poll `GET /system_stats` on loopback until 200 with the expected device type,
//! then check `GET /object_info` lists every node class the manifest expects.

use anyhow::{bail, Result};
use bundle::Manifest;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub healthy: bool,
    pub device_type: Option<String>,
    pub node_classes: usize,
    pub missing_nodes: Vec<String>,
    /// The release's workflows checked against the live app, and those run on its device.
    pub workflows_checked: usize,
    pub workflows_run: usize,
    /// Model files the workflows name that the app does not list (`file (node, input)`).
    pub missing_models: Vec<String>,
    /// Of `seconds`, the time the workflows took (checks and runs).
    pub workflow_seconds: f64,
    pub reason: Option<String>,
    pub seconds: f64,
    /// From the unit's stop to this answer (the service was down this long); 0 when the check
    /// did not follow a start.
    pub downtime_seconds: f64,
}

impl Health {
    /// An unhealthy result for a start that did not even get to the checks.
    pub fn failed(reason: String) -> Self {
        Health {
            healthy: false,
            device_type: None,
            node_classes: 0,
            missing_nodes: vec![],
            workflows_checked: 0,
            workflows_run: 0,
            missing_models: vec![],
            workflow_seconds: 0.0,
            reason: Some(reason),
            seconds: 0.0,
            downtime_seconds: 0.0,
        }
    }
}

/// Waits up to `timeout` for the app on `port` to answer, then checks it against `m`: device,
/// expected node classes, then the release's workflows against the live app (model files
/// included: `models_fail` makes a missing one unhealthy), running those marked `run`.
/// `device_override` replaces the manifest's expected device type (host config).
/// `gone` is asked while waiting; a reason from it (the service died) ends the wait early.
/// `service_uid`: who must hold the port; an answer from anyone else's socket is not the app's.
pub fn check(
    port: u16,
    m: &Manifest,
    device_override: Option<&str>,
    timeout: Duration,
    models_fail: bool,
    service_uid: Option<u32>,
    gone: &dyn Fn() -> Option<String>,
) -> Result<Health> {
    let t0 = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let want = device_override.unwrap_or(&m.launch.device_type).to_owned();
    let unhealthy =
        |reason: String, device: Option<String>, classes: usize, missing: Vec<String>| Health {
            healthy: false,
            device_type: device,
            node_classes: classes,
            missing_nodes: missing,
            workflows_checked: 0,
            workflows_run: 0,
            missing_models: vec![],
            workflow_seconds: 0.0,
            reason: Some(reason),
            seconds: t0.elapsed().as_secs_f64(),
            downtime_seconds: 0.0,
        };
    let stats = match comfyui::http::wait_for_app(&client, &base, timeout, &mut || gone())? {
        comfyui::http::Started::Up(stats) => stats,
        comfyui::http::Started::Gone { why, last } => {
            return Ok(unhealthy(
                format!("{why} before answering ({last})"),
                None,
                0,
                vec![],
            ))
        }
        comfyui::http::Started::TimedOut { last } => {
            return Ok(unhealthy(
                format!("{last} after {}s", timeout.as_secs()),
                None,
                0,
                vec![],
            ))
        }
    };
    // Any local user can bind the port while the unit is down and answer in the app's place: the
    // answer counts only if every listener on the port is the service's.
    if let Some(uid) = service_uid {
        let others: Vec<u32> = listeners(port).into_iter().filter(|u| *u != uid).collect();
        if !others.is_empty() {
            return Ok(unhealthy(
                format!(
                    "port {port} is held by uid {others:?}, not by the service user (uid {uid}): \
                     another program answers in the app's place"
                ),
                None,
                0,
                vec![],
            ));
        }
    }
    let device = stats["devices"][0]["type"].as_str().map(str::to_owned);
    if !want.is_empty() && device.as_deref() != Some(want.as_str()) {
        return Ok(unhealthy(
            format!("device type is {device:?}, expected {want:?}"),
            device,
            0,
            vec![],
        ));
    }
    let info = comfyui::http::object_info(&client, &base)?;
    let Some(obj) = info.as_object() else {
        bail!("/object_info is not an object")
    };
    let missing = comfyui::missing_classes(&info, &m.expected_nodes);
    if !missing.is_empty() {
        return Ok(unhealthy(
            missing_by_node(&m.expected_nodes, &missing),
            device,
            obj.len(),
            missing,
        ));
    }
    let models = if models_fail {
        comfyui::workflow::Models::Fail
    } else {
        comfyui::workflow::Models::Warn
    };
    let left = || {
        timeout
            .saturating_sub(t0.elapsed())
            .max(Duration::from_secs(30))
    };
    let ran = match comfyui::workflow::check_and_run(&base, &m.workflows, &info, models, &left) {
        Ok(ran) => ran,
        Err(f) => {
            use comfyui::workflow::Why;
            let why = match f.why {
                Why::Unreadable(e) | Why::Run(e) => format!("{e:#}"),
                Why::DoesNotFit(p) => format!("does not fit the running app: {}", p.join("; ")),
                Why::MissingModels(m) => {
                    format!("names model files this host lacks: {}", m.join(", "))
                }
            };
            let mut h = unhealthy(
                format!("workflow {}: {why}", f.workflow),
                device,
                obj.len(),
                vec![],
            );
            h.workflows_checked = f.done.checked;
            h.workflows_run = f.done.ran;
            h.workflow_seconds = f.done.seconds;
            return Ok(h);
        }
    };
    for x in &ran.missing_models {
        tracing::warn!("workflow {x}: model file not found on this host");
    }
    Ok(Health {
        healthy: true,
        device_type: device,
        node_classes: obj.len(),
        missing_nodes: vec![],
        workflows_checked: ran.checked,
        workflows_run: ran.ran,
        missing_models: ran.missing_models,
        workflow_seconds: ran.seconds,
        reason: None,
        seconds: t0.elapsed().as_secs_f64(),
        downtime_seconds: 0.0,
    })
}

/// The uids owning a listening TCP socket on `port`, IPv4 and IPv6 (`/proc/net/tcp{,6}`: local
/// address `HEX:PORT`, state `0A` is LISTEN, the eighth column the uid).
pub(crate) fn listeners(port: u16) -> Vec<u32> {
    let want = format!(":{port:04X}");
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs_err::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1].ends_with(&want) && f[3] == "0A" {
                if let Ok(uid) = f[7].parse() {
                    out.push(uid);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Adds the release's declared model files that this host lacks (or holds with other content) to
/// a healthy result: reported, and unhealthy when the host's policy says `fail`.
pub fn with_declared_models(host: &crate::host::Host, m: &Manifest, h: &mut Health) {
    if !h.healthy || m.models.is_empty() {
        return;
    }
    let problems = match crate::models::problems_of(host, m, true) {
        Ok(p) => p,
        Err(e) => vec![format!("cannot check the declared model files: {e:#}")],
    };
    if problems.is_empty() {
        return;
    }
    h.missing_models
        .extend(problems.iter().map(|p| format!("declared {p}")));
    if host.cfg.health.missing_models == crate::config::MissingModels::Fail {
        h.healthy = false;
        h.reason = Some(format!(
            "declared model files missing or different: {}; run `comfyctl models --fetch`",
            problems.join("; ")
        ));
    } else {
        for p in &problems {
            tracing::warn!("declared model file {p}");
        }
    }
}

/// One clause per custom node that lost classes, naming the node first (the operator looks for
/// the node, not for one of its 194 classes): `custom node X: 3 of 12 classes missing (A, B, C)`.
fn missing_by_node(
    expected: &std::collections::BTreeMap<String, Vec<String>>,
    missing: &[String],
) -> String {
    let mut parts = Vec::new();
    for (dir, classes) in expected {
        let gone: Vec<&str> = missing
            .iter()
            .filter_map(|m| m.strip_prefix(dir.as_str())?.strip_prefix(':'))
            .collect();
        if gone.is_empty() {
            continue;
        }
        let shown = gone.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = if gone.len() > 5 {
            format!(", and {} more", gone.len() - 5)
        } else {
            String::new()
        };
        let what = if gone.len() == classes.len() {
            ": it did not import (see the unit's journal)"
        } else {
            ""
        };
        parts.push(format!(
            "custom node {dir}: {} of {} classes missing ({shown}{more}){what}",
            gone.len(),
            classes.len()
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_classes_are_reported_by_node() {
        let expected = [
            (
                "KJNodes".to_owned(),
                (0..8).map(|i| format!("K{i}")).collect(),
            ),
            ("hello".to_owned(), vec!["Hello".to_owned()]),
            ("fine".to_owned(), vec!["Fine".to_owned()]),
        ]
        .into_iter()
        .collect();
        let missing: Vec<String> = (0..7)
            .map(|i| format!("KJNodes:K{i}"))
            .chain(["hello:Hello".to_owned()])
            .collect();
        assert_eq!(
            missing_by_node(&expected, &missing),
            "custom node KJNodes: 7 of 8 classes missing (K0, K1, K2, K3, K4, and 2 more); \
             custom node hello: 1 of 1 classes missing (Hello): it did not import (see the unit's journal)"
        );
    }
}

/// `comfyctl health`'s report: the check's result (all the JSON holds) and, for the lines, what
/// was checked.
#[derive(serde::Serialize)]
pub struct HealthReport {
    #[serde(flatten)]
    pub health: Health,
    #[serde(skip)]
    pub release: String,
    #[serde(skip)]
    pub id: String,
    #[serde(skip)]
    pub port: u16,
    #[serde(skip)]
    pub expected_classes: usize,
    #[serde(skip)]
    pub workflows: usize,
}

/// Checks the running app against the current release, with the host config's policy (its
/// port, device type and missing-model setting) unless the command line overrides port or device.
pub fn check_current(
    host: &crate::host::Host,
    port: Option<u16>,
    device: Option<&str>,
    timeout: Duration,
) -> Result<HealthReport> {
    let Some(id) = host.current() else {
        return crate::host::refuse("no current release to check");
    };
    let m = crate::release::manifest(&host.layout.release(&id))?;
    let port = port.unwrap_or(host.cfg.service.port);
    let cfg = &host.cfg.health;
    let device = device.or((!cfg.device_type.is_empty()).then_some(cfg.device_type.as_str()));
    let mut health = check(
        port,
        &m,
        device,
        timeout,
        cfg.missing_models == crate::config::MissingModels::Fail,
        crate::accounts::service(host).ok().map(|o| o.uid),
        &|| None,
    )?;
    with_declared_models(host, &m, &mut health);
    Ok(HealthReport {
        health,
        release: format!("{} {}", m.name, m.version),
        id,
        port,
        expected_classes: m.expected_nodes.values().map(Vec::len).sum(),
        workflows: m.workflows.len(),
    })
}
