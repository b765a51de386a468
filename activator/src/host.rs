//! A host as comfyctl sees it: its config, its layout, the machine it runs on ([`System`]), and
//! the few facts every verb reads (where `current` points, the installed releases).

use crate::cmd;
use crate::config::{HostConfig, Layout, CONFIG_PATH};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Host {
    pub cfg: HostConfig,
    pub layout: Layout,
    /// The machine: this one for `/`, none for a `--root` tree.
    pub system: Box<dyn System>,
}

/// What comfyctl asks of the machine a host tree runs on, the one seam between the two: its
/// service manager, its journal and its account databases. [`Machine`] is this machine (the host
/// is `/`); [`Tree`] a tree given with `--root`, which is not this machine: it never drives this
/// machine's systemd, never reads or changes this machine's accounts, and has no journal.
pub trait System: Send + Sync {
    /// `systemctl ARGS`; a non-zero exit is an error.
    fn systemctl(&self, args: &[&str]) -> Result<cmd::Output>;
    /// The unit's state and its last `lines` journal lines.
    fn journal(&self, unit: &str, lines: usize) -> String;
    /// The text of the account database `etc/<name>` (`passwd` or `group`); `None` where it
    /// cannot be read.
    fn accounts_db(&self, name: &str) -> Option<String>;
    /// Runs a tool that changes users and groups (`groupadd`, `useradd`, `usermod`, ...).
    fn change_accounts(&self, cmdline: &mut Command) -> Result<()>;
    /// True for this machine: units can be driven and accounts created.
    fn is_this_machine(&self) -> bool;
}

/// This machine, for a host whose tree is `/`.
pub struct Machine;

impl System for Machine {
    fn systemctl(&self, args: &[&str]) -> Result<cmd::Output> {
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

    fn journal(&self, unit: &str, lines: usize) -> String {
        let n = lines.to_string();
        let run = |c: &mut Command| match cmd::output(c, Duration::from_secs(30)) {
            Ok(o) => o.stdout,
            Err(e) => format!("({e:#})\n"),
        };
        let state = run(Command::new("systemctl").args([
            "show",
            "-p",
            "ActiveState,SubState,Result,ExecMainStatus",
            unit,
        ]));
        let log =
            run(Command::new("journalctl").args(["-u", unit, "-n", &n, "--no-pager", "--all"]));
        format!("{state}{log}")
    }

    fn accounts_db(&self, name: &str) -> Option<String> {
        fs_err::read_to_string(Path::new("/etc").join(name)).ok()
    }

    fn change_accounts(&self, cmdline: &mut Command) -> Result<()> {
        let o = cmd::output(cmdline, Duration::from_secs(60))?;
        if !o.status.success() {
            bail!(
                "{:?} failed: {}",
                cmdline.get_program(),
                cmd::last_kib(&o.stderr)
            );
        }
        Ok(())
    }

    fn is_this_machine(&self) -> bool {
        true
    }
}

/// A host tree given with `--root` (a test, a chroot being prepared): not this machine.
pub struct Tree {
    pub root: PathBuf,
}

/// What a tree without account databases knows.
const ROOT_ONLY_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const ROOT_ONLY_GROUP: &str = "root:x:0:\n";

impl System for Tree {
    fn systemctl(&self, args: &[&str]) -> Result<cmd::Output> {
        bail!(
            "not running `systemctl {}`: the host tree is {} (--root), not this machine; use \
             --no-service there",
            args.join(" "),
            self.root.display()
        )
    }

    fn journal(&self, _unit: &str, _lines: usize) -> String {
        "(no journal: the host tree is given with --root)\n".into()
    }

    /// The tree's own database; where it has none, root alone (never this machine's ids).
    fn accounts_db(&self, name: &str) -> Option<String> {
        match fs_err::read_to_string(self.root.join("etc").join(name)) {
            Ok(text) => Some(text),
            Err(_) if name == "passwd" => Some(ROOT_ONLY_PASSWD.to_owned()),
            Err(_) => Some(ROOT_ONLY_GROUP.to_owned()),
        }
    }

    fn change_accounts(&self, cmdline: &mut Command) -> Result<()> {
        let args: Vec<String> = cmdline
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        bail!(
            "not running `{} {}`: the host tree is {} (--root), and users and groups are this \
             machine's; create them where the tree will run, or point [service] and [access] at \
             existing ones",
            cmdline.get_program().to_string_lossy(),
            args.join(" "),
            self.root.display()
        )
    }

