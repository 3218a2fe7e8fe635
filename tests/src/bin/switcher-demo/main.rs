//! The README's main job (`cargo xtask demo`): a self-contained blue/green flip in the netns
//! lab with real syslog traffic, each colour an environment of several ingest nodes (a pool,
//! 3 by default, each node the reference sink on an address of its own). UDP syslog from many
//! source ports and long-lived TCP connections run continuously and spread over blue's nodes;
//! a new version is deployed to green as a whole environment, validated (every node's health,
//! load and metrics) and promoted while the TCP connections stay pinned to their blue nodes,
//! new connections land on green's nodes, then everything is rolled back to blue. At the end
//! every line is accounted for, node by node. Ctrl-C tears down at once.

mod fleet;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::Value;
use switcher::{
    api::Request,
    config::Member,
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_tests::{
    lab::{send_flows, FlowProto, Flows, Host, Node, Proc, CLIENT_V4, VIP_V4},
    rig::{self, sender_summary, ByNode, NodeSinks, Rig, TCP_PORT, UDP_PORT},
    services::{pool_services, STANDARD_CHECKS},
};

#[derive(Parser)]
#[command(about = "switcher lab demo: flip blue → green → blue under live syslog traffic")]
struct Args {
    /// Seconds of traffic (the flips happen at 1/4 and 3/4 of it).
    #[arg(long, default_value_t = 16)]
    seconds: u64,
    /// UDP syslog lines per second (over all source ports).
    #[arg(long, default_value_t = 1000)]
    udp_rate: u64,
    /// Ingest nodes per colour (each colour's pool).
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=8))]
    nodes: u64,
    /// Forwarding mode of the services: redirect (XDP_REDIRECT) or pass (XDP_PASS).
    #[arg(long, default_value = "redirect")]
    forward: String,
    /// The fleet demo instead: this many edge hosts (2-8) kept on the same colour through
    /// etcd, deployed, promoted and rolled back together under live traffic.
    #[arg(long, value_name = "HOSTS")]
    fleet: Option<usize>,
}

