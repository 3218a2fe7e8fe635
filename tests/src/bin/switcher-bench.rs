//! `cargo xtask bench`: per-packet cost of the XDP datapath, measured with BPF_PROG_TEST_RUN
//! loops in one process, side by side, alternating rounds (the machines are shared and noisy,
//! so ratios from one run mean more than absolute numbers).
//!
//! BPF_PROG_TEST_RUN repeats on the same buffer, so a rewritten packet would stop hitting the
//! service after the first iteration. The benchmark services therefore use the VIP:port itself
//! as backend: every iteration does the full lookup, decision, rewrite and checksum work and
//! hits again. The per-colour counters prove it: they must grow by exactly the repeat count.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use clap::Parser;
use etherparse::PacketBuilder;
use switcher::{
    config::{Color, Config},
    datapath::{self, Datapath},
};

#[derive(Parser)]
struct Args {
    /// Iterations per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Alternating rounds per case; the median is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Flips through the daemon's API in the lab under continuous traffic (0: skip).
    #[arg(long, default_value_t = 1000)]
    flips: u32,
}

const SERVICES: &str = r#"
[[service]]
name = "bench-udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "pass"
blue = { backend = "198.18.10.10:514" }

[[service]]
name = "bench-tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "pass"
blue = { backend = "198.18.10.10:601" }

[[service]]
name = "bench-udp6"
vip = "2001:2:0:10::10"
port = 514
protocol = "udp"
forward = "pass"
blue = { backend = "[2001:2:0:10::10]:514" }
"#;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

struct Case {
    name: &'static str,
    packet: Vec<u8>,
    /// Service whose blue counter must grow by `repeat` per run (None: non-service).
    service: Option<&'static str>,
}

fn run() -> Result<()> {
    let args = Args::parse();
    let dir = PathBuf::from(format!("/sys/fs/bpf/switcher-bench-{}", std::process::id()));
    let text = format!(
        "[daemon]\ninterfaces = [\"lo\"]\nbpffs_dir = \"{}\"\n{SERVICES}",
        dir.display()
    );
    let cfg = Config::parse(&text).map_err(|e| anyhow::anyhow!("bench config: {e:?}"))?;
    let mut dp = Datapath::load(&dir)?;
    let result = bench(&mut dp, &cfg, &args);
    let pins = dp.dir().to_path_buf();
    drop(dp);
    datapath::remove_pins(&pins)?;
    result?;
    if args.flips > 0 {
        flips(args.flips)?;
    }
    Ok(())
}

/// Flip latency as the controller sees it (API request accepted → map written) and as a
/// client sees it (round trip), over `n` flips in the lab while a UDP stream runs through
/// the switch; then every line of the stream must have arrived exactly once.
fn flips(n: u32) -> Result<()> {
    use switcher_tests::{
        lab::VIP_V4,
        rig::{self, Rig, UDP_PORT},
    };
    let rig = Rig::up("fb", &rig::standard_services("redirect", ""))?;
    let rate = 2000u64;
    // Enough traffic to cover the flips (20 ms apart) with margin; bounded by count and time.
    let count = rate * (u64::from(n) / 50 + 5);
    let sender = rig.send(
        &format!("{VIP_V4}:{UDP_PORT}"),
        &[
            "--proto",
            "udp",
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--stream",
            "f",
            "--max-seconds",
            "60",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut api_to_map = Vec::with_capacity(n as usize);
    let mut round_trip = Vec::with_capacity(n as usize);
    let started = std::time::Instant::now();
    // Spread the flips over the stream: a flip every 20 ms.
    let pace = Duration::from_millis(20);
    for i in 0..n {
        let next = started + pace * i;
        if let Some(d) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
        let to = if i % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let t0 = std::time::Instant::now();
        let v = rig.call(&switcher::api::Request::Flip {
            service: "udp4".into(),
            to,
            force: false,
            reason: None,
        })?;
        round_trip.push(t0.elapsed().as_nanos() as f64);
        let ns = v["api_to_map_ns"]
            .as_f64()
            .context("flip reply has no api_to_map_ns")?;
        if v["changed"] != true {
            bail!("flip {i} did not change the colour: {v}");
        }
        api_to_map.push(ns);
    }
    let flip_secs = started.elapsed().as_secs_f64();
    let st = sender.wait_timeout(Duration::from_secs(70))?;
    if !st.is_some_and(|s| s.success()) {
        bail!("sender failed: {}", sender.stderr_tail(10));
    }
    let sent = rig::sender_summary(&sender)?["sent"].as_u64().unwrap_or(0);
    let got = rig.wait_stream("f", sent as usize, Duration::from_secs(10))?;
    let (lost, dup) = got.loss_and_duplicates(sent);
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize - 1] / 1000.0
    };
    println!(
        "\n{n} flips through the API in {flip_secs:.1} s under {rate} lines/s of UDP through the switch:"
    );
    println!(
        "  API request accepted -> map written   p50 {:>8.1} µs   p99 {:>8.1} µs",
        pct(&mut api_to_map, 50.0),
        pct(&mut api_to_map, 99.0)
    );
    println!(
        "  client round trip (incl. state fsync) p50 {:>8.1} µs   p99 {:>8.1} µs",
        pct(&mut round_trip, 50.0),
        pct(&mut round_trip, 99.0)
    );
    println!(
        "  lines sent {sent}, blue {} green {}, lost {}, duplicated {}",
        got.blue.len(),
        got.green.len(),
        lost.len(),
        dup.len()
    );
    if !lost.is_empty() || !dup.is_empty() {
        bail!("lines were lost or duplicated across the flips");
    }
    Ok(())
}

