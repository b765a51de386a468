//! The systemd unit: rendered from the host config (the release's flags go in an environment file,
//! so switching releases does not change the unit), installed with `daemon-reload` only when it
//! changed, and driven through `systemctl`. Hardening keeps releases read-only.

use crate::cmd;
use crate::host::Host;
use anyhow::{bail, Result};
use bundle::Manifest;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The environment file the unit reads: which release, and its full argument list.
pub fn env_path(host: &Host) -> std::path::PathBuf {
    host.layout.state().join("service.env")
}

pub fn render_unit(host: &Host) -> String {
    let l = &host.layout;
    let s = &host.cfg.service;
    let mut rw = vec![l.data().display().to_string()];
    for (_, t) in crate::data::mapped(&host.cfg.data) {
        if !t.is_empty() {
            rw.push(t.to_owned());
        }
    }
    format!(
        "# Written by comfyctl; edit /etc/comfyui/comfyctl.toml instead.\n\
[Unit]\n\
Description=ComfyUI (immutable release managed by comfyctl)\n\
After=network-online.target remote-fs.target\n\
Wants=network-online.target\n\
\n\
[Service]\n\
Type=simple\n\
User={user}\n\
Group={group}\n\
{supplementary}\
EnvironmentFile={env}\n\
WorkingDirectory={data}\n\
ExecStart={install}/current/{entry} $COMFYUI_ARGS\n\
Restart=always\n\
RestartSec=2\n\
TimeoutStopSec=30\n\
UMask=0002\n\
ProtectSystem=strict\n\
ReadWritePaths={rw}\n\
PrivateTmp=yes\n\
NoNewPrivileges=yes\n\
ProtectHome=yes\n\
StandardOutput=journal\n\
StandardError=journal\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n",
        user = s.user,
        group = s.group,
        // A group that does not exist (yet: `comfyctl setup` makes it) would stop the unit starting.
        supplementary = if crate::data::group_exists(&host.cfg.access.group) {
            format!("SupplementaryGroups={}\n", host.cfg.access.group)
        } else {
            String::new()
        },
        env = env_path(host).display(),
        data = l.data().display(),
        install = l.install.display(),
        entry = bundle::LAUNCH_ENTRY,
        rw = rw.join(" "),
    )
}

/// The release's launch flags with the host's address and data directories.
pub fn args(host: &Host, m: &Manifest, db: &Path) -> Result<String> {
    let s = &host.cfg.service;
    let out = m
        .launch
        .run_args(&s.listen, s.port, &host.layout.data(), db);
    if let Some(bad) = out.iter().find(|a| a.chars().any(char::is_whitespace)) {
        bail!("launch argument {bad:?} contains whitespace, which the unit's environment file cannot carry");
    }
    Ok(out.join(" "))
}

/// Writes the environment file and the model-paths file for release `id`: owned by root, readable
/// by the service's group (the unit runs as the service user, and ComfyUI dies on a model-paths
/// file it cannot read), by nobody else.
pub fn write_env(host: &Host, m: &Manifest, id: &str, db: &Path) -> Result<()> {
    let models = host.layout.data().join("models");
    let yaml = host.layout.data().join("extra_model_paths.yaml");
    crate::atomic::write(&yaml, bundle::model_paths_yaml(&models).as_bytes())?;
    crate::data::share_with_service(host, &yaml, 0o640)?;
    let text = format!(
        "COMFYUI_RELEASE={id}\nCOMFYUI_ARGS={}\n",
        args(host, m, db)?
    );
    crate::atomic::write(&env_path(host), text.as_bytes())?;
    crate::data::share_with_service(host, &env_path(host), 0o640)
}

/// The one way comfyctl drives systemd. A host tree given with `--root` is not this machine's:
/// its units are never started, stopped or reloaded through this machine's systemd (a test or a
/// chroot preparation can never touch the real `comfyui.service`).
pub fn systemctl(host: &Host, args: &[&str]) -> Result<cmd::Output> {
    if !host.is_real_root() {
        bail!(
            "not running `systemctl {}`: the host tree is {} (--root), not this machine; use \
             --no-service there",
            args.join(" "),
            host.layout.root.display()
        );
    }
    let o = cmd::output(
        Command::new("systemctl").args(args),
        Duration::from_secs(120),
    )?;
    if !o.status.success() {
        bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            o.status,
            cmd::last_kib(&format!("{}{}", o.stdout, o.stderr))
        );
    }
    Ok(o)
}

/// Installs the unit; `daemon-reload` only if its text changed. Returns whether it changed.
pub fn install_unit(host: &Host) -> Result<bool> {
    let path = host.layout.unit(&host.cfg.service.name);
    let text = render_unit(host);
    if fs_err::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    if let Some(p) = path.parent() {
        fs_err::create_dir_all(p)?;
    }
    crate::atomic::write(&path, text.as_bytes())?;
    systemctl(host, &["daemon-reload"])?;
    Ok(true)
}

/// The unit's state and the last lines it logged (over all its runs: `systemctl status` alone
/// shows only the current one, which after a restart has logged nothing yet).
/// The unit's last journal lines under a heading, for an unhealthy-release error.
pub fn journal_note(host: &Host) -> String {
    format!(
        "last lines of the unit's journal:\n{}",
        journal_tail(host, 30)
    )
}

pub fn journal_tail(host: &Host, lines: usize) -> String {
    if !host.is_real_root() {
        return "(no journal: the host tree is given with --root)\n".into();
    }
    let unit = format!("{}.service", host.cfg.service.name);
    let n = lines.to_string();
    let run = |c: &mut Command| match cmd::output(c, Duration::from_secs(30)) {
        Ok(o) => o.stdout,
        Err(e) => format!("({e:#})\n"),
    };
    let state = run(Command::new("systemctl").args([
        "show",
        "-p",
        "ActiveState,SubState,Result,ExecMainStatus",
        &unit,
    ]));
    let log = run(Command::new("journalctl").args(["-u", &unit, "-n", &n, "--no-pager"]));
    format!("{state}{log}")
}

pub fn unit_name(host: &Host) -> String {
    format!("{}.service", host.cfg.service.name)
}
