//! Dispatch: each command returns a typed report; [`crate::print::emit`] prints it as lines or,
//! with `--json`, as one JSON document.

use crate::cli::{Cli, Command};
use crate::host::Host;
use crate::print::emit;
use crate::{activate, gc, inventory, rollback};
use anyhow::Result;

/// Runs one parsed command line; returns the exit code for outcomes that are not errors.
pub fn run(cli: Cli) -> Result<u8> {
    if let Command::Setup(a) = &cli.command {
        if let Some(t) = &a.target {
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| cli.root.join(crate::config::CONFIG_PATH));
            crate::lifecycle::write_initial_config(&path, t)?;
        }
    }
    let host = Host::open(&cli.root, cli.config.as_deref())?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let json = cli.json;
    match cli.command {
        Command::Activate(a) if a.dry_run => emit(
            json,
            &crate::diff::dry_run(&host, &a.source, a.allow_downgrade, !a.no_service)?,
        )?,
        Command::Activate(a) => {
            let opts = activate::ActivateOptions {
                allow_downgrade: a.allow_downgrade,
                jobs,
                service: !a.no_service,
            };
            emit(json, &activate::activate(&host, &a.source, &opts)?)?;
        }
        Command::Diff(a) => emit(
            json,
            &crate::diff::diff(&host, a.source.as_deref(), a.from.as_deref())?,
        )?,
        Command::Rollback(a) => emit(
            json,
            &rollback::rollback(&host, a.to.as_deref(), !a.no_service)?,
        )?,
        Command::Releases => emit(json, &inventory::releases(&host)?)?,
        Command::Status => emit(json, &inventory::status(&host)?)?,
        Command::Verify(a) => {
            let r = inventory::verify(&host, a.id.as_deref())?;
            emit(json, &r)?;
            return Ok(if r.ok { 0 } else { 2 });
        }
        Command::Health(a) => {
            let r = crate::health::check_current(
                &host,
                a.port,
                a.device.as_deref(),
                std::time::Duration::from_secs(a.timeout),
            )?;
            emit(json, &r)?;
            return Ok(if r.health.healthy { 0 } else { 1 });
        }
        Command::Setup(a) => emit(json, &crate::lifecycle::setup(&host, a.key.as_deref())?)?,
        Command::Service(c) => {
            use crate::cli::ServiceCommand as S;
            use crate::lifecycle::Action;
            let action = match c {
                S::Install => Action::Install,
                S::Restart => Action::Restart,
                S::Pause => Action::Pause,
                S::Start => Action::Start,
                S::Remove => Action::Remove,
            };
            emit(json, &crate::lifecycle::service(&host, action)?)?;
        }
        Command::Nuke(a) => {
            if !a.yes {
                return crate::host::refuse("nuke removes every release and the service; pass --yes (data directories are kept)");
            }
            let _lock = host.lock()?;
            emit(json, &crate::lifecycle::nuke(&host)?)?;
        }
        Command::Doctor => return Ok(crate::doctor::doctor(&host).print(json)),
        Command::Gc => {
            let _lock = host.lock()?;
            let mut state = activate::load_state(&host)?;
            emit(json, &gc::gc(&host, &mut state, true)?)?;
        }
    }
    Ok(0)
}

/// 2 when the input or request was refused, 1 when something failed.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    support::exit_code(e, &crate::host::is_refusal)
}
