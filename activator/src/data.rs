//! Mutable state under `data/`: `models`, `input`, `output` are local directories or links to the
//! configured (NFS) targets, `user` and `temp` always local, one SQLite database per release
//! (`db/<id>/`, copied from the previous release's at its first activation, so a rollback never
//! opens a database a newer release migrated), and the custom nodes' state (`node-state/`).
//!
//! Who owns what (README, "Security model"): `data/`, `data/db` and `data/node-state` are root's
//! alone; `home/`, `user/`, `temp/`, `db/<id>/` and `node-state/<node>/` are the service's;
//! `models`, `input` and `output` belong to the access group, the service included. Everything here goes through [`crate::beneath`], so
//! no link, FIFO or swap the service or the group plants steers a root write. Nothing here
//! deletes, moves or chowns user data.

use crate::accounts;
use crate::beneath::{Dir, Kind, Owner};
use crate::config::DataConfig;
use crate::host::{refuse, Host};
use anyhow::{Context as _, Result};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The directories that may be mapped, with their configured target ("" = local).
pub fn mapped(cfg: &DataConfig) -> [(&'static str, &str); 3] {
    let [models, input, output] = comfyui::SHARED_DATA_DIRS;
    [
        (models, cfg.models.as_str()),
        (input, cfg.input.as_str()),
        (output, cfg.output.as_str()),
    ]
}

/// Root's own directories inside `data/`: nobody else may rename what is in them.
const ROOT_DIRS: [&str; 2] = ["db", bundle::STATE_DIR];
/// ComfyUI's own local directories: the service's alone (a group member who could rename
/// `user/default` could make root's Manager config refuse, and so block upgrades).
const SERVICE_DIRS: [&str; 2] = comfyui::LOCAL_DATA_DIRS;
/// A shared directory: group-writable, setgid so new files keep the group.
const GROUP_MODE: u32 = 0o2775;
/// What the service alone writes (its database folders, node state).
const SERVICE_DIR_MODE: u32 = 0o770;
const SERVICE_FILE_MODE: u32 = 0o660;
const DATABASE_FILES: [&str; 3] = ["comfyui.db", "comfyui.db-wal", "comfyui.db-shm"];

fn is_mount_point(p: &Path) -> bool {
    let (Ok(m), Some(parent)) = (fs_err::metadata(p), p.parent()) else {
        return false;
    };
    fs_err::metadata(parent).is_ok_and(|pm| pm.dev() != m.dev() || pm.ino() == m.ino())
}

/// Opens `data/` as root's own directory, creating it, or taking it back from an older layout
/// that left it writable by the group (whose members could then rename root's entries).
fn open_data(host: &Host, changed: &mut Vec<String>) -> Result<Dir> {
    let install = Dir::open_root_owned(&host.layout.install)?;
    let (data, created) = install.ensure_dir("data", Owner::ROOT, 0o755)?;
    if created {
        changed.push(format!("created {}", data.path().display()));
    } else {
        make_root_only(&data, changed)?;
    }
    Ok(data)
}

/// A directory of root's that an older comfyctl left owned or writable by others is made
/// root's alone (on its descriptor).
fn make_root_only(d: &Dir, changed: &mut Vec<String>) -> Result<()> {
    let (o, mode) = d.owner_mode()?;
    if rustix::process::getuid().is_root() && (o.uid != 0 || mode & 0o7022 != 0) {
        d.set_owner(Owner { uid: 0, gid: o.gid }, 0o755)?;
        changed.push(format!(
            "{} is root's alone now (was uid {} mode {mode:o})",
            d.path().display(),
            o.uid
        ));
    }
    Ok(())
}

/// `data/<name>`, one of root's own directories (created or taken back as needed).
fn root_dir(data: &Dir, name: &str, changed: &mut Vec<String>) -> Result<Dir> {
    let (d, created) = data.ensure_dir(name, Owner::ROOT, 0o755)?;
    if created {
        changed.push(format!("created {}", d.path().display()));
    } else {
        make_root_only(&d, changed)?;
    }
    Ok(d)
}

/// Checks every mapping before anything changes: targets exist (and are mounted where required),
/// and no local directory holding files stands where a link must go.
pub fn check(host: &Host) -> Result<()> {
    let data = Dir::open_root_owned(&host.layout.install)?.open_dir("data")?;
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
        let Some(data) = &data else { continue };
        if data.kind(name)? == Some(Kind::Dir) {
            let local = data.open_dir(name)?.context("vanished")?;
            if !local.is_empty()? {
                return refuse(format!(
                    "{} is a local directory with files where the link to {target} belongs; move its contents to {target} (nothing is deleted automatically)",
                    local.path().display()
                ));
            }
        }
    }
    Ok(())
}

