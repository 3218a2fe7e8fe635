//! The `switcher` command line: the daemon, and the commands that talk to it over the API
//! socket. Human output by default (rendered in [`render`]), `--json` for scripts.

mod args;
mod exit;
mod fleet;
mod follow;
mod generate;
mod logging;
pub mod render;

use std::{process::ExitCode, time::Duration};

use crate::{
    api::{self, Request},
    config::{Config, Member},
    controller::{Event, StatusView},
    datapath::FlipOutcome,
    deploy::{Deployment, Phase},
    domain::Color,
};
use anyhow::{bail, Context as _, Result};
use clap::Parser as _;

pub use args::MemberList;
use args::{Cli, Cmd, FleetCmd, Until};

/// Fleet flips wait for every host's acknowledgement (and, on failure, for the fleet's
/// rollback): up to twice the configured deadline, at most 10 minutes each.
const FLEET_WAIT: Duration = Duration::from_secs(25 * 60);

/// A pool as one token: `-`, `ADDR:PORT` or `ADDR:PORT,ADDR:PORT*2`.
fn pool_or_dash(m: &[Member]) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the command line; the binary's `main`. Usage errors exit 2 (clap); every other
/// failure with its [`Exit`] code, as JSON on stdout under `--json`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::Exit::Usage.code())
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!("{}", exit::json(&e));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(exit::classify(&e).code())
        }
    }
}

