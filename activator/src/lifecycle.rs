//! The seed's service playbooks as verbs (04 install, 05 restart, 06 pause, 07 start, 08 remove,
//! 99 nuke) and `setup` (group, users, service user, data dirs, trusted key). Each reports what it
//! did; `nuke` keeps every data directory and NFS target, removing only links.

use crate::host::{refuse, Host};
use crate::{accounts, data, service};
use anyhow::{Context as _, Result};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

/// What a verb did, line by line.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Done {
    pub changed: bool,
    pub actions: Vec<String>,
}

impl Done {
    fn did(&mut self, what: impl Into<String>) {
        self.changed = true;
        self.actions.push(what.into());
    }
}

/// Writes a host config naming `target` at `path` when there is none yet (`setup --target`).
pub fn write_initial_config(path: &Path, target: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        fs_err::create_dir_all(p)?;
    }
    fs_err::write(path, format!("target = \"{target}\"\n"))?;
    Ok(())
}

pub fn setup(host: &Host, key: Option<&Path>) -> Result<Done> {
    let mut done = Done::default();
    host.layout.ensure()?;
    let group = &host.cfg.access.group;
    if !accounts::group_exists(host, group) {
        host.system
            .change_accounts(Command::new("groupadd").args(["--system", group]))?;
        done.did(format!("created group {group}"));
    }
    let svc = &host.cfg.service;
    // The service user (its home is its own directory under data/, where caches such as
    // Triton's go) and the account pre-flight checks run as, which the service cannot signal.
    for (user, home, what) in [
        (&svc.user, host.layout.data().join("home"), "service user"),
        (&svc.check_user, std::path::PathBuf::from("/"), "check user"),
    ] {
        if user != "root" && !accounts::user_exists(host, user) {
            if what == "check user" && !host.is_real_root() {
                // Accounts are this machine's; in a --root tree checks run as `nobody`.
                done.actions.push(format!(
                    "check user {user} not created in a --root tree; pre-flight runs as nobody there"
                ));
                continue;
            }
            host.system.change_accounts(
                Command::new("useradd")
                    .args([
                        "--system",
                        "--user-group",
                        "--no-create-home",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--home-dir",
                    ])
                    .arg(home)
                    .arg(user),
            )?;
            done.did(format!("created {what} {user}"));
        }
    }
    // People only: the unit gives the service the group (SupplementaryGroups), and nothing the
    // group can write is trusted by root.
    for u in host.cfg.access.users.clone() {
        if !accounts::user_exists(host, &u) {
            done.actions.push(format!(
                "user {u} does not exist; create it, then run setup again"
            ));
            continue;
        }
        if !accounts::is_member(host, &u, group) {
            host.system
                .change_accounts(Command::new("usermod").args(["-aG", group, &u]))?;
            done.did(format!("added {u} to {group}"));
        }
    }
    data::check(host)?;
    for what in data::apply(host)? {
        done.did(what);
    }
    if let Some(k) = key {
        let pk = keys::PublicKey::load(k)
            .with_context(|| format!("{} is not a minisign public key", k.display()))?;
        let dest = host.layout.keys.join(format!("{}.pub", pk.id));
        if !dest.exists() {
            fs_err::create_dir_all(&host.layout.keys)?;
            fs_err::write(&dest, pk.to_file_string())?;
            fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(0o644))?;
            done.did(format!(
                "trusted key {} installed as {}",
                pk.id,
                dest.display()
            ));
        }
    }
    Ok(done)
}

fn need_current(host: &Host) -> Result<String> {
    match host.current() {
        Some(c) => Ok(c),
        None => refuse("no current release: run `comfyctl activate BUNDLE` first"),
    }
}

pub enum Action {
    Install,
    Restart,
    Pause,
    Start,
    Remove,
}

pub fn service(host: &Host, action: Action, drain: &crate::drain::Options) -> Result<Done> {
    let mut done = Done::default();
    let unit = service::unit_name(host);
    match action {
        Action::Install => {
            // The same bring-up as an activation's (data, node state, the Manager's config, the
            // database, the unit's inputs), under the same lock.
            let _lock = host.lock()?;
            let id = need_current(host)?;
            let p = crate::start::prepare(host, &id, None)?;
            if service::install_unit(host)? {
                done.did(format!(
                    "wrote {} and reloaded systemd",
                    host.layout.unit(&host.cfg.service.name).display()
                ));
            }
            service::systemctl(host, &["enable", &unit])?;
            crate::drain::drain(host, drain)?;
            let h = crate::start::bring_up(host, &p);
            if !h.healthy {
                anyhow::bail!(
                    "{unit} installed and started, but it is unhealthy: {}\n{}",
                    h.reason.unwrap_or_default(),
                    service::journal_note(host)
                );
            }
            done.did(format!("enabled and started {unit}; healthy"));
        }
        Action::Restart => {
            // Re-applies the host config (unit, flags, data links) to the current release, then
            // checks it as an activation does: editing comfyctl.toml takes effect here.
            let _lock = host.lock()?;
            let id = need_current(host)?;
            let h = crate::start::restart_healthy(host, &id, &format!("{unit} restarted"), drain)?;
            done.did(format!(
                "restarted {unit} with the host config; healthy ({} node classes, down {:.1}s)",
                h.node_classes, h.downtime_seconds
            ));
        }
        Action::Pause => {
            let _lock = host.lock()?;
            crate::drain::drain(host, drain)?;
            service::systemctl(host, &["disable", "--now", &unit])?;
            done.did(format!("stopped and disabled {unit}"));
        }
        Action::Start => {
            let _ = service::systemctl(host, &["reset-failed", &unit]);
            service::systemctl(host, &["enable", "--now", &unit])?;
            done.did(format!("enabled and started {unit}"));
        }
        Action::Remove => {
            let path = host.layout.unit(&host.cfg.service.name);
            if path.exists() {
                crate::drain::drain(host, drain)?;
                let _ = service::systemctl(host, &["disable", "--now", &unit]);
                fs_err::remove_file(&path)?;
                service::systemctl(host, &["daemon-reload"])?;
                done.did(format!("stopped, disabled and removed {unit}"));
            }
        }
    }
    Ok(done)
}

/// Everything comfyctl installed goes; data directories, their files and NFS targets stay.
pub fn nuke(host: &Host, drain: &crate::drain::Options) -> Result<Done> {
    let mut done = service(host, Action::Remove, drain)?;
    let l = &host.layout;
    for (name, _) in data::mapped(&host.cfg.data) {
        let p = l.data().join(name);
        if fs_err::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            fs_err::remove_file(&p)?;
            done.did(format!(
                "removed the link {} (its target is untouched)",
                p.display()
            ));
        }
    }
    for link in [
        l.current(),
        l.install.join("venv"),
        l.install.join("ComfyUI"),
    ] {
        if fs_err::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fs_err::remove_file(&link)?;
            done.did(format!("removed {}", link.display()));
        }
    }
    for dir in [l.releases(), l.store(), l.state()] {
        if dir.exists() {
            bundle::make_writable_and_remove(&dir)
                .with_context(|| format!("removing {}", dir.display()))?;
            done.did(format!("removed {}", dir.display()));
        }
    }
    let group = &host.cfg.access.group;
    if accounts::group_exists(host, group) {
        host.system
            .change_accounts(Command::new("groupdel").arg(group))?;
        done.did(format!("removed group {group}"));
    }
    done.actions
        .push(format!("kept {} and every NFS target", l.data().display()));
    Ok(done)
}