/// Creates the data directories, takes root's back from an older layout, and (re)links mapped
/// ones; returns what it changed. Call [`check`] first.
pub fn apply(host: &Host) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    let data = open_data(host, &mut changed)?;
    for name in ROOT_DIRS {
        root_dir(&data, name, &mut changed)?;
    }
    // The service's home (caches: Triton's kernels, Hugging Face, matplotlib), its user and temp
    // folders: its alone. An older layout's root:<group> 2775 user/ and temp/ are handed over.
    let svc = accounts::service(host)?;
    if data.ensure_dir("home", svc, 0o750)?.1 {
        changed.push(format!("created {}", data.path().join("home").display()));
    }
    for name in SERVICE_DIRS {
        let (d, created) = data.ensure_dir(name, svc, SERVICE_DIR_MODE)?;
        if created {
            changed.push(format!("created {}", d.path().display()));
            continue;
        }
        let (o, mode) = d.owner_mode()?;
        let others_write = mode & 0o002 != 0 || (mode & 0o020 != 0 && o.gid != svc.gid);
        if rustix::process::getuid().is_root() && (o.uid != svc.uid || others_write) {
            d.set_owner(svc, SERVICE_DIR_MODE)?;
            changed.push(format!(
                "{} is the service's alone now (was uid {} mode {mode:o})",
                d.path().display(),
                o.uid
            ));
        }
    }
    let shared = accounts::root_for_group(host);
    for (name, target) in mapped(&host.cfg.data) {
        let link = data.path().join(name);
        let kind = data.kind(name)?;
        if target.is_empty() {
            match kind {
                Some(Kind::Symlink) => {
                    // Back to local storage: only the link goes, the share's data stays where it is.
                    data.remove_file(name)?;
                    data.ensure_dir(name, shared, GROUP_MODE)?;
                    changed.push(format!("{} is local again (was a link)", link.display()));
                }
                Some(_) => {}
                None => {
                    data.ensure_dir(name, shared, GROUP_MODE)?;
                    changed.push(format!("created {}", link.display()));
                }
            }
            continue;
        }
        match kind {
            Some(Kind::Symlink) if data.readlink(name)?.as_deref() == Some(Path::new(target)) => {
                continue;
            }
            Some(Kind::Dir) => {
                // Empty (check() refused a non-empty one): the seed's playbook 02 made the same swap.
                data.remove_dir(name)?;
                data.replace_symlink(Path::new(target), name)?;
            }
            _ => data.replace_symlink(Path::new(target), name)?,
        }
        changed.push(format!("linked {} -> {target}", link.display()));
    }
    // The model-paths file lived here before it moved to the unit's own directory under state/.
    if data.kind("extra_model_paths.yaml")? == Some(Kind::File) {
        data.remove_file("extra_model_paths.yaml")?;
    }
    Ok(changed)
}

/// Opens `data/<name>` for one of root's own directories, which [`apply`] made.
fn existing_root_dir(host: &Host, name: &str) -> Result<Dir> {
    let data = Dir::open_root_owned(&host.layout.install)?
        .open_dir("data")?
        .context("data/ is missing; run `comfyctl setup`")?;
    data.require_root_owned()?;
    let d = data
        .open_dir(name)?
        .with_context(|| format!("data/{name} is missing; run `comfyctl setup`"))?;
    d.require_root_owned()?;
    Ok(d)
}