fn print_json_or(
    json: bool,
    v: &serde_json::Value,
    human: impl FnOnce() -> Result<String>,
) -> Result<()> {
    if json {
        println!("{v}");
    } else {
        print!("{}", human()?);
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    logging::init();
    let (socket, json) = (cli.socket, cli.json);
    match cli.cmd {
        Cmd::Daemon {
            config,
            keep_attached,
        } => {
            let cfg = Config::load(&config)?;
            tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(crate::daemon::run(cfg, config, keep_attached))
        }
        Cmd::Check { config } => {
            let cfg = Config::load(&config).map_err(|e| {
                anyhow::Error::from(exit::Outcome {
                    exit: exit::Exit::Refused,
                    message: format!("{e:#}"),
                })
            })?;
            if json {
                let services: Vec<_> = cfg
                    .services
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name, "vip": s.vip, "port": s.port,
                            "protocol": s.protocol, "active": s.active,
                            "blue": pool_or_dash(&s.blue), "green": pool_or_dash(&s.green),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "services": services, "interfaces": cfg.daemon.interfaces })
                );
                return Ok(());
            }
            for s in &cfg.services {
                println!(
                    "{}: {}:{}/{} active={} blue={} green={}",
                    s.name,
                    s.vip,
                    s.port,
                    s.protocol,
                    s.active,
                    pool_or_dash(&s.blue),
                    pool_or_dash(&s.green)
                );
            }
            println!(
                "config ok: {} service(s) on {:?}",
                cfg.services.len(),
                cfg.daemon.interfaces
            );
            Ok(())
        }
        Cmd::Status {
            service,
            watch,
            interval,
        } => loop {
            let v = api::call(
                &socket,
                &Request::Status {
                    service: service.clone(),
                },
            )?;
            if watch && !json {
                println!("--- {}", crate::domain::fmt_time(crate::domain::now_ms()));
            }
            print_json_or(json, &v, || {
                let s: StatusView = serde_json::from_value(v.clone()).context("decoding status")?;
                Ok(render::status(&s))
            })?;
            if !watch {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs_f64(interval));
        },
        Cmd::Deploy {
            service,
            green,
            blue,
            version,
            force,
        } => {
            let (color, members) = match (green, blue) {
                (Some(m), None) => (Color::Green, m.0),
                (None, Some(m)) => (Color::Blue, m.0),
                _ => bail!("give exactly one of --green ADDR:PORT,... or --blue ADDR:PORT,..."),
            };
            let v = api::call(
                &socket,
                &Request::Deploy {
                    service,
                    color,
                    members,
                    version,
                    force,
                },
            )?;
            print_json_or(json, &v, || fleet::or(&v, render::deployment_line))
        }
        Cmd::Promote {
            service,
            wait,
            until,
            timeout,
        } => {
            let req = Request::Promote {
                service: service.clone(),
                wait,
            };
            let v = api::call_with_timeout(
                &socket,
                &req,
                // A fleet promote waits for every host's validation (at most its deadline,
                // at most an hour) and then for the flip's acknowledgements.
                if wait {
                    FLEET_WAIT + Duration::from_secs(3600)
                } else {
                    Duration::from_secs(30)
                },
            );
            let v = match v {
                Ok(v) => v,
                Err(e) if wait => return Err(rejected_or(&socket, &service, e)),
                Err(e) => return Err(e),
            };
            // Waited for: after the flip, the watch window (a fleet promotion: on every host
            // that applied it). Without --wait the fleet answers with its driver, untouched.
            let settled = if !(wait && until == Until::Stable) {
                None
            } else if fleet::is_fleet_reply(&v) {
                let flip: crate::fleet::FleetFlip =
                    serde_json::from_value(v.clone()).context("decoding the promote reply")?;
                follow::fleet(&socket, &flip, Duration::from_secs(timeout))?;
                None
            } else {
                let id = v["id"]
                    .as_u64()
                    .context("the promote reply has no deployment id")?;
                Some(follow::deployment(
                    &socket,
                    &service,
                    id,
                    Duration::from_secs(timeout),
                )?)
            };
            let shown = settled
                .as_ref()
                .map(|d| serde_json::to_value(d).context("encoding the deployment"))
                .transpose()?
                .unwrap_or(v.clone());
            print_json_or(json, &shown, || {
                if fleet::is_fleet_reply(&v) {
                    fleet::flip_lines(&v)
                } else if let Some(driver) = v.get("driver").and_then(|d| d.as_str()) {
                    Ok(format!(
                        "{service}: every host of the fleet validates; {driver} drives the \
                         deployment. Follow it with `switcher fleet status`\n"
                    ))
                } else if wait {
                    render::deployment_line(&shown)
                } else {
                    Ok(format!(
                        "{service}: deployment {} is {}; follow it with `switcher watch` or `switcher status {service}`\n",
                        v["deployment"],
                        v["phase"].as_str().unwrap_or("validating")
                    ))
                }
            })?;
            match settled {
                Some(d) if d.phase == Phase::RolledBack => Err(exit::Outcome {
                    exit: exit::Exit::RolledBack,
                    message: format!(
                        "{service}: deployment {} was rolled back: {}",
                        d.id,
                        d.last().map_or("", |t| t.reason.as_str())
                    ),
                }
                .into()),
                _ => Ok(()),
            }
        }
        Cmd::Flip {
            service,
            to,
            force,
            reason,
            local,
        } => {
            let v = api::call_with_timeout(
                &socket,
                &Request::Flip {
                    service: service.clone(),
                    to,
                    force,
                    reason,
                    local,
                },
                FLEET_WAIT,
            )?;
            print_json_or(json, &v, || {
                if fleet::is_fleet_reply(&v) {
                    return fleet::flip_lines(&v);
                }
                let out: FlipOutcome =
                    serde_json::from_value(v.clone()).context("decoding flip reply")?;
                Ok(if out.changed {
                    format!(
                        "{service}: {} -> {} (generation {})\n",
                        out.from, out.to, out.generation
                    )
                } else {
                    format!("{service}: already {}\n", out.to)
                })
            })
        }
        Cmd::Rollback {
            service,
            local,
            force,
            reason,
        } => {
            let v = api::call_with_timeout(
                &socket,
                &Request::Rollback {
                    service,
                    local,
                    force,
                    reason,
                },
                FLEET_WAIT,
            )?;
            print_json_or(json, &v, || fleet::or(&v, render::deployment_line))
        }
        Cmd::Fleet {
            cmd: FleetCmd::Status,
        } => {
            let v = api::call(&socket, &Request::FleetStatus)?;
            print_json_or(json, &v, || fleet::status_lines(&v))
        }
        Cmd::Fleet {
            cmd: FleetCmd::History { service },
        } => {
            let v = api::call(&socket, &Request::FleetHistory { service })?;
            print_json_or(json, &v, || fleet::history_lines(&v))
        }
        Cmd::Abort { service } => {
            let v = api::call(&socket, &Request::Abort { service })?;
            print_json_or(json, &v, || render::deployment_line(&v))
        }
        Cmd::History { service } => {
            let v = api::call(&socket, &Request::History { service })?;
            print_json_or(json, &v, || {
                let ds: Vec<Deployment> =
                    serde_json::from_value(v.clone()).context("decoding history")?;
                Ok(render::history(&ds))
            })
        }
        Cmd::Watch => api::watch(&socket, |v| {
            if json {
                println!("{v}");
            } else if let Ok(ev) = serde_json::from_value::<Event>(v.clone()) {
                println!("{}", render::event(&ev));
            } else {
                println!("{v}");
            }
            Ok(())
        }),
        Cmd::Reload => {
            // In fleet mode the changed definitions are acknowledged by every host.
            let v = api::call_with_timeout(&socket, &Request::Reload, FLEET_WAIT)?;
            if json {
                println!("{v}");
            } else {
                println!("reloaded: {v}");
            }
            Ok(())
        }
        Cmd::Flows { service, limit } => {
            let v = api::call(
                &socket,
                &Request::Flows {
                    service,
                    limit: Some(usize::try_from(limit).unwrap_or(usize::MAX)),
                },
            )?;
            print_json_or(json, &v, || {
                let f: crate::controller::flows::FlowsView =
                    serde_json::from_value(v.clone()).context("decoding flows")?;
                Ok(render::flows(&f))
            })
        }
        Cmd::Detach { bpffs_dir, config } => {
            let (bpffs_dir, socket) = match config {
                Some(path) => {
                    let cfg = Config::load(&path)?;
                    (cfg.daemon.bpffs_dir, cfg.daemon.socket)
                }
                None => (bpffs_dir, socket),
            };
            if api::call(&socket, &Request::Status { service: None }).is_ok() {
                bail!("a daemon is serving {}: stop it first", socket.display());
            }
            // Nothing pinned: nothing to do (uninstalling a host that never ran the daemon).
            if !bpffs_dir.exists() {
                if json {
                    println!("{}", serde_json::json!({ "detached": [] }));
                } else {
                    println!("nothing pinned at {}", bpffs_dir.display());
                }
                return Ok(());
            }
            // A daemon on this datapath holds its lock whatever socket it serves; held until
            // the pins are gone, so none can start meanwhile.
            let _lock =
                crate::daemon::lock::lock_datapath(&bpffs_dir, crate::daemon::lock::Role::Detach)
                    .context("refusing to detach")?;
            let entries = std::fs::read_dir(&bpffs_dir)
                .with_context(|| format!("no datapath pinned at {}", bpffs_dir.display()))?;
            let mut detached = Vec::new();
            for e in entries {
                let dir = e
                    .with_context(|| format!("listing {}", bpffs_dir.display()))?
                    .path();
                crate::datapath::remove_pins(&dir)?;
                if !json {
                    println!("detached and unpinned {}", dir.display());
                }
                detached.push(dir);
            }
            let _ = std::fs::remove_dir(&bpffs_dir);
            // One document, the same shape as when nothing was pinned.
            if json {
                println!("{}", serde_json::json!({ "detached": detached }));
            }
            Ok(())
        }
        Cmd::Generate { what } => generate::run(what),
    }
}

