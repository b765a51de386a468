//! Health: ComfyUI binds its port only after every custom node imported, and an import failure does
//! not stop it. So: poll `GET /system_stats` on loopback until 200 with the expected device type,
//! then check `GET /object_info` lists every node class the manifest expects.

use anyhow::{bail, Context as _, Result};
use bundle::Manifest;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    pub healthy: bool,
    pub device_type: Option<String>,
    pub node_classes: usize,
    pub missing_nodes: Vec<String>,
    pub reason: Option<String>,
    pub seconds: f64,
}

impl Health {
    /// An unhealthy result for a start that did not even get to the checks.
    pub fn failed(reason: String) -> Self {
        Health {
            healthy: false,
            device_type: None,
            node_classes: 0,
            missing_nodes: vec![],
            reason: Some(reason),
            seconds: 0.0,
        }
    }
}

/// Waits up to `timeout` for the app on `port` to answer, then checks it against `m`.
/// `device_override` replaces the manifest's expected device type (host config).
/// `gone` is asked while waiting; a reason from it (the service died) ends the wait early.
pub fn check(
    port: u16,
    m: &Manifest,
    device_override: Option<&str>,
    timeout: Duration,
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
            reason: Some(reason),
            seconds: t0.elapsed().as_secs_f64(),
        };
    let stats: serde_json::Value = loop {
        let last = match client.get(format!("{base}/system_stats")).send() {
            Ok(r) if r.status().is_success() => {
                let body = r.bytes()?;
                break serde_json::from_slice(&body).context("/system_stats is not JSON")?;
            }
            Ok(r) => format!("/system_stats answered {}", r.status()),
            Err(e) => format!("nothing answers on {base} ({e})"),
        };
        if let Some(why) = gone() {
            return Ok(unhealthy(
                format!("{why} before answering ({last})"),
                None,
                0,
                vec![],
            ));
        }
        if t0.elapsed() >= timeout {
            return Ok(unhealthy(
                format!("{last} after {}s", timeout.as_secs()),
                None,
                0,
                vec![],
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let device = stats["devices"][0]["type"].as_str().map(str::to_owned);
    if !want.is_empty() && device.as_deref() != Some(want.as_str()) {
        return Ok(unhealthy(
            format!("device type is {device:?}, expected {want:?}"),
            device,
            0,
            vec![],
        ));
    }
    let info = support::object_info(&client, &base)?;
    let Some(obj) = info.as_object() else {
        bail!("/object_info is not an object")
    };
    let mut missing = Vec::new();
    for (dir, classes) in &m.expected_nodes {
        for c in classes {
            let ok = obj.get(c).and_then(|v| v["python_module"].as_str())
                == Some(&format!("custom_nodes.{dir}"));
            if !ok {
                missing.push(format!("{dir}:{c}"));
            }
        }
    }
    if !missing.is_empty() {
        return Ok(unhealthy(
            format!("node classes missing: {}", missing.join(", ")),
            device,
            obj.len(),
            missing,
        ));
    }
    Ok(Health {
        healthy: true,
        device_type: device,
        node_classes: obj.len(),
        missing_nodes: vec![],
        reason: None,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
