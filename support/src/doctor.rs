//! The doctor report of `comfy-build doctor` and `comfyctl doctor`: each check is one line saying
//! ok / warn / fail, what it saw, and how to fix it; the exit code is 1 as soon as one check failed.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub saw: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Checks in the order they ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&mut self, name: &str, saw: impl Into<String>) {
        self.push(name, Status::Ok, saw, None::<String>);
    }
    pub fn warn(&mut self, name: &str, saw: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Warn, saw, Some(fix));
    }
    pub fn fail(&mut self, name: &str, saw: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Fail, saw, Some(fix));
    }
    fn push(
        &mut self,
        name: &str,
        status: Status,
        saw: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) {
        self.checks.push(Check {
            name: name.to_owned(),
            status,
            saw: saw.into(),
            fix: fix.map(Into::into),
        });
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// Prints the report (or JSON) and returns the exit code: 0 without failures, 1 with.
    pub fn print(&self, json: bool) -> u8 {
        if json {
            let v = serde_json::json!({
                "schema_version": crate::JSON_SCHEMA_VERSION,
                "ok": !self.failed(),
                "checks": self.checks
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            for c in &self.checks {
                let tag = match c.status {
                    Status::Ok => "ok  ",
                    Status::Warn => "warn",
                    Status::Fail => "FAIL",
                };
                // What a check saw can be the app's own words (the unit's journal): escaped.
                println!("{tag} {:<28} {}", c.name, crate::term_safe_text(&c.saw));
                if let Some(f) = &c.fix {
                    println!("     {:<28} fix: {}", "", crate::term_safe_text(f));
                }
            }
            let (w, f) = self.checks.iter().fold((0, 0), |(w, f), c| match c.status {
                Status::Warn => (w + 1, f),
                Status::Fail => (w, f + 1),
                Status::Ok => (w, f),
            });
            println!("{} checks, {w} warnings, {f} failures", self.checks.len());
        }
        u8::from(self.failed())
    }
}

/// Free bytes on the filesystem holding `path` (its nearest existing ancestor).
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            return fs_free(p);
        }
        p = p.parent()?;
    }
}

fn fs_free(p: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-P", "-B1"])
        .arg(p)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// MemTotal in bytes.
pub fn mem_total() -> Option<u64> {
    let t = fs_err::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = t
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Human size.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