/// Copies the release's seed (a file or a tree, read beneath the release without following a
/// link) to `name` in `dest`, every copy the service's. Links and special files in a seed are
/// skipped.
fn copy_seed(
    from: &Dir,
    seed: &str,
    dest: &Dir,
    name: &str,
    svc: Owner,
    limit: u64,
) -> Result<bool> {
    match from.kind(seed)? {
        Some(Kind::Dir) => {
            let src = from.open_dir(seed)?.context("seed vanished")?;
            let (d, created) = dest.ensure_dir(name, svc, SERVICE_DIR_MODE)?;
            if !created {
                return Ok(false);
            }
            for n in src.names()? {
                copy_seed(&src, &n, &d, &n, svc, limit)?;
            }
            Ok(true)
        }
        Some(Kind::File) => match from.open_file(seed, limit, None)? {
            Some((f, size)) => Ok(dest
                .copy_new_file(&f, size, name, svc, SERVICE_FILE_MODE)?
                .is_some()),
            None => Ok(false),
        },
        _ => Ok(false),
    }
}

/// The node state release `dir` writes to (its manifest's `state`), below `data/node-state`:
/// directories created, files seeded from the release's copy the first time, all owned by the
/// service user and group (0770/0660). What is already there is kept as it is: state outlives
/// releases, rollbacks, gc and nuke. Returns what it created.
pub fn node_state(host: &Host, dir: &Path, m: &bundle::Manifest) -> Result<Vec<String>> {
    let mut created = Vec::new();
    if m.state.is_empty() {
        return Ok(created);
    }
    let svc = accounts::service(host)?;
    let top = existing_root_dir(host, bundle::STATE_DIR)?;
    let release = Dir::open_root_owned(dir)?;
    for st in &m.state {
        let parts = crate::beneath::components(&st.target)?;
        let Some((leaf, parents)) = parts.split_last() else {
            continue;
        };
        // `<node>` itself is made by root in root's own node-state/; below it the service owns
        // every directory, so each step is opened without following links.
        let (parent, _) = top.ensure_dirs(&parents.join("/"), svc, SERVICE_DIR_MODE)?;
        if parent.kind(leaf)?.is_some() {
            continue;
        }
        let made = match &st.seed {
            Some(seed) => {
                let sp = crate::beneath::components(seed)?;
                let Some((sleaf, sdirs)) = sp.split_last() else {
                    continue;
                };
                let Some(from) = release.open_dir(&sdirs.join("/"))? else {
                    continue;
                };
                copy_seed(&from, sleaf, &parent, leaf, svc, m.total_bytes())?
            }
            None if st.dir => parent.ensure_dir(leaf, svc, SERVICE_DIR_MODE)?.1,
            None => false,
        };
        if made {
            created.push(format!("node state {}", parent.path().join(leaf).display()));
        }
    }
    Ok(created)
}

/// ComfyUI-Manager on an immutable release: unless the operator configured it already, its
/// settings (`data/user/default/ComfyUI-Manager/config.ini`) start at `security_level = strong`,
/// which makes it refuse every install, update and uninstall with a message, and
/// `network_mode = offline`, so a host without GitHub does not wait on it at startup. Written
/// beneath `data/user` (which the service and the group can write) without following a link.
pub fn manager_config(host: &Host, m: &bundle::Manifest) -> Result<Option<String>> {
    if !comfyui::has_manager(&m.provenance.custom_nodes) {
        return Ok(None);
    }
    let (dir_rel, file) = comfyui::MANAGER_CONFIG_PATH
        .rsplit_once('/')
        .context("the Manager's config path has a directory")?;
    let user = Dir::open_root_owned(&host.layout.install)?
        .open_dir("data/user")?
        .context("data/user is missing; run `comfyctl setup`")?;
    if let Some(d) = user.open_dir(dir_rel)? {
        if d.kind(file)?.is_some() {
            return Ok(None);
        }
    }
    let svc = accounts::service(host)?;
    let (d, _) = user.ensure_dirs(dir_rel, svc, SERVICE_DIR_MODE)?;
    if !d.create_file(
        file,
        comfyui::MANAGER_CONFIG.as_bytes(),
        svc,
        SERVICE_FILE_MODE,
    )? {
        return Ok(None);
    }
    Ok(Some(format!("wrote {}", d.path().join(file).display())))
}

/// The database release `id` runs on, and the release whose copy it starts from.
#[derive(Debug, Clone)]
pub struct DatabasePlan {
    pub path: PathBuf,
    id: String,
    /// The previous release's database folder, checked before the unit stops; copied after.
    copy_from: Option<String>,
}

