//! The command line of `comfyctl`: one options struct per verb, doc comments as help text.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Activate, roll back and inspect immutable ComfyUI releases on this host.
#[derive(Debug, Parser)]
#[command(name = "comfyctl", version, about)]
pub struct Cli {
    /// Prefix for every host path (a scratch root for tests and demos).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// Host config file (default: ROOT/etc/comfyui/comfyctl.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify a bundle (file or http(s) URL), unpack it and make it current.
    Activate(ActivateArgs),
    /// Return to the previous good release (or --to ID) without unpacking anything.
    Rollback(RollbackArgs),
    /// List installed releases.
    Releases,
    /// What a release changes against `current`: ComfyUI, custom nodes, node classes, packages,
    /// launch flags, files and bytes (and for a URL, what a delta fetch would download).
    Diff(DiffArgs),
    /// Show the current release, the rollback target and store usage.
    Status,
    /// Re-hash an installed release (default: current) against its signed manifest.
    Verify(VerifyArgs),
    /// Remove old releases (keeping current, previous and the last good) and unused store objects.
    Gc,
    /// Check the running app on loopback against the current release's manifest (device type,
    /// expected node classes). Exit 0 healthy, 1 not.
    Health(HealthArgs),
    /// Prepare the host: access group and users, service user, data directories, a trusted key.
    Setup(SetupArgs),
    /// Manage the systemd unit (the seed's playbooks 04-08).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Remove the unit, every release, the store, the state and the group; keep all data (playbook 99).
    Nuke(NukeArgs),
    /// The model files a release declares (default: current; or an id, a bundle, a URL) on this
    /// host's model store; `--fetch` downloads the missing ones. Exit 1 while any is missing.
    Models(ModelsArgs),
    /// Check this host: driver and GPU, the unit, the port, the current release, data links, keys, disk.
    Doctor,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// An installed release id (or prefix), a .bundle file or an http(s) URL; default: current.
    pub source: Option<String>,
    /// Download the missing ones (resumable; each checked by size and sha256 before it is put in
    /// place; a file of the same name is never replaced).
    #[arg(long)]
    pub fetch: bool,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// A release public key to trust (installed into the keys directory).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Write a host config for this target if none exists yet.
    #[arg(long)]
    pub target: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the unit for the current release, enable and start it.
    Install(DrainArgs),
    /// Restart the unit with the host config re-applied (unit, flags, data links), then check health.
    Restart(DrainArgs),
    /// Stop and disable it (maintenance).
    Pause(DrainArgs),
    /// Enable and start it again.
    Start,
    /// Stop, disable and remove it.
    Remove(DrainArgs),
}

/// Every verb that stops the unit first waits for the app's queue to drain (`[service] drain`,
/// `drain_timeout_secs`).
#[derive(Debug, Args, Default, Clone, Copy)]
pub struct DrainArgs {
    /// Stop the unit without waiting for running or pending jobs.
    #[arg(long)]
    pub no_drain: bool,
    /// Wait at most this many seconds for the app's jobs (instead of the host config's).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct NukeArgs {
    /// Required: this removes every release.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub drain: DrainArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Port ComfyUI listens on (default: the host config's `[service] port`).
    #[arg(long)]
    pub port: Option<u16>,
    /// Seconds to wait for it to answer.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Expected device type instead of the manifest's (`cpu`, `cuda`).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// A .bundle file or an http(s) URL.
    pub source: String,
    /// Accept a release whose sequence is below the highest this host has seen.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Do not restart or health-check the service.
    #[arg(long)]
    pub no_service: bool,
    #[command(flatten)]
    pub drain: DrainArgs,
    /// Check everything that needs no change (signature, target, sequence, host libraries, data
    /// targets, free space, the store's share) and print the plan and the diff; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// An installed release id (or prefix), a .bundle file or an http(s) URL. Default: `current`
    /// against the release a rollback would return to.
    pub source: Option<String>,
    /// Compare against this installed release instead of `current`.
    #[arg(long)]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Release id (or a unique prefix of at least 6 characters).
    #[arg(long)]
    pub to: Option<String>,
    /// Do not restart or health-check the service.
    #[arg(long)]
    pub no_service: bool,
    #[command(flatten)]
    pub drain: DrainArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Release id or prefix; default: current.
    pub id: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
