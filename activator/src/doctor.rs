//! `comfyctl doctor`: the host half of the seed's troubleshooting guide as checks (driver and GPU
//! against the release's target, the unit and its last failure, the port, the current release's
//! integrity and interpreter, data dirs and NFS links, keys, free disk).

use crate::host::Host;
use crate::{cmd, data, release, service};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::Command;
use std::time::Duration;
use support::doctor::{gib, Report};

fn run(c: &mut Command) -> Option<cmd::Output> {
    cmd::output(c, Duration::from_secs(20)).ok()
}

/// `sm_121` in a target such as `linux-aarch64-cu130-sm_121` → "12.1".
fn target_capability(target: &str) -> Option<String> {
    let sm = target.rsplit('-').next()?.strip_prefix("sm_")?;
    let (maj, min) = sm.split_at(sm.len().checked_sub(1)?);
    Some(format!("{maj}.{min}"))
}

fn driver_checks(r: &mut Report, target: Option<&str>) {
    let q = run(Command::new("nvidia-smi").args([
        "--query-gpu=index,name,compute_cap,driver_version",
        "--format=csv,noheader",
    ]));
    let Some(o) = q.filter(|o| o.status.success()) else {
        r.fail(
            "NVIDIA driver",
            "nvidia-smi not found or failing",
            "install the NVIDIA driver (CUDA 13.0 needs 580 or newer) and reboot",
        );
        return;
    };
    let gpus: Vec<&str> = o.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    r.ok(
        "NVIDIA driver",
        format!("{} GPU(s): {}", gpus.len(), gpus.join("; ")),
    );
    if let Some(want) = target.and_then(target_capability) {
        let caps: Vec<&str> = gpus
            .iter()
            .filter_map(|g| g.split(',').nth(2).map(str::trim))
            .collect();
        if caps.iter().all(|c| *c == want) && !caps.is_empty() {
            r.ok(
                "compute capability",
                format!("{} as the release's target needs", want),
            );
        } else {
            r.fail(
                "compute capability",
                format!("GPUs report {caps:?}, the release is built for {want}"),
                "activate a bundle built for this GPU's target",
            );
        }
    }
}

fn port_check(r: &mut Report, host: &Host, unit_active: bool) {
    let port = host.cfg.service.port;
    match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => r.ok("port", format!("{port} is free")),
        Err(_) if unit_active => r.ok("port", format!("{port} is in use by the running unit")),
        Err(e) => r.fail(
            "port",
            format!("{port} is taken by another process ({e})"),
            format!(
                "find it with `ss -ltnp 'sport = :{port}'` and stop it, or change [service] port"
            ),
        ),
    }
}

/// The shared libraries the current release needs from this host.
fn host_libs_check(r: &mut Report, m: &bundle::Manifest) {
    let name = "host libraries";
    let n = m.host_libs.len();
    if n == 0 {
        r.ok(name, "the release lists none");
        return;
    }
    let f = crate::hostlibs::check(m);
    let gpu = m.launch.device_type == "cuda";
    if !f.missing.is_empty() {
        r.fail(
            name,
            format!(
                "{} of {n} missing: {}",
                f.missing.len(),
                f.missing.join(", ")
            ),
            format!(
                "install the packages that provide them (Debian/Ubuntu: `apt-file search {}`)",
                f.missing[0]
            ),
        );
    } else if gpu && !f.driver_missing.is_empty() {
        r.fail(
            name,
            format!(
                "the NVIDIA driver's {} missing",
                f.driver_missing.join(", ")
            ),
            "install the NVIDIA driver (CUDA 13.0 needs 580 or newer)",
        );
    } else if !f.driver_missing.is_empty() {
        r.ok(
            name,
            format!(
                "{} of {n} found by the dynamic loader; not here: {} (the NVIDIA driver's, unused by this {} release)",
                f.present,
                f.driver_missing.join(", "),
                m.launch.device_type
            ),
        );
    } else {
        r.ok(name, format!("all {n} found by the dynamic loader"));
    }
}

