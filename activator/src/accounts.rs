//! The host's users and groups, read from its `etc/passwd` and `etc/group` (the one reader of
//! both), and the owners comfyctl gives what it creates: root, the service user, the access
//! group, and the account pre-flight checks run as. The host is this machine, or under `--root`
//! the tree's own databases: a tree is never given this machine's ids (a tree without them knows
//! root alone), and accounts are never changed there (`setup` refuses).

use crate::beneath::Owner;
use crate::host::{refuse, Host};
use anyhow::Result;

/// The fields of `name`'s line in the host's `name:x:id:...` database `db`.
fn line_of(host: &Host, db: &str, name: &str) -> Option<Vec<String>> {
    let text = host.system.accounts_db(db)?;
    text.lines().find_map(|l| {
        let f: Vec<String> = l.split(':').map(str::to_owned).collect();
        (f.first().map(String::as_str) == Some(name)).then_some(f)
    })
}

/// The uid of `user`.
pub fn uid(host: &Host, user: &str) -> Option<u32> {
    line_of(host, "passwd", user)?.get(2)?.parse().ok()
}

/// The primary gid of `user`.
pub fn primary_gid(host: &Host, user: &str) -> Option<u32> {
    line_of(host, "passwd", user)?.get(3)?.parse().ok()
}

/// The gid of `group`.
pub fn gid(host: &Host, group: &str) -> Option<u32> {
    line_of(host, "group", group)?.get(2)?.parse().ok()
}

pub fn user_exists(host: &Host, user: &str) -> bool {
    uid(host, user).is_some()
}

pub fn group_exists(host: &Host, group: &str) -> bool {
    gid(host, group).is_some()
}

/// Whether `user` is listed as a member of `group`.
pub fn is_member(host: &Host, user: &str, group: &str) -> bool {
    line_of(host, "group", group)
        .and_then(|f| f.get(3).cloned())
        .is_some_and(|m| m.split(',').any(|x| x == user))
}

/// The service user and its group: the owner of what the service writes (its databases and
/// node state). Refused when the host has not been set up.
pub fn service(host: &Host) -> Result<Owner> {
    let s = &host.cfg.service;
    match (uid(host, &s.user), gid(host, &s.group)) {
        (Some(uid), Some(gid)) => Ok(Owner { uid, gid }),
        _ => refuse(format!(
            "the service user {} or its group {} does not exist; run `comfyctl setup`",
            s.user, s.group
        )),
    }
}

/// Root, with the service's group: what the unit reads and only root writes.
pub fn root_for_service(host: &Host) -> Result<Owner> {
    Ok(Owner {
        uid: 0,
        gid: service(host)?.gid,
    })
}

/// Root, with the access group where it exists: the shared directories' owner.
pub fn root_for_group(host: &Host) -> Owner {
    Owner {
        uid: 0,
        gid: gid(host, &host.cfg.access.group).unwrap_or(0),
    }
}

/// Who runs code from a release outside the unit (pre-flight checks, doctor's torch check):
/// the `[service] check_user` account (`comfyctl setup` creates it), or `nobody` where it does
/// not exist yet. Never the service user itself: a process of the same uid could signal or trace
/// the check, or kill it to block every upgrade. `None` when comfyctl is not root (no identity to
/// drop to).
pub fn checker(host: &Host) -> Result<Option<(u32, u32)>> {
    if !rustix::process::getuid().is_root() {
        return Ok(None);
    }
    let (u, g) = match (
        uid(host, &host.cfg.service.check_user),
        primary_gid(host, &host.cfg.service.check_user),
    ) {
        (Some(u), Some(g)) if u != 0 => (u, g),
        _ => (65534, 65534),
    };
    if uid(host, &host.cfg.service.user) == Some(u) {
        return refuse(format!(
            "checks would run as uid {u}, the service user's own: set [service] check_user to an \
             account of its own (`comfyctl setup` creates {})",
            host.cfg.service.check_user
        ));
    }
    Ok(Some((u, g)))
}
