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
        /// A fleet: this many edge hosts (labs PREFIX0, PREFIX1, ...; 2 to 8), each with its
        /// own sinks and a switcher config with a `[fleet]` section, joined to a running etcd
        /// (namespace PREFIX0-etcd).
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=8))]
        hosts: Option<u32>,
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
        Action::Up {
            prefix,
            hosts: None,
        } => up(&prefix),
        Action::Up {
            prefix,
            hosts: Some(n),
        } => up_fleet(&prefix, n as usize),
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
    let sink = build_sink()?;
    let lab = Lab::up(prefix).context("lab up")?;
    let config = start_host(&lab, prefix, &sink, "")?;
    let dir = work_dir(prefix);

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

/// The reference sink, built alone: it needs no bpf-linker.
fn build_sink() -> Result<PathBuf> {
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
    Ok(target_dir().join("release/ingest-sink"))
}

/// Starts `lab`'s sinks and writes its switcher config (`extra` before the services, e.g. a
/// `[fleet]` section); returns the config's path.
fn start_host(lab: &Lab, prefix: &str, sink: &Path, extra: &str) -> Result<PathBuf> {
    let dir = work_dir(prefix);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for host in [Host::Blue, Host::Green] {
        start_detached_sink(lab, host, sink, &dir)?;
    }
    let config = dir.join("switcher.toml");
    let services = services::standard_services("redirect", services::STANDARD_CHECKS);
    let text = services::lab_config(
        lab::EDGE_TO_CLIENT,
        &bpffs_dir(prefix),
        &dir,
        &format!("{extra}{services}"),
    );
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    Ok(config)
}

/// `lab up --hosts N`: N labs, each an edge host of one fleet, and a running etcd they all
/// reach on the control net; everything left up for `lab down`.
fn up_fleet(prefix: &str, n: usize) -> Result<()> {
    let sink = build_sink()?;
    let mut labs = Vec::new();
    let mut configs = Vec::new();
    for i in 0..n {
        let p = format!("{prefix}{i}");
        let lab = Lab::up(&p).with_context(|| format!("lab {p} up"))?;
        configs.push(start_host(
            &lab,
            &p,
            &sink,
            &services::fleet_section(prefix, i, 1),
        )?);
        labs.push(lab);
    }
    let etcd = lab::Etcd::up(&labs[0], 1).context("etcd up")?;
    for (i, l) in labs.iter().enumerate() {
        etcd.connect(l, i)?;
    }
    let endpoints = etcd.endpoints();
    etcd.keep()?;
    println!(
        "fleet lab {prefix}: {n} edge hosts, etcd at {} (namespace {prefix}0-etcd)",
        endpoints.join(",")
    );
    for (i, (l, c)) in labs.iter().zip(&configs).enumerate() {
        println!(
            "  edge-{i}: nsenter --net=/run/netns/{} target/release/switcher daemon --config {} &",
            l.ns(Host::Edge),
            c.display()
        );
    }
    println!("then, on any host (here edge-0):");
    let sock = work_dir(&format!("{prefix}0")).join("switcher.sock");
    println!(
        "  target/release/switcher --socket {} fleet status",
        sock.display()
    );
    println!(
        "  target/release/switcher --socket {} flip udp4 --to green --force --reason try",
        sock.display()
    );
    println!(
        "send logs to host i: ip netns exec {prefix}<i>-client logger -n {} -P 514 --udp hello",
        lab::VIP_V4
    );
    println!("remove it:  cargo xtask lab down --prefix {prefix}");
    for l in labs {
        l.keep();
    }
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
    // The lab's folders, and a fleet lab's (PREFIX0, PREFIX1, ...).
    let mut folders = Vec::new();
    for parent in [std::env::temp_dir(), PathBuf::from("/sys/fs/bpf")] {
        let start = format!("switcher-lab-{prefix}");
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&start);
            if rest.is_some_and(|r| r.chars().all(|c| c.is_ascii_digit())) {
                folders.push(e.path());
            }
        }
    }
    for p in folders {
        match fs::remove_dir_all(&p) {
            Ok(()) => println!("removed: {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}
