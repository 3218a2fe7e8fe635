//! `switcher`: daemon and CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use switcher::{
    api::{self, Request},
    config::{Color, Config, DEFAULT_SOCKET},
    datapath::FlipOutcome,
    status::Status,
};

#[derive(Parser)]
#[command(
    name = "switcher",
    version,
    about = "Zero-downtime blue/green switching of log-ingest services (XDP)"
)]
struct Cli {
    /// The daemon's API socket [default: the config's `daemon.socket`, else /run/switcher/switcher.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load (or adopt) the datapath, apply the config and serve the API until SIGINT/SIGTERM.
    Daemon {
        #[arg(long, short)]
        config: PathBuf,
        /// On exit leave the datapath attached and pinned, for a hitless restart.
        #[arg(long)]
        keep_attached: bool,
    },
    /// Send new traffic of SERVICE to a colour (one map write; established TCP stays pinned).
    Flip {
        service: String,
        #[arg(long)]
        to: Color,
        #[arg(long)]
        json: bool,
    },
    /// Services, active colours, per-colour counters and datapath reasons.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and print what it defines; applies nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    match cli.cmd {
        Cmd::Daemon {
            config,
            keep_attached,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(socket) = cli.socket {
                cfg.daemon.socket = socket;
            }
            tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(switcher::daemon::run(cfg, keep_attached))
        }
        Cmd::Flip { service, to, json } => {
            let v = api::call(
                &socket,
                &Request::Flip {
                    service: service.clone(),
                    to,
                },
            )?;
            if json {
                println!("{v}");
            } else {
                let out: FlipOutcome = serde_json::from_value(v).context("decoding flip reply")?;
                if out.changed {
                    println!(
                        "{service}: {} -> {} (generation {})",
                        out.from, out.to, out.generation
                    );
                } else {
                    println!("{service}: already {}", out.to);
                }
            }
            Ok(())
        }
        Cmd::Status { json } => {
            let v = api::call(&socket, &Request::Status)?;
            if json {
                println!("{v}");
            } else {
                let s: Status = serde_json::from_value(v).context("decoding status reply")?;
                print!("{}", s.render());
            }
            Ok(())
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
                    s.blue.map_or("-".into(), |a| a.to_string()),
                    s.green.map_or("-".into(), |a| a.to_string())
                );
            }
            println!(
                "config ok: {} service(s) on {:?}",
                cfg.services.len(),
                cfg.daemon.interfaces
            );
            Ok(())
        }
    }
}