    fn is_this_machine(&self) -> bool {
        false
    }
}

/// An error that means the input or the request was refused (exit code 2), not that something broke.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// An error this program refuses with (exit 2), for [`support::exit_code`].
pub fn is_refusal(c: &(dyn std::error::Error + 'static)) -> bool {
    c.downcast_ref::<Refusal>().is_some()
}

/// Shorthand for returning a [`Refusal`].
pub fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(Refusal(msg.into()).into())
}

impl Host {
    /// The trusted release keys (`keys/*.pub`, less `keys/revoked/`); none is a refusal that says
    /// what to install.
    pub fn trusted_keys(&self) -> Result<keys::TrustedKeys> {
        keys::TrustedKeys::load_dir(&self.layout.keys).or_else(|e| {
            refuse(format!(
                "{e}: install the release public key (comfy-build keygen's .pub) there"
            ))
        })
    }

    /// True when the host tree is this machine's own `/` (no `--root`).
    pub fn is_real_root(&self) -> bool {
        self.system.is_this_machine()
    }

    pub fn open(root: &Path, config: Option<&Path>) -> Result<Self> {
        let path = config.map_or_else(|| root.join(CONFIG_PATH), Path::to_owned);
        let cfg = HostConfig::load(&path)?;
        let layout = Layout::new(root, &cfg);
        let system: Box<dyn System> = if root == Path::new("/") {
            Box::new(Machine)
        } else {
            Box::new(Tree {
                root: root.to_owned(),
            })
        };
        Ok(Self {
            cfg,
            layout,
            system,
        })
    }

    /// Takes the activation lock (creating the layout first), waiting as long as the config says.
    pub fn lock(&self) -> Result<crate::lock::Lock> {
        self.layout.ensure()?;
        crate::lock::acquire(
            &self.layout.state(),
            std::time::Duration::from_secs(self.cfg.lock_wait_secs),
        )
    }

    /// The release id `current` points at, if any.
    pub fn current(&self) -> Option<String> {
        let t = fs_err::read_link(self.layout.current()).ok()?;
        t.file_name().and_then(|n| n.to_str()).map(str::to_owned)
    }

    /// Installed release directories (staging excluded), by id.
    pub fn installed(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let dir = self.layout.releases();
        if !dir.exists() {
            return Ok(out);
        }
        for e in fs_err::read_dir(&dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with('.') {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a release: first renamed out of sight (`.trash-*`, atomic), then deleted, so a kill
    /// mid-way never leaves a half-deleted directory that looks like a release. Under the lock only.
    pub fn discard(&self, id: &str) -> Result<()> {
        let dir = self.layout.release(id);
        let trash = self
            .layout
            .releases()
            .join(format!(".trash-{id}-{}", std::process::id()));
        fs_err::rename(&dir, &trash)?;
        crate::atomic::fsync_dir(&self.layout.releases())?;
        bundle::make_writable_and_remove(&trash)
            .with_context(|| format!("removing {}", trash.display()))
    }

    /// Removes unpacks and removals that a killed comfyctl left behind. Only called under the lock.
    pub fn clean_staging(&self) -> Result<Vec<PathBuf>> {
        let dir = self.layout.releases();
        // Collect first: removing entries while reading a directory may skip some.
        let mut stale = Vec::new();
        for e in fs_err::read_dir(&dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with(".staging-") || name.starts_with(".trash-") {
                stale.push(p);
            }
        }
        // Each activation stages under a name of its own, so a leftover that cannot be removed
        // (a path too deep for the tools, a busy mount) never blocks the next one: it is named.
        let mut removed = Vec::new();
        for p in stale {
            match bundle::make_writable_and_remove(&p) {
                Ok(()) => removed.push(p),
                Err(e) => tracing::warn!(
                    "cannot remove stale {} ({e:#}); remove it by hand, it blocks nothing",
                    p.display()
                ),
            }
        }
        Ok(removed)
    }

    /// Resolves a full id or a unique prefix of one (at least 6 characters).
    pub fn resolve_id(&self, prefix: &str) -> Result<String> {
        let all = self.installed()?;
        let hits: Vec<_> = all
            .iter()
            .filter(|id| prefix.len() >= 6 && id.starts_with(prefix))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => refuse(format!(
                "no installed release matches {prefix:?}; see `comfyctl releases`"
            )),
            _ => refuse(format!(
                "{prefix:?} matches several releases; give more of the id"
            )),
        }
    }
}