pub fn doctor(host: &Host) -> Report {
    let mut r = Report::default();
    let current = host.current();
    let manifest = current
        .as_ref()
        .and_then(|c| release::manifest(&host.layout.release(c)).ok());
    driver_checks(&mut r, manifest.as_ref().map(|m| m.target.as_str()));

    let unit = service::unit_name(host);
    let active = match (host.is_real_root())
        .then(|| run(Command::new("systemctl").args(["is-active", &unit])))
        .flatten()
    {
        None => {
            r.warn(
                "service",
                "systemctl not available",
                "run on a host booted with systemd",
            );
            false
        }
        Some(o) => {
            let state = o.stdout.trim().to_owned();
            if state == "active" {
                r.ok("service", format!("{unit} is active"));
                true
            } else if state == "failed" || state == "activating" {
                r.fail("service", format!("{unit} is {state}; last lines:\n{}", service::journal_tail(host, 15)), "fix what the journal says, then `comfyctl rollback` or `comfyctl service restart`");
                false
            } else {
                r.warn(
                    "service",
                    format!(
                        "{unit} is {}",
                        if state.is_empty() {
                            "not installed"
                        } else {
                            &state
                        }
                    ),
                    "`comfyctl service install` (or start)",
                );
                false
            }
        }
    };
    port_check(&mut r, host, active);

    match &current {
        None => r.fail("current release", "none", "`comfyctl activate BUNDLE`"),
        Some(id) => match release::verify(
            &host.layout.release(id),
            keys::TrustedKeys::load_dir(&host.layout.keys).ok().as_ref(),
        ) {
            Ok(p) if p.is_empty() => r.ok(
                "current release",
                format!("{} matches its signed manifest", support::short_id(id)),
            ),
            Ok(p) => {
                let shown: Vec<String> = p
                    .iter()
                    .take(5)
                    .map(|x| format!("{}: {}", x.path, x.problem))
                    .collect();
                r.fail("current release", format!("{} problem(s): {}", p.len(), shown.join("; ")), "re-activate the bundle (`comfyctl activate` re-unpacks a damaged release) or roll back");
            }
            Err(e) => r.fail(
                "current release",
                format!("{e:#}"),
                "re-activate the bundle",
            ),
        },
    }
    if let (Some(id), Some(m)) = (&current, &manifest) {
        let has_torch = m
            .provenance
            .packages
            .iter()
            .any(|p| p.starts_with("torch=="));
        if !has_torch {
            r.warn(
                "torch",
                "this release ships no torch",
                "nothing to check (a CPU demo release)",
            );
        } else {
            let code = "import torch, json; print(json.dumps([torch.__version__, torch.version.cuda, torch.cuda.is_available()]))";
            let who = crate::accounts::checker(host);
            let out = who.ok().and_then(|who| {
                crate::preflight::python(
                    &host.layout.release(id),
                    code,
                    who,
                    Duration::from_secs(60),
                )
                .ok()
            });
            match out {
                Some(o) if o.status.success() => {
                    let v: serde_json::Value =
                        serde_json::from_str(o.stdout.trim()).unwrap_or_default();
                    if v[2] == true {
                        r.ok("torch", format!("{} with CUDA {}, GPU visible", v[0], v[1]));
                    } else {
                        r.fail(
                            "torch",
                            format!(
                                "{} with CUDA {}, but torch.cuda.is_available() is false",
                                v[0], v[1]
                            ),
                            "check the driver and CUDA_VISIBLE_DEVICES",
                        );
                    }
                }
                Some(o) => r.fail(
                    "torch",
                    cmd::last_kib(&o.stderr).to_owned(),
                    "the release's venv is broken: re-activate it",
                ),
                None => r.fail(
                    "torch",
                    "the release's interpreter did not run",
                    "re-activate the release",
                ),
            }
        }
        host_libs_check(&mut r, m);
        ptxas_check(&mut r, &host.layout.release(id), m);
        match crate::preflight::run(
            &host.layout.release(id),
            m,
            crate::accounts::checker(host).unwrap_or(Some((65534, 65534))),
        ) {
            Ok(n) => r.ok(
                "pre-flight",
                format!("{n} check(s) pass (extensions import)"),
            ),
            Err(e) => r.fail(
                "pre-flight",
                format!("{e:#}"),
                "roll back; the release's kernels or packages do not import here",
            ),
        }
    }

    let d = host.layout.data();
    for (name, target) in data::mapped(&host.cfg.data) {
        let p = d.join(name);
        let meta = fs_err::symlink_metadata(&p).ok();
        if target.is_empty() {
            match meta {
                Some(m) if m.is_dir() => r.ok(&format!("data/{name}"), "local directory"),
                _ => r.fail(&format!("data/{name}"), "missing", "`comfyctl setup`"),
            }
            continue;
        }
        let t = std::path::Path::new(target);
        if !t.is_dir() {
            r.fail(
                &format!("data/{name}"),
                format!("target {target} is missing"),
                "mount the share, or fix [data] in comfyctl.toml",
            );
            continue;
        }
        if host.cfg.data.require_mount
            && fs_err::metadata(t)
                .ok()
                .zip(t.parent().and_then(|p| fs_err::metadata(p).ok()))
                .is_some_and(|(a, b)| a.dev() == b.dev())
        {
            r.fail(
                &format!("data/{name}"),
                format!("{target} is not a mount point"),
                "mount the NFS share",
            );
            continue;
        }
        match meta {
            Some(m)
                if m.file_type().is_symlink() && fs_err::read_link(&p).is_ok_and(|l| l == t) =>
            {
                r.ok(&format!("data/{name}"), format!("links to {target}"))
            }
            Some(m) if m.is_dir() => r.fail(
                &format!("data/{name}"),
                format!("is a directory, not the link to {target} (the seed's git pull did this)"),
                format!("move its files to {target}, remove it, and re-run `comfyctl activate`"),
            ),
            _ => r.fail(
                &format!("data/{name}"),
                "missing or pointing elsewhere",
                "re-run `comfyctl activate` or `comfyctl setup`",
            ),
        }
    }
    data_ownership(&mut r, host);
    match keys::TrustedKeys::load_dir(&host.layout.keys) {
        Ok(k) => r.ok(
            "trusted keys",
            format!(
                "{} key(s) in {}",
                k.keys().len(),
                host.layout.keys.display()
            ),
        ),
        Err(e) => r.fail(
            "trusted keys",
            e.to_string(),
            "`comfyctl setup --key release.pub`",
        ),
    }
    let need = manifest.as_ref().map_or(0, |m| m.total_bytes());
    match support::doctor::free_bytes(&host.layout.install) {
        Some(f) if f < need => r.fail(
            "disk",
            format!(
                "{} free, a release like the current one needs up to {}",
                gib(f),
                gib(need)
            ),
            "`comfyctl gc`, or free space",
        ),
        Some(f) => r.ok("disk", format!("{} free for the next release", gib(f))),
        None => r.warn("disk", "cannot tell", "check `df` by hand"),
    }
    r
}

