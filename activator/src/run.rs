//! Dispatch and output: human lines by default, one JSON object with `--json`.

use crate::cli::{Cli, Command};
use crate::host::Host;
use crate::{activate, gc, inventory, rollback};
use anyhow::Result;

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_plan(p: &crate::diff::Plan) {
    use support::diff::human_bytes;
    use support::term_safe as t;
    println!(
        "dry run: {} {} (sequence {}, {}): signature, target, sequence, host libraries{}, {}free space pass",
        t(&p.name),
        t(&p.version),
        p.sequence,
        short(&p.id),
        if p.host_libraries > 0 {
            format!(" ({} found)", p.host_libraries)
        } else {
            String::new()
        },
        if p.data_checked { "data targets, " } else { "" }
    );
    match p.action {
        "none" => println!("it is already current: an activation would change nothing"),
        "switch" => {
            println!("it is installed and intact: an activation would switch to it and restart")
        }
        _ => println!(
            "an activation would write {} files ({}) and reuse {} files ({}) from the store",
            p.files_to_write,
            human_bytes(p.bytes_to_write),
            p.files_reused,
            human_bytes(p.bytes_reused)
        ),
    }
    if !p.changed_objects.is_empty() {
        println!(
            "{} store object(s) changed since they were stored; the activation writes them afresh",
            p.changed_objects.len()
        );
    }
    match &p.diff {
        Some(d) => print!("\n{}", d.render()),
        None => println!("no current release: nothing to compare with"),
    }
    println!("nothing was changed");
}

