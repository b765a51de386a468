//! The one place comfyctl's reports become output: every command returns a typed report, and
//! [`emit`] prints it as one JSON document (`--json`) or as lines for a person ([`Human`]). Every
//! string that comes from a bundle is escaped for the terminal.

use crate::activate::ActivateReport;
use crate::diff::Plan;
use crate::gc::GcReport;
use crate::health::HealthReport;
use crate::inventory::{ReleaseRow, StatusReport, VerifyReport};
use crate::lifecycle::Done;
use crate::rollback::RollbackReport;
use anyhow::Result;
use std::fmt::Write as _;
use support::diff::{human_bytes, ReleaseDiff};
use support::term_safe as t;

/// A report's lines for a person.
pub trait Human: serde::Serialize {
    fn human(&self) -> String;
}

/// `v` with `schema_version` ([`support::JSON_SCHEMA_VERSION`]) first when it is an object (a list is wrapped as `items`).
pub fn versioned(v: serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("schema_version".into(), support::JSON_SCHEMA_VERSION.into());
    match v {
        serde_json::Value::Object(m) => out.extend(m),
        other => {
            out.insert("items".into(), other);
        }
    }
    serde_json::Value::Object(out)
}

/// Prints `r` as JSON or as its lines.
pub fn emit(json: bool, r: &impl Human) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&versioned(serde_json::to_value(r)?))?
        );
    } else {
        // Reports carry the app's and the bundle's words (node names, error messages): no
        // terminal escape sequence gets through.
        print!("{}", support::term_safe_text(&r.human()));
    }
    Ok(())
}

macro_rules! line {
    ($s:expr, $($arg:tt)*) => {{
        let _ = writeln!($s, $($arg)*);
    }};
}

impl Human for ActivateReport {
    fn human(&self) -> String {
        let r = self;
        let mut s = String::new();
        if !r.changed {
            line!(
                s,
                "{} {} ({}) is already current; nothing to do",
                t(&r.name),
                t(&r.version),
                support::short_id(&r.id)
            );
            return s;
        }
        if r.unpacked {
            line!(
                s,
                "unpacked {} files ({} bytes), reused {} files ({} bytes) from the store, read {} of {} frames",
                r.files_written,
                r.bytes_written,
                r.files_reused,
                r.bytes_reused,
                r.frames_read,
                r.frames_total
            );
        } else {
            line!(
                s,
                "release already installed and intact; not unpacked again"
            );
        }
        if !r.quarantined_objects.is_empty() {
            line!(
                s,
                "{} store object(s) had been written since they were stored: moved to store/.quarantine, their files written from this bundle",
                r.quarantined_objects.len()
            );
        }
        if !r.model_warnings.is_empty() {
            line!(
                s,
                "warning: {} declared model file(s) missing or different: {}; `comfyctl models --fetch` gets them",
                r.model_warnings.len(),
                t(&r.model_warnings.join("; "))
            );
        }
        if let Some(d) = &r.drain {
            drain_line(&mut s, d);
        }
        if let Some(h) = &r.health {
            line!(
                s,
                "service restarted and healthy: device {}, {} node classes ({:.1}s); down {:.1}s from stop to healthy",
                h.device_type.as_deref().unwrap_or("?"),
                h.node_classes,
                h.seconds,
                h.downtime_seconds
            );
        }
        match &r.fetch {
            Some(f) if f.delta.is_some() => {
                let total = f.delta.unwrap_or(1).max(1);
                line!(
                    s,
                    "fetched {} of {} bytes ({:.1}%): only the frames this host lacked",
                    f.downloaded,
                    total,
                    100.0 * f.downloaded as f64 / total as f64
                );
            }
            Some(f) => line!(
                s,
                "downloaded {} bytes (resumed from {})",
                f.downloaded,
                f.resumed_from
            ),
            None => {}
        }
        line!(
            s,
            "activated {} {} ({}), previous {}, in {:.2}s",
            t(&r.name),
            t(&r.version),
            support::short_id(&r.id),
            r.previous.as_deref().map_or("none", support::short_id),
            r.seconds
        );
        s
    }
}

impl Human for Plan {
    fn human(&self) -> String {
        let p = self;
        let mut s = String::new();
        line!(
            s,
            "dry run: {} {} (sequence {}, {}): signature, target, sequence, host libraries{}, {}free space pass",
            t(&p.name),
            t(&p.version),
            p.sequence,
            support::short_id(&p.id),
            if p.host_libraries > 0 {
                format!(" ({} found)", p.host_libraries)
            } else {
                String::new()
            },
            if p.data_checked { "data targets, " } else { "" }
        );
        match p.action {
            "none" => line!(
                s,
                "it is already current: an activation would change nothing"
            ),
            "switch" => line!(
                s,
                "it is installed and intact: an activation would switch to it and restart"
            ),
            _ => line!(
                s,
                "an activation would write {} files ({}) and reuse {} files ({}) from the store",
                p.files_to_write,
                human_bytes(p.bytes_to_write),
                p.files_reused,
                human_bytes(p.bytes_reused)
            ),
        }
        if !p.changed_objects.is_empty() {
            line!(
                s,
                "{} store object(s) changed since they were stored; the activation writes them afresh",
                p.changed_objects.len()
            );
        }
        if !p.model_warnings.is_empty() {
            line!(
                s,
                "warning: {} declared model file(s) missing or different: {}",
                p.model_warnings.len(),
                t(&p.model_warnings.join("; "))
            );
        }
        match &p.diff {
            Some(d) => {
                let _ = write!(s, "\n{}", d.render());
            }
            None => line!(s, "no current release: nothing to compare with"),
        }
        line!(s, "nothing was changed");
        s
    }
}