fn bench(dp: &mut Datapath, cfg: &Config, args: &Args) -> Result<()> {
    let ids = dp.apply(&cfg.services)?;
    let payload = b"<14>1 2026-11-24T00:00:00Z host app - - - a typical short syslog line";
    let udp4 = |dport: u16| -> Result<Vec<u8>> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([198, 18, 0, 1], [198, 18, 10, 10], 64)
            .udp(40000, dport)
            .write(&mut v, payload)?;
        Ok(v)
    };
    let mut tcp_ack = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([198, 18, 0, 1], [198, 18, 10, 10], 64)
        .tcp(40001, 601, 1, 64240)
        .ack(1)
        .write(&mut tcp_ack, payload)?;
    let mut tcp_syn = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([198, 18, 0, 1], [198, 18, 10, 10], 64)
        .tcp(40001, 601, 0, 64240)
        .syn()
        .write(&mut tcp_syn, b"")?;
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(
            "2001:2::1".parse::<std::net::Ipv6Addr>()?.octets(),
            "2001:2:0:10::10".parse::<std::net::Ipv6Addr>()?.octets(),
            64,
        )
        .udp(40000, 514)
        .write(&mut udp6, payload)?;

    // Pin the TCP flow once, so the ACK case measures an established-flow lookup.
    run_once(dp, &tcp_syn, 1)?;
    let cases = [
        Case {
            name: "udp4 service hit (rewrite + XDP_PASS)",
            packet: udp4(514)?,
            service: Some("bench-udp4"),
        },
        Case {
            name: "udp4 non-service (other port)",
            packet: udp4(9999)?,
            service: None,
        },
        Case {
            name: "tcp4 established flow hit",
            packet: tcp_ack,
            service: Some("bench-tcp4"),
        },
        Case {
            name: "udp6 service hit",
            packet: udp6,
            service: Some("bench-udp6"),
        },
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..args.rounds {
        for (i, c) in cases.iter().enumerate() {
            let before = match c.service {
                Some(s) => dp.color_counters(ids[s], Color::Blue)?.packets,
                None => 0,
            };
            let d = run_once(dp, &c.packet, args.repeat)?;
            if let Some(s) = c.service {
                let after = dp.color_counters(ids[s], Color::Blue)?.packets;
                if after - before != args.repeat as u64 {
                    bail!(
                        "{}: only {} of {} iterations hit the service: the measurement is invalid",
                        c.name,
                        after - before,
                        args.repeat
                    );
                }
            }
            samples[i].push(d.as_nanos() as f64);
        }
    }
    println!(
        "BPF_PROG_TEST_RUN, {} iterations x {} alternating rounds, median ns/packet:",
        args.repeat, args.rounds
    );
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let base = medians[1];
    for (c, m) in cases.iter().zip(&medians) {
        println!(
            "  {:<42} {:>7.1} ns   ({:.2}x non-service)",
            c.name,
            m,
            m / base
        );
    }
    Ok(())
}

/// One BPF_PROG_TEST_RUN call; the kernel reports the mean time per iteration.
fn run_once(dp: &Datapath, pkt: &[u8], repeat: u32) -> Result<Duration> {
    let mut out = vec![0u8; pkt.len() + 64];
    let r = dp
        .xdp_program()?
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    if r.return_value != 2 {
        bail!("unexpected XDP action {}", r.return_value);
    }
    Ok(r.duration)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
