//! Smoke: start the frozen app once, from a copy at another path, on loopback with `--cpu` (GPU-only
//! flags dropped), wait for `/system_stats`, and record which node classes `/object_info` lists for
//! each custom node. A node marked `(IMPORT FAILED)`, or an app that exits first, fails the build.

use anyhow::{bail, Context as _, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Flags that need a GPU (or a GPU-only package) and so are left out of a CPU smoke start.
const GPU_ONLY: &[&str] = &[
    "--gpu-only",
    "--highvram",
    "--use-sage-attention",
    "--cpu",
    "--disable-cuda-malloc",
];

fn smoke_args(launch: &[String], port: u16, scratch: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = launch.iter().peekable();
    while let Some(a) = it.next() {
        let flag = a.split('=').next().unwrap_or(a);
        if GPU_ONLY.contains(&flag) {
            continue;
        }
        if flag == "--listen" || flag == "--port" {
            if !a.contains('=') && it.peek().is_some_and(|n| !n.starts_with("--")) {
                it.next();
            }
            continue;
        }
        out.push(a.clone());
    }
    let d = |s: &str| scratch.join(s).to_string_lossy().into_owned();
    out.extend([
        "--cpu".into(),
        "--listen".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--base-directory".into(),
        d("base"),
        "--user-directory".into(),
        d("user"),
        "--input-directory".into(),
        d("input"),
        "--output-directory".into(),
        d("output"),
        "--temp-directory".into(),
        d("temp"),
        "--database-url".into(),
        format!("sqlite:///{}", d("user/comfyui.db")),
    ]);
    out
}

fn log_tail(log: &Path) -> String {
    let s = fs_err::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// Runs the smoke start of `release` (a copy of the stage); returns classes per custom node dir.
pub fn smoke(
    release: &Path,
    launch: &[String],
    nodes: &[String],
    log: &Path,
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<String>>> {
    let scratch = tempfile::tempdir()?;
    for d in ["base/custom_nodes", "user", "input", "output", "temp"] {
        fs_err::create_dir_all(scratch.path().join(d))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    if let Some(p) = log.parent() {
        fs_err::create_dir_all(p)?;
    }
    let out = fs_err::File::create(log)?.into_parts().0;
    let args = smoke_args(launch, port, scratch.path());
    tracing::debug!(?args, "smoke start");
    let mut child = Command::new(release.join("launch.sh"))
        .args(&args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("CUDA_VISIBLE_DEVICES", "")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting the frozen app for the smoke test")?;
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        if let Some(status) = guard.0.try_wait()? {
            bail!(
                "the app exited during the smoke start ({status}); log {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        if let Ok(r) = client.get(format!("{base}/system_stats")).send() {
            if r.status().is_success() {
                break;
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "the app did not answer /system_stats within {}s; log {}:\n{}",
                timeout.as_secs(),
                log.display(),
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let info = support::object_info(&client, &base)?;
    drop(guard);
    let text = fs_err::read_to_string(log).unwrap_or_default();
    let mut found: BTreeMap<String, Vec<String>> =
        nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
    if let Some(obj) = info.as_object() {
        for (class, v) in obj {
            if let Some(dir) = v
                .get("python_module")
                .and_then(|m| m.as_str())
                .and_then(|m| m.strip_prefix("custom_nodes."))
            {
                if let Some(list) = found.get_mut(dir) {
                    list.push(class.clone());
                }
            }
        }
    }
    for n in nodes {
        let failed = text
            .lines()
            .any(|l| l.contains("(IMPORT FAILED)") && l.trim_end().ends_with(&format!("/{n}")));
        if failed {
            bail!(
                "custom node {n} failed to import during the smoke start; log {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
    }
    for v in found.values_mut() {
        v.sort();
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_flags_and_address_are_replaced() {
        let a: Vec<String> = [
            "--listen",
            "0.0.0.0",
            "--port",
            "8188",
            "--gpu-only",
            "--use-sage-attention",
            "--bf16-unet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = super::smoke_args(&a, 9999, std::path::Path::new("/s"));
        assert_eq!(&out[..4], ["--bf16-unet", "--cpu", "--listen", "127.0.0.1"]);
        assert!(!out
            .iter()
            .any(|x| x == "--gpu-only" || x == "0.0.0.0" || x == "8188"));
    }
}
