//! `cargo xtask lab up|down`: a lab left running for manual experiments, with the reference
//! ingest sink running on blue and green and a ready switcher config for the edge.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use switcher_tests::{
    lab::{self, Host, Lab},
    services,
};

use crate::util::{run_visible, target_dir, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create the topology (replacing one with the same prefix), start the sinks, leave it up.
    Up {
        /// Namespaces are named PREFIX-client, PREFIX-edge, PREFIX-blue, PREFIX-green.
        #[arg(long, default_value = "swlab")]
        prefix: String,
    },
    /// Delete every namespace whose name starts with PREFIX (and what runs in them), and the
    /// lab's work folder and bpffs pins (`--prefix sw` also sweeps what killed test runs left).
    Down {
        #[arg(long, default_value = "swlab")]
        prefix: String,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Up { prefix } => up(&prefix),
        Action::Down { prefix } => down(&prefix),
    }
}

fn work_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("switcher-lab-{prefix}"))
}

fn bpffs_dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/switcher-lab-{prefix}"))
}

fn up(prefix: &str) -> Result<()> {
    // The sink alone: building it needs no bpf-linker.
    run_visible(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "switcher-tests",
                "--no-default-features",
                "--bin",
                "ingest-sink",
            ]),
    )?;
    let sink = target_dir().join("release/ingest-sink");
    let lab = Lab::up(prefix).context("lab up")?;
    let dir = work_dir(prefix);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for host in [Host::Blue, Host::Green] {
        start_detached_sink(&lab, host, &sink, &dir)?;
    }
    let config = dir.join("switcher.toml");
    let text = services::lab_config(
        lab::EDGE_TO_CLIENT,
        &bpffs_dir(prefix),
        &dir,
        &services::standard_services("redirect", services::STANDARD_CHECKS),
    );
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;

    println!("lab {prefix} is up:");
    for host in Host::ALL {
        println!(
            "  {:<14} {:<15} {}",
            lab.ns(host),
            host.v4().to_string(),
            host.v6()
        );
    }
    println!(
        "  VIPs {} and {} (client routes them via the edge); sinks on blue and green: udp/{} tcp/{} http/{}",
        lab::VIP_V4,
        lab::VIP_V6,
        services::UDP_PORT,
        services::TCP_PORT,
        services::HTTP_PORT
    );
    println!(
        "  what the sinks receive: {}/{{blue,green}}.log",
        dir.display()
    );
    println!("run switcher on the edge (nsenter keeps the host's bpffs, so pins survive):");
    println!(
        "  nsenter --net=/run/netns/{} target/release/switcher daemon --config {}",
        lab.ns(Host::Edge),
        config.display()
    );
    println!(
        "  target/release/switcher --socket {} status",
        dir.join("switcher.sock").display()
    );
    println!(
        "send logs:  ip netns exec {} logger -n {} -P 514 --udp hello",
        lab.ns(Host::Client),
        lab::VIP_V4
    );
    println!(
        "metrics:    nsenter --net=/run/netns/{} curl -s http://{}/metrics",
        lab.ns(Host::Edge),
        services::WEB_LISTEN
    );
    println!(
        "dashboard:  socat TCP-LISTEN:9477,bind=127.0.0.1,fork,reuseaddr \\\n              \
         \"EXEC:nsenter --net=/run/netns/{} socat STDIO TCP\\:{w}\"\n            \
         then http://127.0.0.1:9477/ on this host (token for the buttons: {})",
        lab.ns(Host::Edge),
        dir.join("state/http.token").display(),
        w = services::WEB_LISTEN.replace(':', "\\:")
    );
    println!("remove it:  cargo xtask lab down --prefix {prefix}");
    lab.keep();
    Ok(())
}

/// Starts the sink in its own session, so it outlives this command; `lab down` kills it with
/// everything else in the namespace.
fn start_detached_sink(lab: &Lab, host: Host, sink: &Path, dir: &Path) -> Result<()> {
    let log = dir.join(format!("{}-sink.out", host.name()));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating log handle")?;
    let args = services::sink_args(host, &dir.join(format!("{}.log", host.name())));
    lab.command(host, &sink.display().to_string())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the sink on {}", host.name()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if fs::read_to_string(&log).is_ok_and(|s| s.lines().any(|l| l == "READY")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "sink on {} did not start: {}",
        host.name(),
        fs::read_to_string(&log).unwrap_or_default()
    )
}

fn down(prefix: &str) -> Result<()> {
    let removed = lab::cleanup_stale(prefix).context("lab down")?;
    if removed.is_empty() {
        println!("no namespaces starting with {prefix:?}");
    } else {
        println!("removed: {}", removed.join(" "));
    }
    for p in [work_dir(prefix), bpffs_dir(prefix)] {
        match fs::remove_dir_all(&p) {
            Ok(()) => println!("removed: {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}