impl Human for ReleaseDiff {
    fn human(&self) -> String {
        self.render()
    }
}

impl Human for crate::models::ModelsReport {
    fn human(&self) -> String {
        let mut s = String::new();
        for m in &self.models {
            line!(
                s,
                "{:<9} models/{} ({} bytes){}",
                m.state,
                t(&m.path),
                m.size,
                m.detail
                    .as_deref()
                    .map_or(String::new(), |d| format!(": {}", t(d)))
            );
        }
        let p = self.problems();
        line!(
            s,
            "{} ({}): {} model file(s) declared, {}",
            t(&self.release),
            support::short_id(&self.id),
            self.models.len(),
            if p.is_empty() {
                "all present".to_owned()
            } else {
                format!(
                    "{} missing or different (`comfyctl models --fetch`)",
                    p.len()
                )
            }
        );
        s
    }
}

/// What the stop waited for, when it waited.
fn drain_line(s: &mut String, d: &crate::drain::Drained) {
    if d.running_at_start + d.pending_at_start > 0 {
        line!(
            s,
            "waited {:.1}s for {} running and {} pending job(s) before stopping the service",
            d.waited_seconds,
            d.running_at_start,
            d.pending_at_start
        );
    }
}

impl Human for RollbackReport {
    fn human(&self) -> String {
        let mut s = String::new();
        if self.changed {
            line!(
                s,
                "rolled back to {} from {} (flip {:.2} ms)",
                support::short_id(&self.to),
                self.from.as_deref().map_or("none", support::short_id),
                self.flip_ms
            );
            if let Some(d) = &self.drain {
                drain_line(&mut s, d);
            }
            if let Some(h) = &self.health {
                line!(
                    s,
                    "healthy: {} node classes; down {:.1}s from stop to healthy",
                    h.node_classes,
                    h.downtime_seconds
                );
            }
        } else {
            line!(s, "{} is already current", support::short_id(&self.to));
        }
        s
    }
}

impl Human for Vec<ReleaseRow> {
    fn human(&self) -> String {
        let mut s = String::new();
        for r in self {
            let status = r
                .status
                .map_or("unknown".to_owned(), |st| format!("{st:?}").to_lowercase());
            line!(
                s,
                "{} {} {:<24} {:<12} seq {:<5} {}",
                if r.current { "*" } else { " " },
                support::short_id(&r.id),
                t(&r.name),
                t(&r.version),
                r.sequence,
                status
            );
        }
        s
    }
}

impl Human for StatusReport {
    fn human(&self) -> String {
        let mut s = String::new();
        match &self.current {
            Some(c) => line!(
                s,
                "current:   {} {} ({}), sequence {}",
                t(&c.name),
                t(&c.version),
                support::short_id(&c.id),
                c.sequence
            ),
            None => line!(s, "current:   none"),
        }
        line!(
            s,
            "rollback:  {}",
            self.previous_good
                .as_deref()
                .map_or("none", support::short_id)
        );
        line!(
            s,
            "releases:  {} installed, highest sequence {}",
            self.releases,
            self.highest_sequence
        );
        line!(
            s,
            "store:     {} objects, {} bytes",
            self.store_objects,
            self.store_bytes
        );
        line!(s, "target:    {}", self.target);
        s
    }
}

impl Human for VerifyReport {
    fn human(&self) -> String {
        let mut s = String::new();
        if self.ok {
            line!(
                s,
                "ok: {} matches its signed manifest",
                support::short_id(&self.id)
            );
            return s;
        }
        for p in &self.problems {
            line!(s, "{}: {}", t(&p.path), t(&p.problem));
        }
        line!(
            s,
            "{} problem(s) in {}",
            self.problems.len(),
            support::short_id(&self.id)
        );
        s
    }
}

impl Human for HealthReport {
    fn human(&self) -> String {
        let h = &self.health;
        let mut s = String::new();
        if !h.healthy {
            line!(s, "unhealthy: {}", h.reason.as_deref().unwrap_or("unknown"));
            return s;
        }
        line!(
            s,
            "healthy: {} ({}) on port {}, device {}, {} node classes, all {} expected custom-node classes present",
            t(&self.release),
            support::short_id(&self.id),
            self.port,
            h.device_type.as_deref().unwrap_or("?"),
            h.node_classes,
            self.expected_classes
        );
        if self.workflows > 0 {
            line!(
                s,
                "workflows: {} of {} fit the running app, {} run on its device",
                h.workflows_checked,
                self.workflows,
                h.workflows_run
            );
        }
        for x in &h.missing_models {
            line!(s, "missing model: {}", t(x));
        }
        s
    }
}

impl Human for GcReport {
    fn human(&self) -> String {
        format!(
            "removed {} releases, {} store objects ({} bytes), {} downloads ({} bytes)\n",
            self.removed_releases.len(),
            self.removed_objects,
            self.freed_bytes,
            self.removed_downloads,
            self.download_bytes
        )
    }
}

impl Human for Done {
    fn human(&self) -> String {
        if self.actions.is_empty() {
            return "nothing to do\n".into();
        }
        self.actions.iter().map(|a| format!("{a}\n")).collect()
    }
}