/// Runs one parsed command line; returns the exit code for outcomes that are not errors.
pub fn run(cli: Cli) -> Result<u8> {
    if let Command::Setup(a) = &cli.command {
        let path = cli
            .config
            .clone()
            .unwrap_or_else(|| cli.root.join(crate::config::CONFIG_PATH));
        if let (false, Some(t)) = (path.exists(), &a.target) {
            if let Some(p) = path.parent() {
                fs_err::create_dir_all(p)?;
            }
            fs_err::write(&path, format!("target = \"{t}\"\n"))?;
        }
    }
    let host = Host::open(&cli.root, cli.config.as_deref())?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    match cli.command {
        Command::Activate(a) if a.dry_run => {
            let p = crate::diff::dry_run(&host, &a.source, a.allow_downgrade, !a.no_service)?;
            if cli.json {
                print_json(&p)?;
            } else {
                print_plan(&p);
            }
        }
        Command::Diff(a) => {
            let d = crate::diff::diff(&host, a.source.as_deref(), a.from.as_deref())?;
            if cli.json {
                print_json(&d)?;
            } else {
                print!("{}", d.render());
            }
        }
        Command::Activate(a) => {
            let opts = activate::ActivateOptions {
                allow_downgrade: a.allow_downgrade,
                jobs,
                service: !a.no_service,
            };
            let r = activate::activate(&host, &a.source, &opts)?;
            if cli.json {
                print_json(&r)?;
            } else if !r.changed {
                println!(
                    "{} {} ({}) is already current; nothing to do",
                    support::term_safe(&r.name),
                    support::term_safe(&r.version),
                    short(&r.id)
                );
            } else {
                if r.unpacked {
                    println!(
                        "unpacked {} files ({} bytes), reused {} files ({} bytes) from the store, read {} of {} frames",
                        r.files_written, r.bytes_written, r.files_reused, r.bytes_reused, r.frames_read, r.frames_total
                    );
                } else {
                    println!("release already installed and intact; not unpacked again");
                }
                if !r.quarantined_objects.is_empty() {
                    println!(
                        "{} store object(s) had been written since they were stored: moved to store/.quarantine, their files written from this bundle",
                        r.quarantined_objects.len()
                    );
                }
                if let Some(h) = &r.health {
                    println!(
                        "service restarted and healthy: device {}, {} node classes ({:.1}s)",
                        h.device_type.as_deref().unwrap_or("?"),
                        h.node_classes,
                        h.seconds
                    );
                }
                match &r.fetch {
                    Some(f) if f.delta.is_some() => {
                        let total = f.delta.unwrap_or(1).max(1);
                        println!(
                            "fetched {} of {} bytes ({:.1}%): only the frames this host lacked",
                            f.downloaded,
                            total,
                            100.0 * f.downloaded as f64 / total as f64
                        );
                    }
                    Some(f) => println!(
                        "downloaded {} bytes (resumed from {})",
                        f.downloaded, f.resumed_from
                    ),
                    None => {}
                }
                println!(
                    "activated {} {} ({}), previous {}, in {:.2}s",
                    r.name,
                    r.version,
                    short(&r.id),
                    r.previous.as_deref().map_or("none", short),
                    r.seconds
                );
            }
        }
        Command::Rollback(a) => {
            let r = rollback::rollback(&host, a.to.as_deref(), !a.no_service)?;
            if cli.json {
                print_json(&r)?;
            } else if r.changed {
                println!(
                    "rolled back to {} from {} (flip {:.2} ms)",
                    short(&r.to),
                    r.from.as_deref().map_or("none", short),
                    r.flip_ms
                );
            } else {
                println!("{} is already current", short(&r.to));
            }
        }
        Command::Releases => {
            let rows = inventory::releases(&host)?;
            if cli.json {
                print_json(&rows)?;
            } else {
                for r in rows {
                    let status = r
                        .status
                        .map_or("unknown".to_owned(), |s| format!("{s:?}").to_lowercase());
                    println!(
                        "{} {} {:<24} {:<12} seq {:<5} {}",
                        if r.current { "*" } else { " " },
                        short(&r.id),
                        support::term_safe(&r.name),
                        support::term_safe(&r.version),
                        r.sequence,
                        status
                    );
                }
            }
        }
        Command::Status => {
            let s = inventory::status(&host)?;
            if cli.json {
                print_json(&s)?;
            } else {
                match &s.current {
                    Some(c) => println!(
                        "current:   {} {} ({}), sequence {}",
                        support::term_safe(&c.name),
                        support::term_safe(&c.version),
                        short(&c.id),
                        c.sequence
                    ),
                    None => println!("current:   none"),
                }
                println!(
                    "rollback:  {}",
                    s.previous_good.as_deref().map_or("none", short)
                );
                println!(
                    "releases:  {} installed, highest sequence {}",
                    s.releases, s.highest_sequence
                );
                println!(
                    "store:     {} objects, {} bytes",
                    s.store_objects, s.store_bytes
                );
                println!("target:    {}", s.target);
            }
        }
        Command::Verify(a) => {
            let r = inventory::verify(&host, a.id.as_deref())?;
            if cli.json {
                print_json(&r)?;
            } else if r.ok {
                println!("ok: {} matches its signed manifest", short(&r.id));
            } else {
                for p in &r.problems {
                    println!(
                        "{}: {}",
                        support::term_safe(&p.path),
                        support::term_safe(&p.problem)
                    );
                }
                println!("{} problem(s) in {}", r.problems.len(), short(&r.id));
            }
            return Ok(if r.ok { 0 } else { 2 });
        }
        Command::Health(a) => {
            let Some(cur) = host.current() else {
                return crate::host::refuse("no current release to check");
            };
            let m = crate::release::manifest(&host.layout.release(&cur))?;
            let port = a.port.unwrap_or(host.cfg.service.port);
            let h = crate::health::check(
                port,
                &m,
                a.device
                    .as_deref()
                    .or((!host.cfg.health.device_type.is_empty())
                        .then_some(host.cfg.health.device_type.as_str())),
                std::time::Duration::from_secs(a.timeout),
                host.cfg.health.missing_models == crate::config::MissingModels::Fail,
                &|| None,
            )?;
            if cli.json {
                print_json(&h)?;
            } else if h.healthy {
                println!(
                    "healthy: {} {} ({}) on port {}, device {}, {} node classes, all {} expected custom-node classes present",
                    m.name,
                    m.version,
                    short(&cur),
                    port,
                    h.device_type.as_deref().unwrap_or("?"),
                    h.node_classes,
                    m.expected_nodes.values().map(Vec::len).sum::<usize>()
                );
                if !m.workflows.is_empty() {
                    println!(
                        "workflows: {} of {} fit the running app, {} run on its device",
                        h.workflows_checked,
                        m.workflows.len(),
                        h.workflows_run
                    );
                }
                for x in &h.missing_models {
                    println!("missing model: {}", support::term_safe(x));
                }
            } else {
                println!("unhealthy: {}", h.reason.as_deref().unwrap_or("unknown"));
            }
            return Ok(if h.healthy { 0 } else { 1 });
        }
        Command::Setup(a) => report(cli.json, &crate::lifecycle::setup(&host, a.key.as_deref())?)?,
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
            report(cli.json, &crate::lifecycle::service(&host, action)?)?;
        }
        Command::Nuke(a) => {
            if !a.yes {
                return crate::host::refuse("nuke removes every release and the service; pass --yes (data directories are kept)");
            }
            let _lock = host.lock()?;
            report(cli.json, &crate::lifecycle::nuke(&host)?)?;
        }
        Command::Doctor => return Ok(crate::doctor::doctor(&host).print(cli.json)),
        Command::Gc => {
            let _lock = host.lock()?;
            let mut state = activate::load_state(&host)?;
            let r = gc::gc(&host, &mut state, true)?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!(
                    "removed {} releases, {} store objects ({} bytes), {} downloads ({} bytes)",
                    r.removed_releases.len(),
                    r.removed_objects,
                    r.freed_bytes,
                    r.removed_downloads,
                    r.download_bytes
                );
            }
        }
    }
    Ok(0)
}

fn report(json: bool, d: &crate::lifecycle::Done) -> Result<()> {
    if json {
        return print_json(d);
    }
    if d.actions.is_empty() {
        println!("nothing to do");
    }
    for a in &d.actions {
        println!("{a}");
    }
    Ok(())
}

/// 2 when the input or request was refused, 1 when something failed.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    support::exit_code(e, &crate::host::is_refusal)
}
