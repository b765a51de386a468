//! Mutable state under `data/`: `models`, `input`, `output` are local directories or links to the
//! configured (NFS) targets, `user` and `temp` always local, and one SQLite database per release
//! (`db/<id>/`), copied from the previous release's at its first activation, so a rollback never
//! opens a database a newer release migrated. Nothing here deletes, moves or chowns user data.

use crate::config::DataConfig;
use crate::host::{refuse, Host};
use anyhow::{Context as _, Result};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The directories that may be mapped, with their configured target ("" = local).
pub fn mapped(cfg: &DataConfig) -> [(&'static str, &str); 3] {
    [
        ("models", cfg.models.as_str()),
        ("input", cfg.input.as_str()),
        ("output", cfg.output.as_str()),
    ]
}

fn is_mount_point(p: &Path) -> bool {
    let (Ok(m), Some(parent)) = (fs_err::metadata(p), p.parent()) else {
        return false;
    };
    fs_err::metadata(parent).is_ok_and(|pm| pm.dev() != m.dev() || pm.ino() == m.ino())
}

/// Checks every mapping before anything changes: targets exist (and are mounted where required),
/// and no local directory holding files stands where a link must go.
pub fn check(host: &Host) -> Result<()> {
    let data = host.layout.data();
    for (name, target) in mapped(&host.cfg.data) {
        if target.is_empty() {
            continue;
        }
        let t = Path::new(target);
        if !t.is_dir() {
            return refuse(format!(
                "the {name} target {target} does not exist or is not a directory; mount the share or fix [data] {name} in comfyctl.toml"
            ));
        }
        if host.cfg.data.require_mount && !is_mount_point(t) {
            return refuse(format!(
                "the {name} target {target} is not a mount point (is the NFS share mounted?)"
            ));
        }
        let link = data.join(name);
        if let Ok(m) = fs_err::symlink_metadata(&link) {
            if m.is_dir() && fs_err::read_dir(&link)?.next().is_some() {
                return refuse(format!(
                    "{} is a local directory with files where the link to {target} belongs; move its contents to {target} (nothing is deleted automatically)",
                    link.display()
                ));
            }
        }
    }
    Ok(())
}

pub fn group_exists(group: &str) -> bool {
    group_gid(group).is_some()
}

/// The third field (uid, gid) of `name`'s line in a `name:x:id:...` database (/etc/passwd, /etc/group).
fn id_in(db: &str, name: &str) -> Option<u32> {
    let text = fs_err::read_to_string(db).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name)
            .then(|| f.nth(1)?.parse().ok())
            .flatten()
    })
}

/// The uid of `user` from /etc/passwd.
pub(crate) fn user_uid(user: &str) -> Option<u32> {
    id_in("/etc/passwd", user)
}

