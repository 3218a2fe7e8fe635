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
    result
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