/// UDP flows (client source ports 20000..), and TCP connections per log-sender.
const UDP_FLOWS: u16 = 300;
const TCP_CONNECTIONS: u64 = 12;
/// TCP lines per second over one log-sender's connections.
const TCP_RATE: u64 = 120;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if !matches!(args.forward.as_str(), "redirect" | "pass") {
        bail!("--forward must be redirect or pass");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    if let Some(hosts) = args.fleet {
        return fleet::run(hosts, args.seconds, args.udp_rate.min(1000), &stop);
    }

    let n = args.nodes as usize;
    let pool = |h: Host| -> Result<Vec<Node>> { (0..n).map(|i| Node::new(h, i)).collect() };
    let (blue, green) = (pool(Host::Blue)?, pool(Host::Green)?);
    say(&format!(
        "bringing up the lab: client, edge (switcher), blue and green environments of {n} ingest nodes each, in 198.18.0.0/15"
    ));
    let rig = Rig::up_nodes(
        "demo",
        &pool_services(&args.forward, STANDARD_CHECKS, &blue, &green),
        n,
        NodeSinks::Reference,
    )?;
    let addrs = |ns: &[Node]| {
        ns.iter()
            .map(|x| x.v4().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "    client {CLIENT_V4} → VIP {VIP_V4} (udp/{UDP_PORT}, tcp/{TCP_PORT}) → edge → blue [{}] | green [{}]",
        addrs(&blue),
        addrs(&green)
    );
    println!(
        "    switcher daemon attached to the edge's client-facing interface, services active=blue; \
         each flow goes to a node of the active pool by its hash (Maglev table)"
    );

    let total = args.seconds.max(4);
    let udp = Flows {
        proto: FlowProto::Udp,
        src: CLIENT_V4.into(),
        target: SocketAddr::from((VIP_V4, UDP_PORT)),
        ports: 20000..20000 + UDP_FLOWS,
        lines: (total * args.udp_rate / u64::from(UDP_FLOWS)).max(1),
        stream: "udp".into(),
        rate: args.udp_rate,
        max: Duration::from_secs(total + 20),
    };
    let vip_tcp = format!("{VIP_V4}:{TCP_PORT}");
    say(&format!(
        "sending {} UDP lines at {}/s from {UDP_FLOWS} source ports, and {TCP_CONNECTIONS} long-lived TCP connections (RFC 6587 octet counting)",
        udp.total(),
        args.udp_rate
    ));
    let max = (total + 20).to_string();
    let udp_ns = rig.lab.ns(Host::Client).to_string();
    let udp_flows = udp.clone();
    // Not scoped: Ctrl-C must not wait for it (the process ends, and the sender with it).
    let udp_sender = std::thread::spawn(move || send_flows(&udp_ns, &udp_flows));
    let tcp_sender = |stream: &str, count: u64, framing: &str| {
        rig.send(
            &vip_tcp,
            &[
                "--proto",
                "tcp",
                "--connections",
                &TCP_CONNECTIONS.to_string(),
                "--count",
                &count.to_string(),
                "--rate",
                &TCP_RATE.to_string(),
                "--stream",
                stream,
                "--framing",
                framing,
                "--max-seconds",
                &max,
            ],
        )
    };
    let pinned_count = total * TCP_RATE;
    let pinned = tcp_sender("tcp-pinned", pinned_count, "octet")?;
    let start = Instant::now();
    let flip_at = Duration::from_secs(total) / 4;
    let back_at = Duration::from_secs(total) * 3 / 4;
    let mut new_conn: Option<(u64, Proc)> = None;
    let mut flipped = false;
    let mut flipped_back = false;
    let mut last_report = Instant::now();
    while !udp_sender.is_finished() || pinned.try_wait()?.is_none() {
        if stop.load(Ordering::Relaxed) {
            say("interrupted: tearing the lab down");
            return Ok(());
        }
        let t = start.elapsed();
        if !flipped && t >= flip_at {
            for s in ["udp4", "tcp4"] {
                promote(&rig, s, &green)?;
            }
            flipped = true;
        }
        if flipped && new_conn.is_none() && t >= flip_at + Duration::from_secs(1) {
            say(&format!(
                "opening {TCP_CONNECTIONS} new TCP connections: they must land on green's nodes"
            ));
            let count = (back_at - flip_at).as_secs().saturating_sub(2).max(1) * TCP_RATE;
            new_conn = Some((count, tcp_sender("tcp-new", count, "lf")?));
        }
        if !flipped_back && t >= back_at {
            for s in ["udp4", "tcp4"] {
                let v = rig.call(&Request::Rollback {
                    service: s.into(),
                    local: false,
                    force: false,
                    reason: None,
                })?;
                let d: Deployment = serde_json::from_value(v)?;
                say(&format!(
                    "switcher rollback {s}  -> deployment {} {}; blue was kept warm, traffic is back on its nodes",
                    d.id, d.phase
                ));
            }
            flipped_back = true;
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            report_live(&rig)?;
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((_, p)) = &new_conn {
        p.wait_timeout(Duration::from_secs(30))?;
    }
    let udp_report = udp_sender
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP sender panicked"))??;

    say("traffic done; counting what each node received");
    let mut ok = true;
    let got = rig.wait_streams("udp-p", udp_report.sent as usize, Duration::from_secs(10))?;
    let (lost, dup) = flows_accounting(&got, &udp);
    println!(
        "    {:<11} sent {:>6}/{:<6} lost {lost}  duplicated {dup}",
        "udp",
        udp_report.sent,
        udp.total()
    );
    ok &= lost == 0 && dup == 0 && udp_report.sent == udp.total();
    let mut streams = vec![("tcp-pinned", pinned_count, &pinned)];
    if let Some((count, p)) = &new_conn {
        streams.push(("tcp-new", *count, p));
    }
    for (stream, count, proc) in &streams {
        let sent = sender_summary(proc)?["sent"].as_u64().unwrap_or(0);
        let r = rig.wait_streams(
            &format!("{stream}-c"),
            sent as usize,
            Duration::from_secs(10),
        )?;
        let mut all = rig::Received::default();
        for by in r.values() {
            for (node, seqs) in by {
                match node.host {
                    Host::Blue => all.blue.extend(seqs),
                    _ => all.green.extend(seqs),
                }
            }
        }
        let (lost, dup) = all.loss_and_duplicates(sent);
        println!(
            "    {stream:<11} sent {sent:>6}/{count:<6} blue {:>6}  green {:>6}  lost {}  duplicated {}",
            all.blue.len(),
            all.green.len(),
            lost.len(),
            dup.len()
        );
        ok &= lost.is_empty() && dup.is_empty() && sent == *count;
    }

    say("where the lines went, node by node (each flow's hash picks a node of the active pool)");
    let nodes: Vec<Node> = blue.iter().chain(&green).copied().collect();
    print_spread(
        &format!("udp ({UDP_FLOWS} flows)"),
        &rig.streams_by_node("udp-p")?,
        &nodes,
    );
    let pinned_got = rig.streams_by_node("tcp-pinned-c")?;
    print_spread("tcp-pinned", &pinned_got, &nodes);
    let stayed = pinned_got
        .values()
        .all(|by| by.len() == 1 && by.keys().all(|n| n.host == Host::Blue));
    println!(
        "    each TCP connection opened before the flips stayed on its own blue node: {}",
        if stayed { "yes" } else { "NO" }
    );
    ok &= stayed;
    if new_conn.is_some() {
        let fresh = rig.streams_by_node("tcp-new-c")?;
        print_spread("tcp-new", &fresh, &nodes);
        let on_green = fresh
            .values()
            .all(|by| by.len() == 1 && by.keys().all(|n| n.host == Host::Green));
        println!(
            "    each TCP connection opened after the flip stayed on its green node: {}",
            if on_green { "yes" } else { "NO" }
        );
        ok &= on_green;
    }
    for h in [Host::Blue, Host::Green] {
        let s = rig.lab.snmp(h)?;
        println!(
            "    {:<5} kernel: UDP checksum errors {}, receive-buffer drops {}, TCP checksum errors {}",
            h.name(),
            s.udp_in_csum_errors,
            s.udp_rcvbuf_errors,
            s.tcp_in_csum_errors
        );
    }
    say("switcher status");
    print!("{}", switcher::cli::render::status(&rig.status()?));
    if ok {
        say("zero lines lost, zero duplicated, no pinned connection ever changed node");
        Ok(())
    } else {
        bail!("the demo saw lost, duplicated or misrouted lines (see above)")
    }
}

/// (lost, duplicated) lines of the flows: each flow must hold seq 0..lines exactly once over
/// all nodes.
fn flows_accounting(got: &BTreeMap<String, ByNode>, flows: &Flows) -> (u64, u64) {
    let (mut lost, mut dup) = (0, 0);
    for port in flows.ports.clone() {
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for seqs in got
            .get(&flows.stream_of(port))
            .into_iter()
            .flat_map(|b| b.values())
        {
            for s in seqs {
                *seen.entry(*s).or_default() += 1;
            }
        }
        lost += (0..flows.lines).filter(|s| !seen.contains_key(s)).count() as u64;
        dup += seen
            .iter()
            .map(|(s, n)| if *s >= flows.lines { *n } else { n - 1 })
            .sum::<u64>();
    }
    (lost, dup)
}

/// One line per node: the lines and flows (or connections) of `got` it received.
fn print_spread(what: &str, got: &BTreeMap<String, ByNode>, nodes: &[Node]) {
    let mut lines: BTreeMap<Node, usize> = BTreeMap::new();
    let mut flows: BTreeMap<Node, usize> = BTreeMap::new();
    for by in got.values() {
        for (n, seqs) in by {
            *lines.entry(*n).or_default() += seqs.len();
            *flows.entry(*n).or_default() += 1;
        }
    }
    let total: usize = lines.values().sum();
    let cells: Vec<String> = nodes
        .iter()
        .map(|n| {
            let l = lines.get(n).copied().unwrap_or(0);
            format!(
                "{} {l} ({:.0}%, {} flows)",
                n.name(),
                l as f64 * 100.0 / total.max(1) as f64,
                flows.get(n).copied().unwrap_or(0)
            )
        })
        .collect();
    println!("    {what:<15} {}", cells.join("  "));
}

/// `switcher deploy S --green A,B,C` then `switcher promote S --wait`, with what the
/// validation measured.
fn promote(rig: &Rig, service: &str, green: &[Node]) -> Result<()> {
    let port = if service.starts_with("udp") {
        UDP_PORT
    } else {
        TCP_PORT
    };
    let members: Vec<Member> = green
        .iter()
        .map(|n| Member::new(SocketAddr::from((n.v4(), port))))
        .collect();
    let list = switcher::config::describe(&members);
    rig.call(&Request::Deploy {
        service: service.into(),
        color: Color::Green,
        members,
        version: Some("v2".into()),
        force: false,
    })?;
    say(&format!(
        "switcher deploy {service} --green {} --version v2",
        list.replace(", ", ",")
    ));
    let v = rig.call(&Request::Promote {
        service: service.into(),
        wait: true,
    })?;
    let d: Deployment = serde_json::from_value(v)?;
    let ev = d
        .transitions
        .iter()
        .find(|t| t.to == Phase::Ready)
        .and_then(|t| t.evidence.clone())
        .unwrap_or_default();
    // One node: its report; several: one report per node loaded. The worst p99 is shown.
    let p99 = |who: &str| {
        let one = |r: &Value| r["latency"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0;
        match &ev["load"][who] {
            Value::Array(rs) => rs.iter().map(one).fold(0.0, f64::max),
            r => one(r),
        }
    };
    let healthy = match &ev["health"] {
        Value::Object(m) if m.contains_key("consecutive") => "its node".to_string(),
        Value::Object(m) => format!("{} nodes", m.len()),
        _ => "?".into(),
    };
    say(&format!(
        "switcher promote {service} --wait  -> validated (health of {healthy}; load p99 green {:.2} ms vs blue {:.2} ms, worst node; error counters flat), flipped: {}",
        p99("candidate"),
        p99("serving"),
        d.phase
    ));
    Ok(())
}

fn report_live(rig: &Rig) -> Result<()> {
    let st = rig.status()?;
    let mut parts = Vec::new();
    for s in st
        .services
        .iter()
        .filter(|s| s.name == "udp4" || s.name == "tcp4")
    {
        let members = |c: Color| {
            s.color(c)
                .members
                .iter()
                .map(|m| m.packets.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        parts.push(format!(
            "{} active={} blue={} [{}] green={} [{}]",
            s.name,
            s.active,
            s.blue.packets,
            members(Color::Blue),
            s.green.packets,
            members(Color::Green)
        ));
    }
    println!("    [live] {}", parts.join(" | "));
    Ok(())
}

fn say(msg: &str) {
    println!("==> {msg}");
}