/// Makes a file comfyctl writes for the service (environment, model paths) owned by root and the
/// service's group with `mode`: the service reads it, nobody else does. Without the group (a host
/// not set up yet) only the mode is set.
pub fn share_with_service(host: &Host, p: &Path, mode: u32) -> Result<()> {
    if let Some(gid) = group_gid(&host.cfg.service.group) {
        rustix::fs::chown(
            p,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .with_context(|| format!("chown root:{} {}", host.cfg.service.group, p.display()))?;
    }
    fs_err::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Hands `p` to the service user and group with `mode` (state the service writes).
fn give_to_service(host: &Host, p: &Path, mode: u32) -> Result<()> {
    let s = &host.cfg.service;
    let uid = user_uid(&s.user).map(rustix::fs::Uid::from_raw);
    let gid = group_gid(&s.group).map(rustix::fs::Gid::from_raw);
    rustix::fs::chown(p, uid, gid)
        .with_context(|| format!("chown {}:{} {}", s.user, s.group, p.display()))?;
    fs_err::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Creates `dir` and its missing parents below `top` for the service (0770, service-owned).
fn service_dirs(host: &Host, top: &Path, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while d.starts_with(top) && !d.exists() {
        missing.push(d.to_owned());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.iter().rev() {
        fs_err::create_dir(m)?;
        give_to_service(host, m, 0o770)?;
    }
    Ok(())
}

/// Copies the release's seed (a file or a tree) to `dest`, every copy handed to the service.
fn copy_seed(host: &Host, seed: &Path, dest: &Path) -> Result<()> {
    let meta = fs_err::symlink_metadata(seed)?;
    if meta.is_dir() {
        fs_err::create_dir(dest)?;
        give_to_service(host, dest, 0o770)?;
        for e in fs_err::read_dir(seed)? {
            let e = e?;
            copy_seed(host, &e.path(), &dest.join(e.file_name()))?;
        }
    } else if meta.is_file() {
        fs_err::copy(seed, dest)?;
        give_to_service(host, dest, 0o660)?;
    }
    Ok(())
}

/// The node state release `dir` writes to (its manifest's `state`), below `data/node-state`:
/// directories created, files seeded from the release's copy the first time, all owned by the
/// service user and group (0770/0660). What is already there is kept as it is: state outlives
/// releases, rollbacks, gc and nuke. Returns what it created.
pub fn node_state(host: &Host, dir: &Path, m: &bundle::Manifest) -> Result<Vec<String>> {
    let top = host.layout.data().join(bundle::STATE_DIR);
    let mut created = Vec::new();
    if m.state.is_empty() {
        return Ok(created);
    }
    if !top.exists() {
        fs_err::create_dir_all(&top)?;
        give_to_service(host, &top, 0o770)?;
    }
    for st in &m.state {
        let dest = top.join(&st.target);
        if let Some(parent) = dest.parent() {
            service_dirs(host, &top, parent)?;
        }
        if fs_err::symlink_metadata(&dest).is_ok() {
            continue;
        }
        match &st.seed {
            Some(seed) => copy_seed(host, &dir.join(seed), &dest)?,
            None if st.dir => {
                fs_err::create_dir(&dest)?;
                give_to_service(host, &dest, 0o770)?;
            }
            None => continue,
        }
        created.push(format!("node state {}", dest.display()));
    }
    Ok(created)
}

/// ComfyUI-Manager on an immutable release: unless the operator configured it already, its
/// settings (`data/user/default/ComfyUI-Manager/config.ini`) start at `security_level = strong`,
/// which makes it refuse every install, update and uninstall with a message, and
/// `network_mode = offline`, so a host without GitHub does not wait on it at startup.
pub fn manager_config(host: &Host, m: &bundle::Manifest) -> Result<Option<String>> {
    if !bundle::has_manager(&m.provenance.custom_nodes) {
        return Ok(None);
    }
    let user = host.layout.data().join("user");
    let file = user.join(bundle::MANAGER_CONFIG_PATH);
    let dir = file.parent().expect("a file below user/");
    if file.exists() {
        return Ok(None);
    }
    service_dirs(host, &user, dir)?;
    crate::atomic::write(&file, bundle::MANAGER_CONFIG.as_bytes())?;
    give_to_service(host, &file, 0o660)?;
    Ok(Some(format!("wrote {}", file.display())))
}

pub(crate) fn group_gid(group: &str) -> Option<u32> {
    id_in("/etc/group", group)
}

/// Creates `p` (group-writable, setgid, owned by `group`); true when it did not exist.
fn make_dir(p: &Path, group: &str) -> Result<bool> {
    if p.exists() {
        return Ok(false);
    }
    fs_err::create_dir_all(p)?;
    if let Some(gid) = group_gid(group) {
        rustix::fs::chown(p, None, Some(rustix::fs::Gid::from_raw(gid)))
            .with_context(|| format!("chgrp {}", p.display()))?;
    }
    fs_err::set_permissions(p, std::fs::Permissions::from_mode(0o2775))?;
    Ok(true)
}

/// Creates local dirs and (re)links mapped ones; returns what it changed. Call [`check`] first.
pub fn apply(host: &Host) -> Result<Vec<String>> {
    let data = host.layout.data();
    let group = &host.cfg.access.group;
    let mut changed = Vec::new();
    for p in [
        data.clone(),
        data.join("user"),
        data.join("temp"),
        data.join("db"),
    ] {
        if make_dir(&p, group)? {
            changed.push(format!("created {}", p.display()));
        }
    }
    for (name, target) in mapped(&host.cfg.data) {
        let link = data.join(name);
        let meta = fs_err::symlink_metadata(&link).ok();
        if target.is_empty() {
            match meta {
                Some(m) if m.file_type().is_symlink() => {
                    // Back to local storage: only the link goes, the share's data stays where it is.
                    fs_err::remove_file(&link)?;
                    make_dir(&link, group)?;
                    changed.push(format!("{} is local again (was a link)", link.display()));
                }
                Some(_) => {}
                None => {
                    make_dir(&link, group)?;
                    changed.push(format!("created {}", link.display()));
                }
            }
            continue;
        }
        match meta {
            Some(m)
                if m.file_type().is_symlink() && fs_err::read_link(&link)? == Path::new(target) =>
            {
                continue;
            }
            Some(m) if m.is_dir() => {
                // Empty (check() refused a non-empty one): the seed's playbook 02 made the same swap.
                fs_err::remove_dir(&link)?;
                crate::atomic::replace_symlink(Path::new(target), &link)?;
            }
            _ => crate::atomic::replace_symlink(Path::new(target), &link)?,
        }
        changed.push(format!("linked {} -> {target}", link.display()));
    }
    Ok(changed)
}

/// The database path of release `id`; at its first activation, a copy of `from`'s (if any).
/// The copy is made while the service is stopped (WAL files included).
pub fn database(host: &Host, id: &str, from: Option<&str>) -> Result<PathBuf> {
    let dir = host.layout.data().join("db").join(id);
    let db = dir.join("comfyui.db");
    if dir.exists() {
        return Ok(db);
    }
    fs_err::create_dir_all(&dir)?;
    // The service's own: ComfyUI creates the database with the unit's UMask (0002), so the
    // folder is what keeps other users out.
    give_to_service(host, &dir, 0o770)?;
    if let Some(prev) = from {
        let pdir = host.layout.data().join("db").join(prev);
        for f in ["comfyui.db", "comfyui.db-wal", "comfyui.db-shm"] {
            if pdir.join(f).exists() {
                fs_err::copy(pdir.join(f), dir.join(f))?;
                give_to_service(host, &dir.join(f), 0o660)?;
            }
        }
    }
    Ok(db)
}
