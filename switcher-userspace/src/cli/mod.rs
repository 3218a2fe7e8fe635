//! The `switcher` command line: the daemon, and the commands that talk to it over the API
//! socket. Human output by default (rendered in [`render`]), `--json` for scripts.

mod exit;
mod fleet;
pub mod render;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    api::{self, Request},
    config::{Config, Member, DEFAULT_BPFFS_DIR, DEFAULT_SOCKET},
    controller::{Event, StatusView},
    datapath::FlipOutcome,
    deploy::{Deployment, Phase},
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
    /// Machine-readable output: the daemon's documents as JSON, and errors as a JSON object
    /// (`error`, `exit`, `kind`) on stdout.
    #[arg(long, global = true)]
    json: bool,
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
        /// Print the status again every --interval seconds until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0,
              value_parser = interval_arg)]
        interval: f64,
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
    },
    /// Validate the deployed version, then flip to it and watch it.
    Promote {
        service: String,
        /// Wait for the outcome and exit with its code: 0 once `--until` is reached, 5 if the
        /// candidate was rejected, 6 if the watch rolled it back, 7 at `--timeout`.
        #[arg(long)]
        wait: bool,
        /// With --wait: until the flip (`promoted`) or the end of the watch window (`stable`).
        #[arg(long, value_enum, default_value_t = Until::Stable, requires = "wait")]
        until: Until,
        /// With --wait: give up (exit 7) after this long.
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 3600,
            requires = "wait"
        )]
        timeout: u64,
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
    },
    /// Fleet mode: the hosts kept on the same colours and config through etcd.
    Fleet {
        #[command(subcommand)]
        cmd: FleetCmd,
    },
    /// Cancel a deployment that has not been flipped to.
    Abort { service: String },
    /// Every deployment of SERVICE with each transition, actor, reason (and, with --json,
    /// the evidence).
    History { service: String },
    /// Follow events as they happen.
    Watch,
    /// Re-read the daemon's config file; an invalid one changes nothing.
    Reload,
    /// The established connections pinned to a colour, oldest first: service, colour,
    /// client, member, state, age, idle time.
    Flows {
        service: Option<String>,
        /// Show at most this many (all are counted).
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
    },
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
    Status,
    /// The fleet's audit trail: every change any host made, with time, actor, host and reason.
    History { service: Option<String> },
}

/// How far `promote --wait` follows a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Until {
    Promoted,
    Stable,
}

fn interval_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in 0.1..=3600")),
    }
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
            let fleet_reply = fleet::is_fleet_reply(&v) || v.get("driver").is_some();
            let settled = if wait && until == Until::Stable && !fleet_reply {
                let id = v["id"]
                    .as_u64()
                    .context("the promote reply has no deployment id")?;
                Some(follow(&socket, &service, id, Duration::from_secs(timeout))?)
            } else {
                None
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
                if json {
                    println!("{}", serde_json::json!({ "detached": dir }));
                } else {
                    println!("detached and unpinned {}", dir.display());
                }
            }
            let _ = std::fs::remove_dir(&bpffs_dir);
            Ok(())
        }
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

/// Follows deployment `id` of `service` after its flip until its watch ends (stable, or
/// rolled back), at most `timeout`.
fn follow(
    socket: &std::path::Path,
    service: &str,
    id: u64,
    timeout: Duration,
) -> Result<Deployment> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = api::call(
            socket,
            &Request::History {
                service: service.into(),
            },
        )?;
        let ds: Vec<Deployment> = serde_json::from_value(v).context("decoding history")?;
        let d = ds
            .into_iter()
            .find(|d| d.id == id)
            .with_context(|| format!("deployment {id} of {service} disappeared"))?;
        if !matches!(d.phase, Phase::Promoted) {
            return Ok(d);
        }
        if std::time::Instant::now() >= deadline {
            return Err(exit::Outcome {
                exit: exit::Exit::Timeout,
                message: format!(
                    "{service}: deployment {id} still promoted (watching) after {timeout:?}"
                ),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(250));
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