/// Plans the database of release `id` before anything stops: its folder exists already (not
/// its first activation), or it starts as a copy of `from`'s, whose files must be regular files
/// of the service's, each under `[data] max_database_bytes` (checked here and again when copied).
pub fn plan_database(host: &Host, id: &str, from: Option<&str>) -> Result<DatabasePlan> {
    let db = existing_root_dir(host, "db")?;
    remove_partials(&db)?;
    let path = db.path().join(id).join("comfyui.db");
    let plan = |copy_from| DatabasePlan {
        path: path.clone(),
        id: id.to_owned(),
        copy_from,
    };
    match db.kind(id)? {
        Some(Kind::Dir) => return Ok(plan(None)),
        Some(k) => {
            return refuse(format!(
                "{} is not a directory ({k:?}); move it away, comfyctl makes the release's database folder there",
                db.path().join(id).display()
            ))
        }
        None => {}
    }
    let Some(prev) = from.filter(|p| *p != id) else {
        return Ok(plan(None));
    };
    let Some(src) = db.open_dir(prev)? else {
        return Ok(plan(None));
    };
    let svc = accounts::service(host)?;
    for f in DATABASE_FILES {
        src.open_file(f, host.cfg.data.max_database_bytes, Some(svc.uid))
            .with_context(|| format!("the database of {}", support::short_id(prev)))?;
    }
    Ok(plan(Some(prev.to_owned())))
}

/// Makes the planned database folder: a copy of the previous release's files (made while the
/// service is stopped, WAL files included) into a folder only root can enter, handed to the
/// service and renamed into place once complete, so a kill never leaves a half copy that a
/// later start would take for the database.
pub fn make_database(host: &Host, plan: &DatabasePlan) -> Result<()> {
    let db = existing_root_dir(host, "db")?;
    if db.kind(&plan.id)?.is_some() {
        return Ok(());
    }
    let svc = accounts::service(host)?;
    let partial = format!(".partial-{}-{}", plan.id, std::process::id());
    let (new, _) = db.ensure_dir(&partial, Owner::ROOT, 0o700)?;
    if let Some(prev) = &plan.copy_from {
        if let Some(src) = db.open_dir(prev)? {
            for f in DATABASE_FILES {
                let Some((file, size)) =
                    src.open_file(f, host.cfg.data.max_database_bytes, Some(svc.uid))?
                else {
                    continue;
                };
                new.copy_new_file(&file, size, f, svc, SERVICE_FILE_MODE)?;
            }
        }
    }
    // The service's own: ComfyUI creates the database with the unit's UMask (0002), so the folder
    // is what keeps other users out.
    new.set_owner(svc, SERVICE_DIR_MODE)?;
    db.rename_in(&partial, &plan.id)
}

/// Copies a killed activation left: root's own `.partial-<id>-<pid>` folders (0700, nobody else
/// could enter them) holding only database files. Anything else with such a name is left alone,
/// with a warning: it is not root's to delete.
fn remove_partials(db: &Dir) -> Result<()> {
    for name in db.names()? {
        let Some(rest) = name.strip_prefix(".partial-") else {
            continue;
        };
        let ours = rest.split_once('-').is_some_and(|(id, pid)| {
            id.len() == 64
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
        });
        let d = match db.open_dir(&name) {
            Ok(Some(d)) if ours => d,
            _ => {
                tracing::warn!(
                    "leaving {} alone: not a copy comfyctl made",
                    db.path().join(&name).display()
                );
                continue;
            }
        };
        let (o, mode) = d.owner_mode()?;
        let names = d.names()?;
        if o.uid != 0
            || mode != 0o700
            || names.iter().any(|n| !DATABASE_FILES.contains(&n.as_str()))
        {
            tracing::warn!(
                "leaving {} alone: not a copy comfyctl made",
                d.path().display()
            );
            continue;
        }
        for f in names {
            d.remove_file(&f)?;
        }
        db.remove_dir(&name)?;
    }
    Ok(())
}

/// Whether the access group exists (doctor).
pub fn group_ok(host: &Host) -> bool {
    accounts::group_exists(host, &host.cfg.access.group)
}