/// Root's own directories (README, "Security model"): owned by root and writable by nobody else,
/// or the service and the group could rename what root keeps there.
fn data_ownership(r: &mut Report, host: &Host) {
    let d = host.layout.data();
    let mut bad = Vec::new();
    for p in [
        host.layout.install.clone(),
        d.clone(),
        d.join("db"),
        d.join(bundle::STATE_DIR),
        host.layout.state(),
        host.layout.unit_inputs(),
    ] {
        match fs_err::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && m.uid() == 0 && m.permissions().mode() & 0o022 == 0 => {}
            Ok(m) => bad.push(format!(
                "{} ({}uid {} mode {:o})",
                p.display(),
                if m.file_type().is_symlink() {
                    "a link, "
                } else {
                    ""
                },
                m.uid(),
                m.permissions().mode() & 0o7777
            )),
            Err(_) => bad.push(format!("{} (missing)", p.display())),
        }
    }
    if !data::group_ok(host) {
        bad.push(format!("group {} (missing)", host.cfg.access.group));
    }
    if bad.is_empty() {
        r.ok(
            "data permissions",
            format!(
                "{} and root's directories in it are root's alone; shared ones belong to {}",
                d.display(),
                host.cfg.access.group
            ),
        );
    } else {
        r.warn(
            "data permissions",
            bad.join(", "),
            "`comfyctl setup` (or the next activation) makes root's directories root's alone",
        );
    }
}

/// Triton's own ptxas rejects `sm_121a` (thu-ml/SageAttention #297, triton-lang/triton #9181): a
/// release for sm_121 points `TRITON_PTXAS_PATH` at a CUDA 13 ptxas, its own copy
/// (`@release/...`) or the host's toolkit. It must be there and run.
fn ptxas_check(r: &mut Report, release: &std::path::Path, m: &bundle::Manifest) {
    let needs = m.target.contains("sm_121");
    let Some(v) = m.launch.env.get("TRITON_PTXAS_PATH") else {
        if needs {
            r.warn(
                "ptxas for Triton",
                "the release sets no TRITON_PTXAS_PATH; Triton's own ptxas rejects sm_121a",
                "set TRITON_PTXAS_PATH in the recipe's [launch] env to CUDA 13's ptxas",
            );
        }
        return;
    };
    let path = match v.strip_prefix("@release/") {
        Some(rel) => release.join(rel),
        None => std::path::PathBuf::from(v),
    };
    match run(Command::new(&path).arg("--version")) {
        Some(o) if o.status.success() => r.ok(
            "ptxas for Triton",
            format!(
                "{} ({})",
                path.display(),
                o.stdout.lines().last().unwrap_or_default().trim()
            ),
        ),
        _ => r.fail(
            "ptxas for Triton",
            format!("TRITON_PTXAS_PATH={} does not run", path.display()),
            "install the CUDA 13 toolkit there, or build the release with [toolkit] in_release = true",
        ),
    }
}
