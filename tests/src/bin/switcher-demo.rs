//! The README's main job (`cargo xtask demo`): a self-contained blue/green flip in the netns
//! lab with real syslog traffic. UDP and TCP streams run continuously; a new version is
//! deployed to green, validated and promoted while a TCP connection stays pinned to blue, a new
//! connection lands on green, then everything is rolled back to blue. At the end every line is accounted for. Ctrl-C tears down at once.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use switcher::{
    api::Request,
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_tests::{
    lab::{Host, BLUE_V4, CLIENT_V4, GREEN_V4, VIP_V4},
    rig::{self, sender_summary, Rig, TCP_PORT, UDP_PORT},
};

#[derive(Parser)]
#[command(about = "switcher lab demo: flip blue → green → blue under live syslog traffic")]
struct Args {
    /// Seconds of traffic (the flips happen at 1/4 and 3/4 of it).
    #[arg(long, default_value_t = 16)]
    seconds: u64,
    /// UDP syslog lines per second.
    #[arg(long, default_value_t = 1000)]
    udp_rate: u64,
    /// Forwarding mode of the services: redirect (XDP_REDIRECT) or pass (XDP_PASS).
    #[arg(long, default_value = "redirect")]
    forward: String,
}

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

    say("bringing up the lab: client, edge (switcher), blue and green backends in 198.18.0.0/15");
    let rig = Rig::up(
        "demo",
        &rig::standard_services(&args.forward, switcher_tests::services::STANDARD_CHECKS),
    )?;
    println!(
        "    client {CLIENT_V4} → VIP {VIP_V4} (udp/{UDP_PORT}, tcp/{TCP_PORT}) → edge → blue {BLUE_V4} | green {GREEN_V4}"
    );
    println!(
        "    switcher daemon attached to the edge's client-facing interface, services active=blue"
    );

    let total = args.seconds.max(4);
    let udp_count = total * args.udp_rate;
    let tcp_rate = 100u64;
    let vip_udp = format!("{VIP_V4}:{UDP_PORT}");
    let vip_tcp = format!("{VIP_V4}:{TCP_PORT}");
    say(&format!(
        "sending {udp_count} UDP lines at {}/s and a long-lived TCP connection (RFC 6587 octet counting)",
        args.udp_rate
    ));
    let max = (total + 20).to_string();
    let udp = rig.send(
        &vip_udp,
        &[
            "--proto",
            "udp",
            "--count",
            &udp_count.to_string(),
            "--rate",
            &args.udp_rate.to_string(),
            "--stream",
            "udp",
            "--max-seconds",
            &max,
        ],
    )?;
    let pinned_count = total * tcp_rate;
    let pinned = rig.send(
        &vip_tcp,
        &[
            "--proto",
            "tcp",
            "--count",
            &pinned_count.to_string(),
            "--rate",
            &tcp_rate.to_string(),
            "--stream",
            "tcp-pinned",
            "--max-seconds",
            &max,
        ],
    )?;
    let start = Instant::now();
    let flip_at = Duration::from_secs(total) / 4;
    let back_at = Duration::from_secs(total) * 3 / 4;
    let mut new_conn = None;
    let mut flipped = false;
    let mut flipped_back = false;
    let mut last_report = Instant::now();
    while udp.try_wait()?.is_none() || pinned.try_wait()?.is_none() {
        if stop.load(Ordering::Relaxed) {
            say("interrupted: tearing the lab down");
            return Ok(());
        }
        let t = start.elapsed();
        if !flipped && t >= flip_at {
            for s in ["udp4", "tcp4"] {
                promote(&rig, s)?;
            }
            flipped = true;
        }
        if flipped && new_conn.is_none() && t >= flip_at + Duration::from_secs(1) {
            say("opening a new TCP connection: it must land on green");
            let n = (back_at - flip_at).as_secs().saturating_sub(2).max(1) * tcp_rate;
            new_conn = Some((
                n,
                rig.send(
                    &vip_tcp,
                    &[
                        "--proto",
                        "tcp",
                        "--count",
                        &n.to_string(),
                        "--rate",
                        &tcp_rate.to_string(),
                        "--stream",
                        "tcp-new",
                        "--framing",
                        "lf",
                        "--max-seconds",
                        &max,
                    ],
                )?,
            ));
        }
        if !flipped_back && t >= back_at {
            for s in ["udp4", "tcp4"] {
                let v = rig.call(&Request::Rollback { service: s.into() })?;
                let d: Deployment = serde_json::from_value(v)?;
                say(&format!(
                    "switcher rollback {s}  -> deployment {} {}; blue was kept warm, traffic is back on it",
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

    say("traffic done; counting what each backend received");
    let mut ok = true;
    let streams: Vec<(&str, u64, &switcher_tests::lab::Proc)> = {
        let mut v = vec![
            ("udp", udp_count, &udp),
            ("tcp-pinned", pinned_count, &pinned),
        ];
        if let Some((n, p)) = &new_conn {
            v.push(("tcp-new", *n, p));
        }
        v
    };
    for (stream, count, proc) in &streams {
        let sent = sender_summary(proc)?["sent"].as_u64().unwrap_or(0);
        let got = rig.wait_stream(stream, sent as usize, Duration::from_secs(10))?;
        let (lost, dup) = got.loss_and_duplicates(sent);
        println!(
            "    {stream:<11} sent {sent:>6}/{count:<6} blue {:>6}  green {:>6}  lost {}  duplicated {}",
            got.blue.len(),
            got.green.len(),
            lost.len(),
            dup.len()
        );
        ok &= lost.is_empty() && dup.is_empty() && sent == *count;
    }
    let pinned_got = rig.received("tcp-pinned")?;
    println!(
        "    the TCP connection opened before the flips stayed on blue: {} lines on green",
        pinned_got.green.len()
    );
    ok &= pinned_got.green.is_empty();
    if new_conn.is_some() {
        let n = rig.received("tcp-new")?;
        println!(
            "    the TCP connection opened after the flip stayed on green: {} lines on blue",
            n.blue.len()
        );
        ok &= n.blue.is_empty();
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
        say("zero lines lost, zero duplicated, pinned connection never moved");
        Ok(())
    } else {
        bail!("the demo saw lost, duplicated or misrouted lines (see above)")
    }
}

/// `switcher deploy S --green ...` then `switcher promote S --wait`, with what the
/// validation measured.
fn promote(rig: &Rig, service: &str) -> Result<()> {
    let port = if service.starts_with("udp") {
        UDP_PORT
    } else {
        TCP_PORT
    };
    let backend = std::net::SocketAddr::new(GREEN_V4.into(), port);
    rig.call(&Request::Deploy {
        service: service.into(),
        color: Color::Green,
        backend,
        version: Some("v2".into()),
        force: false,
    })?;
    say(&format!(
        "switcher deploy {service} --green {backend} --version v2"
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
    let p99 = |who: &str| ev["load"][who]["latency"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0;
    say(&format!(
        "switcher promote {service} --wait  -> validated (health {} rounds; load p99 green {:.2} ms vs blue {:.2} ms; error counter flat), flipped: {}",
        ev["health"]["consecutive"],
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
        parts.push(format!(
            "{} active={} blue={} green={}",
            s.name, s.active, s.blue.packets, s.green.packets
        ));
    }
    println!("    [live] {}", parts.join(" | "));
    Ok(())
}

fn say(msg: &str) {
    println!("==> {msg}");
}
