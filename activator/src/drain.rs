//! Draining before a stop: a Spark is shared, and someone's twenty-minute render may be running
//! when an operator activates a release. Every verb that stops the unit first asks the running app
//! for its queue (`GET /queue`: `queue_running`, `queue_pending`) and waits until the jobs the
//! host's policy names are done, saying what it waits for; past the timeout it refuses, and nothing
//! has changed: the old release still serves. It runs after everything that can be prepared
//! without stopping (download, verify, unpack, pre-flight, the unit's inputs), so the window after
//! it is as short as it can be.

use crate::host::{refuse, Host};
use anyhow::Result;
use std::time::{Duration, Instant};

/// Which jobs a stop waits for (`[service] drain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The running job and every pending one.
    #[default]
    Queue,
    /// The running job only (pending ones are lost with the stop).
    Running,
    /// None: stop at once.
    Off,
}

/// How a verb drains: the host's policy and timeout, or the command line's.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub policy: Policy,
    pub timeout: Duration,
}

impl Options {
    /// The host config's policy, with the command line's overrides (`--no-drain`,
    /// `--drain-timeout`).
    pub fn for_host(host: &Host, no_drain: bool, timeout: Option<u64>) -> Self {
        Options {
            policy: if no_drain {
                Policy::Off
            } else {
                host.cfg.service.drain
            },
            timeout: Duration::from_secs(timeout.unwrap_or(host.cfg.service.drain_timeout_secs)),
        }
    }
}

/// What draining found and how long it waited.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Drained {
    pub policy: Policy,
    /// Jobs the app had when the drain began.
    pub running_at_start: usize,
    pub pending_at_start: usize,
    pub waited_seconds: f64,
    /// Why the queue was not asked (the policy is off, or the app does not answer: nothing runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The app's queue: (running, pending).
fn queue(client: &reqwest::blocking::Client, port: u16) -> Result<(usize, usize)> {
    let resp = client
        .get(format!("http://127.0.0.1:{port}/queue"))
        .send()?
        .error_for_status()?;
    let v = comfyui::http::read_json(resp, "/queue")?;
    let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
    Ok((n("queue_running"), n("queue_pending")))
}

/// Waits until the app on the host's port has no job the policy waits for.
pub fn drain(host: &Host, opts: &Options) -> Result<Drained> {
    let mut d = Drained {
        policy: opts.policy,
        ..Default::default()
    };
    if opts.policy == Policy::Off {
        d.skipped = Some("draining is off".into());
        return Ok(d);
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let port = host.cfg.service.port;
    // Only the app's own queue counts: anyone local could bind the port while the unit is down
    // and answer with a job that never ends, holding every stop (and the lock) for the timeout.
    if let Ok(svc) = crate::accounts::service(host) {
        let others: Vec<u32> = crate::health::listeners(port)
            .into_iter()
            .filter(|u| *u != svc.uid)
            .collect();
        if !others.is_empty() {
            d.skipped = Some(format!(
                "port {port} is held by uid {others:?}, not by the service: not its queue"
            ));
            return Ok(d);
        }
    }
    let t0 = Instant::now();
    let mut last_said: Option<Instant> = None;
    loop {
        let (running, pending) = match queue(&client, port) {
            Ok(q) => q,
            Err(e) if last_said.is_none() && t0.elapsed() < Duration::from_secs(1) => {
                d.skipped = Some(format!(
                    "the app does not answer /queue ({e:#}): nothing runs"
                ));
                return Ok(d);
            }
            // It answered before: it went away (stopped, crashed); nothing is left to wait for.
            Err(_) => break,
        };
        if last_said.is_none() && d.running_at_start == 0 && d.pending_at_start == 0 {
            d.running_at_start = running;
            d.pending_at_start = pending;
        }
        let busy = running
            + if opts.policy == Policy::Queue {
                pending
            } else {
                0
            };
        if busy == 0 {
            break;
        }
        let waited = t0.elapsed();
        if waited >= opts.timeout {
            return refuse(format!(
                "the app still has {running} running and {pending} pending job(s) after waiting {}s; \
                 nothing was changed and the old release still serves: try again later, or use \
                 --drain-timeout SECS (or --no-drain to stop it anyway)",
                waited.as_secs()
            ));
        }
        if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            // Progress on stderr, so `--json` on stdout stays one document.
            eprintln!(
                "draining: waiting for {running} running and {pending} pending job(s) ({}s of {}s, policy {})",
                waited.as_secs(),
                opts.timeout.as_secs(),
                serde_json::to_value(opts.policy)?.as_str().unwrap_or("?")
            );
            last_said = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    d.waited_seconds = t0.elapsed().as_secs_f64();
    Ok(d)
}
