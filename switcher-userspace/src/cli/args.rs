//! The command line's definition (clap): commands, their arguments and how they parse.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    config::{Member, DEFAULT_BPFFS_DIR, DEFAULT_SOCKET},
    domain::Color,
};

#[derive(Parser)]
#[command(
    name = "switcher",
    version,
    about = "Zero-downtime blue/green switching of log-ingest services (XDP)"
)]
pub(super) struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "SWITCHER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(super) socket: PathBuf,
    /// Machine-readable output: the daemon's documents as JSON, and errors as a JSON object
    /// (`error`, `exit`, `kind`) on stdout.
    #[arg(long, global = true)]
    pub(super) json: bool,
    #[command(subcommand)]
    pub(super) cmd: Cmd,
}

#[derive(Subcommand)]
pub(super) enum Cmd {
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
        /// Take bpffs_dir (and the socket of the daemon that must not be running) from this
        /// config file instead.
        #[arg(long, short, conflicts_with = "bpffs_dir")]
        config: Option<PathBuf>,
    },
    /// Shell completions and man pages from this definition (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: super::generate::What,
    },
}

#[derive(Subcommand)]
pub(super) enum FleetCmd {
    /// Per host: connected or not, applied revision and colour per service, config hash
    /// match, lag behind the desired state, last error.
    Status,
    /// The fleet's audit trail: every change any host made, with time, actor, host and reason.
    History { service: Option<String> },
}

/// How far `promote --wait` follows a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Until {
    Promoted,
    Stable,
}

fn interval_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in 0.1..=3600")),
    }
}

/// A pool given on the command line (one argument, comma-separated: clap would take a bare
/// `Vec` for repeated arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct MemberList(pub Vec<Member>);

/// `--green`/`--blue`: the VIP's address family is checked by the daemon, which knows it.
fn members_arg(s: &str) -> Result<MemberList, String> {
    crate::config::parse_list(s, None).map(MemberList)
}
