//! The `switcher` command line: the daemon, and the commands that talk to it over the API
//! socket. Human output by default (rendered in [`render`]), `--json` for scripts.

mod fleet;
pub mod render;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    api::{self, Request},
    config::{Config, Member, DEFAULT_BPFFS_DIR, DEFAULT_SOCKET},
    controller::{Event, StatusView},
    datapath::FlipOutcome,
    deploy::Deployment,
    domain::Color,
};
use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switcher",
    version,
    about = "Zero-downtime blue/green switching of log-ingest services (XDP)"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "SWITCHER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: load or adopt the datapath, apply the config, serve the API.
    Daemon {
        #[arg(long, short)]
        config: PathBuf,
        /// On exit leave the datapath attached and pinned (hitless restart / upgrade).
        #[arg(long)]
        keep_attached: bool,
    },
    /// Validate a config file; applies nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Services, colours, counters and the deployment in progress.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put a new version into the idle colour's slot (no traffic goes to it yet).
    Deploy {
        service: String,
        /// The candidate pool in the green slot: one node or a comma-separated list, each
        /// optionally weighted (`ADDR:PORT*2`).
        #[arg(
            long,
            value_name = "ADDR:PORT,...",
            value_parser = members_arg,
            conflicts_with = "blue",
            required_unless_present = "blue"
        )]
        green: Option<MemberList>,
        /// The candidate pool in the blue slot (when green is serving).
        #[arg(long, value_name = "ADDR:PORT,...", value_parser = members_arg)]
        blue: Option<MemberList>,
        #[arg(long, value_name = "LABEL")]
        version: Option<String>,
        /// Replace the slot even while TCP connections are still pinned to it (breaks them).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Validate the deployed version, then flip to it and watch it.
    Promote {
        service: String,
        /// Wait for the flip (or the failed validation: exits non-zero with the reason).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Flip by hand; an unvalidated colour needs --force --reason.
    Flip {
        service: String,
        #[arg(long)]
        to: Color,
        #[arg(long)]
        force: bool,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Fleet mode: flip this host only, an audited emergency override (needs --force
        /// --reason); without it the whole fleet flips and every host acknowledges.
        #[arg(long)]
        local: bool,
        #[arg(long)]
        json: bool,
    },
    /// Back to the previous colour (kept warm), at once; in fleet mode on every host.
    Rollback {
        service: String,
        /// Fleet mode: this host only, an audited emergency override (needs --force --reason).
        #[arg(long, requires_all = ["force", "reason"])]
        local: bool,
        #[arg(long)]
        force: bool,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Fleet mode: the hosts kept on the same colours and config through etcd.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Cancel a deployment that has not been flipped to.
    Abort {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// Every deployment of SERVICE with each transition, actor, reason (and, with --json,
    /// the evidence).
    History {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow events as they happen.
    Watch {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the daemon's config file; an invalid one changes nothing.
    Reload,
    /// Remove a datapath left attached and pinned (by --keep-attached or a crash): traffic
    /// to the VIPs stops being switched. For uninstalling; refuses while a daemon runs.
    Detach {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Per host: connected or not, applied revision and colour per service, config hash
    /// match, lag behind the desired state, last error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The fleet's audit trail: every change any host made, with time, actor, host and reason.
    History {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Fleet flips wait for every host's acknowledgement (and, on failure, for the fleet's
/// rollback): up to twice the configured deadline, at most 10 minutes each.
const FLEET_WAIT: Duration = Duration::from_secs(25 * 60);

/// A pool given on the command line (one argument, comma-separated: clap would take a bare
/// `Vec` for repeated arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberList(pub Vec<Member>);

/// `--green`/`--blue`: the VIP's address family is checked by the daemon, which knows it.
fn members_arg(s: &str) -> Result<MemberList, String> {
    crate::config::parse_list(s, None).map(MemberList)
}

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

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let socket = cli.socket;
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
            let cfg = Config::load(&config)?;
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
        Cmd::Status { service, json } => {
            let v = api::call(&socket, &Request::Status { service })?;
            print_json_or(json, &v, || {
                let s: StatusView = serde_json::from_value(v.clone()).context("decoding status")?;
                Ok(render::status(&s))
            })
        }
        Cmd::Deploy {
            service,
            green,
            blue,
            version,
            force,
            json,
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
            json,
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
            )?;
            print_json_or(json, &v, || {
                if fleet::is_fleet_reply(&v) {
                    fleet::flip_lines(&v)
                } else if let Some(driver) = v.get("driver").and_then(|d| d.as_str()) {
                    Ok(format!(
                        "{service}: every host of the fleet validates; {driver} drives the \
                         deployment. Follow it with `switcher fleet status`\n"
                    ))
                } else if wait {
                    render::deployment_line(&v)
                } else {
                    Ok(format!(
                        "{service}: deployment {} is {}; follow it with `switcher watch` or `switcher status {service}`\n",
                        v["deployment"],
                        v["phase"].as_str().unwrap_or("validating")
                    ))
                }
            })
        }
        Cmd::Flip {
            service,
            to,
            force,
            reason,
            local,
            json,
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
            json,
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
            cmd: FleetCmd::Status { json },
        } => {
            let v = api::call(&socket, &Request::FleetStatus)?;
            print_json_or(json, &v, || fleet::status_lines(&v))
        }
        Cmd::Fleet {
            cmd: FleetCmd::History { service, json },
        } => {
            let v = api::call(&socket, &Request::FleetHistory { service })?;
            print_json_or(json, &v, || fleet::history_lines(&v))
        }
        Cmd::Abort { service, json } => {
            let v = api::call(&socket, &Request::Abort { service })?;
            print_json_or(json, &v, || render::deployment_line(&v))
        }
        Cmd::History { service, json } => {
            let v = api::call(&socket, &Request::History { service })?;
            print_json_or(json, &v, || {
                let ds: Vec<Deployment> =
                    serde_json::from_value(v.clone()).context("decoding history")?;
                Ok(render::history(&ds))
            })
        }
        Cmd::Watch { json } => api::watch(&socket, |v| {
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
            println!("reloaded: {v}");
            Ok(())
        }
        Cmd::Detach { bpffs_dir } => {
            if api::call(&socket, &Request::Status { service: None }).is_ok() {
                bail!("a daemon is serving {}: stop it first", socket.display());
            }
            // A daemon on this datapath holds its lock whatever socket it serves; held until
            // the pins are gone, so none can start meanwhile.
            let _lock =
                crate::daemon::lock::lock_datapath(&bpffs_dir, crate::daemon::lock::Role::Detach)
                    .context("refusing to detach")?;
            let entries = std::fs::read_dir(&bpffs_dir)
                .with_context(|| format!("no datapath pinned at {}", bpffs_dir.display()))?;
            for e in entries {
                let dir = e
                    .with_context(|| format!("listing {}", bpffs_dir.display()))?
                    .path();
                crate::datapath::remove_pins(&dir)?;
                println!("detached and unpinned {}", dir.display());
            }
            let _ = std::fs::remove_dir(&bpffs_dir);
            Ok(())
        }
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
