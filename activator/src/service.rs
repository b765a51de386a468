//! The systemd unit: rendered from the host config (the release's flags go in an environment file,
//! so switching releases does not change the unit), installed with `daemon-reload` only when it
//! changed, and driven through `systemctl`. Hardening keeps releases read-only.

use crate::beneath::{Dir, Owner};
use crate::cmd;
use crate::host::Host;
use anyhow::{bail, Result};
use bundle::Manifest;
use std::path::Path;

/// The unit's inputs, in [`crate::config::Layout::unit_inputs`]: the environment file the unit
/// reads (which release, and its full argument list) and the model-paths file ComfyUI reads.
const ENV_FILE: &str = "service.env";
const MODEL_PATHS: &str = "extra_model_paths.yaml";
/// The next release's inputs are written under this suffix before the unit stops, and renamed
/// into place once it has.
const NEXT: &str = ".next";

pub fn env_path(host: &Host) -> std::path::PathBuf {
    host.layout.unit_inputs().join(ENV_FILE)
}

pub fn model_paths_path(host: &Host) -> std::path::PathBuf {
    host.layout.unit_inputs().join(MODEL_PATHS)
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
Environment=HOME={data}/home\n\
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
        supplementary = if crate::accounts::group_exists(host, &host.cfg.access.group) {
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
    let out = comfyui::run_args(
        &m.launch,
        &s.listen,
        s.port,
        &host.layout.data(),
        &model_paths_path(host),
        db,
    );
    if let Some(bad) = out.iter().find(|a| a.chars().any(char::is_whitespace)) {
        bail!("launch argument {bad:?} contains whitespace, which the unit's environment file cannot carry");
    }
    Ok(out.join(" "))
}

/// The directory of the unit's inputs: root's alone (under `state/`), readable by the service's
/// group; one an older layout left otherwise is taken back on its descriptor.
fn inputs_dir(host: &Host) -> Result<Dir> {
    let install = Dir::open_root_owned(&host.layout.install)?;
    let (state, _) = install.ensure_dir("state", Owner::ROOT, 0o755)?;
    state.require_root_owned()?;
    let owner = crate::accounts::root_for_service(host)?;
    let (dir, created) = state.ensure_dir("unit", owner, 0o750)?;
    if !created && dir.owner_mode()? != (owner, 0o750) {
        dir.set_owner(owner, 0o750)?;
    }
    Ok(dir)
}

/// Writes release `id`'s environment file and model-paths file beside the ones in use, under
/// [`NEXT`] names: root's, readable by the service's group (ComfyUI dies on a model-paths file it
/// cannot read), by nobody else. Done before the unit stops, so a failure here changes nothing.
pub fn stage_inputs(host: &Host, m: &Manifest, id: &str, db: &Path) -> Result<()> {
    let dir = inputs_dir(host)?;
    for name in [MODEL_PATHS, ENV_FILE] {
        if dir.kind(name)? == Some(crate::beneath::Kind::Dir) {
            return crate::host::refuse(format!(
                "{} is a directory where comfyctl keeps a file; remove it (nothing was changed)",
                dir.path().join(name).display()
            ));
        }
    }
    let owner = crate::accounts::root_for_service(host)?;
    let models = host.layout.data().join(comfyui::MODELS_DIR);
    let text = format!(
        "COMFYUI_RELEASE={id}\nCOMFYUI_ARGS={}\n",
        args(host, m, db)?
    );
    dir.replace_file(
        &format!("{MODEL_PATHS}{NEXT}"),
        comfyui::model_paths_yaml(&models).as_bytes(),
        owner,
        0o640,
    )?;
    dir.replace_file(&format!("{ENV_FILE}{NEXT}"), text.as_bytes(), owner, 0o640)
}

/// Puts the inputs [`stage_inputs`] wrote in place (two renames in root's own directory).
pub fn commit_inputs(host: &Host) -> Result<()> {
    let dir = inputs_dir(host)?;
    for name in [MODEL_PATHS, ENV_FILE] {
        dir.rename_in(&format!("{name}{NEXT}"), name)?;
    }
    // Where an older comfyctl kept the environment file (root's own state/): gone once moved.
    if let Some(state) = Dir::open_root_owned(&host.layout.install)?.open_dir("state")? {
        if state.kind(ENV_FILE)? == Some(crate::beneath::Kind::File) {
            state.remove_file(ENV_FILE)?;
        }
    }
    Ok(())
}

/// The one way comfyctl drives systemd: through the host's [`crate::host::System`], so a
/// `--root` tree never starts, stops or reloads this machine's units.
pub fn systemctl(host: &Host, args: &[&str]) -> Result<cmd::Output> {
    host.system.systemctl(args)
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
    host.system.journal(&unit_name(host), lines)
}

pub fn unit_name(host: &Host) -> String {
    format!("{}.service", host.cfg.service.name)
}
