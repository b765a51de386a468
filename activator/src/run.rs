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
                drain: drain_opts(&host, a.drain),
            };
            emit(json, &activate::activate(&host, &a.source, &opts)?)?;
        }
        Command::Diff(a) => emit(
            json,
            &crate::diff::diff(&host, a.source.as_deref(), a.from.as_deref())?,
        )?,
        Command::Rollback(a) => emit(
            json,
            &rollback::rollback(
                &host,
                a.to.as_deref(),
                !a.no_service,
                &drain_opts(&host, a.drain),
            )?,
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
            let (action, d) = match c {
                S::Install(d) => (Action::Install, d),
                S::Restart(d) => (Action::Restart, d),
                S::Pause(d) => (Action::Pause, d),
                S::Start => (Action::Start, Default::default()),
                S::Remove(d) => (Action::Remove, d),
            };
            emit(
                json,
                &crate::lifecycle::service(&host, action, &drain_opts(&host, d))?,
            )?;
        }
        Command::Nuke(a) => {
            if !a.yes {
                return crate::host::refuse("nuke removes every release and the service; pass --yes (data directories are kept)");
            }
            let _lock = host.lock()?;
            emit(
                json,
                &crate::lifecycle::nuke(&host, &drain_opts(&host, a.drain))?,
            )?;
        }
        Command::Doctor => return Ok(crate::doctor::doctor(&host).print(json)),
        Command::Models(a) => {
            let r = crate::models::models(&host, a.source.as_deref(), a.fetch)?;
            emit(json, &r)?;
            return Ok(if r.problems().is_empty() { 0 } else { 1 });
        }
        Command::Gc => {
            let _lock = host.lock()?;
            let mut state = activate::load_state(&host)?;
            emit(json, &gc::gc(&host, &mut state, true)?)?;
        }
    }
    Ok(0)
}

fn drain_opts(host: &Host, a: crate::cli::DrainArgs) -> crate::drain::Options {
    crate::drain::Options::for_host(host, a.no_drain, a.drain_timeout)
}

/// 2 when the input or request was refused, 1 when something failed.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    support::exit_code(e, &crate::host::is_refusal)
}

/// A failed command's JSON document: the error's text, whether the input was refused (exit 2) or
/// something failed (exit 1), and the exit code, under the `--json` contract's version.
pub fn versioned_error(e: &anyhow::Error, code: u8) -> serde_json::Value {
    crate::print::versioned(serde_json::json!({
        "error": format!("{e:#}"),
        "error_kind": if code == 2 { "refused" } else { "failed" },
        "exit_code": code,
    }))
}