/// After a refused `promote --wait`: exit 5 when the service's latest deployment ended
/// rejected or aborted (the validation said no), else the refusal as it is.
fn rejected_or(socket: &std::path::Path, service: &str, e: anyhow::Error) -> anyhow::Error {
    if exit::classify(&e) != exit::Exit::Refused {
        return e;
    }
    let latest = api::call(
        socket,
        &Request::History {
            service: service.into(),
        },
    )
    .ok()
    .and_then(|v| serde_json::from_value::<Vec<Deployment>>(v).ok())
    .and_then(|ds| ds.into_iter().max_by_key(|d| d.id));
    match latest {
        Some(d) if matches!(d.phase, Phase::Rejected | Phase::Aborted) => exit::Outcome {
            exit: exit::Exit::Rejected,
            message: format!("{e:#}"),
        }
        .into(),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_takes_one_node_or_a_weighted_list() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("switcher").chain(args.iter().copied()))
        };
        let members = |args: &[&str]| match parse(args).expect("parses").cmd {
            Cmd::Deploy { green, blue, .. } => green.or(blue).expect("a pool").0,
            _ => panic!("not deploy"),
        };
        assert_eq!(
            members(&["deploy", "u", "--green", "198.18.2.9:514"]).len(),
            1
        );
        let pool = members(&["deploy", "u", "--blue", "198.18.1.7:514,198.18.1.8:514*3"]);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool[1].weight, 3);
        for bad in [
            &["deploy", "u", "--green", "198.18.2.9"][..],
            &["deploy", "u", "--green", "198.18.2.9:514,198.18.2.9:514"],
            &[
                "deploy",
                "u",
                "--green",
                "198.18.2.9:514",
                "--blue",
                "198.18.1.9:514",
            ],
            &["deploy", "u"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
