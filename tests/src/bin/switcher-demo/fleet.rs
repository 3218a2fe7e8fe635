//! `cargo xtask demo --fleet N`: the fleet demo. N edge hosts, each a lab of its own (client,
//! edge with its own switcher daemon, blue and green sinks), kept on the same colour through
//! a real etcd. Live UDP and TCP syslog through every edge while one host deploys and
//! promotes the fleet (every host validates from its own vantage point; the flip is written
//! only when all passed) and another rolls it back; every host is shown switching, and every
//! line is accounted for, host by host.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use switcher::{api::Request, config::Member, domain::Color, fleet::FleetFlip};
use switcher_tests::{
    fleet::{self, FleetLab},
    lab::{Proc, GREEN_V4, VIP_V4},
    rig::{self, Rig, STANDARD_CHECKS, TCP_PORT, UDP_PORT},
};

use super::say;

pub fn run(
    hosts: usize,
    seconds: u64,
    udp_rate: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    if !(2..=8).contains(&hosts) {
        bail!("--fleet takes 2 to 8 hosts");
    }
    say(&format!(
        "bringing up a fleet of {hosts} edge hosts (each its own lab: client, edge with a switcher daemon, blue and green sinks) and an etcd member on a control net, all in 198.18.0.0/15"
    ));
    let lab = FleetLab::up("demofl", hosts, 1, STANDARD_CHECKS)?;
    println!("    every host reports in sync to etcd; services active=blue everywhere");
    let total = seconds.max(8);
    let udp_count = total * udp_rate;
    let tcp_count = total * 100;
    say(&format!(
        "on every host: {udp_rate} UDP lines/s and one long-lived TCP connection (100 lines/s) to its VIP {VIP_V4}"
    ));
    let mut senders: Vec<(Proc, Proc)> = Vec::new();
    for r in &lab.rigs {
        senders.push((
            r.stream("udp", "fu", udp_count, udp_rate)?,
            r.stream("tcp", "ft", tcp_count, 100)?,
        ));
    }
    for r in &lab.rigs {
        r.wait_received("fu", "udp at blue", Duration::from_secs(20), |g| {
            g.blue.len() >= 100
        })?;
    }
    let started = Instant::now();
    let quarter = Duration::from_secs(total / 4);
    sleep_until(started + quarter, stop)?;

    let asker = &lab.rigs[0];
    for (service, port) in [("udp4", UDP_PORT), ("tcp4", TCP_PORT)] {
        let r = call(
            asker,
            Request::Deploy {
                service: service.into(),
                color: Color::Green,
                members: vec![Member::new((GREEN_V4, port).into())],
                version: Some("v2".into()),
                force: false,
            },
        )?;
        say(&format!("edge-0: switcher deploy {service} --green {GREEN_V4}:{port} --version v2  -> on every host's green slot:"));
        hosts_lines(&r);
    }
    let promoter = &lab.rigs[1 % hosts];
    for service in ["udp4", "tcp4"] {
        let t0 = Instant::now();
        let r = call(
            promoter,
            Request::Promote {
                service: service.into(),
                wait: true,
            },
        )?;
        say(&format!(
            "edge-1: switcher promote {service} --wait  -> every host validated green (health, load, metrics) in {:.1} s; flipped fleet-wide, acknowledged by every host in {:.1} ms:",
            t0.elapsed().as_secs_f64(),
            r.ack_ms
        ));
        hosts_lines(&r);
    }
    report(&lab.rigs)?;
    sleep_until(started + quarter * 3, stop)?;
    let last = &lab.rigs[hosts - 1];
    for service in ["udp4", "tcp4"] {
        let r = call(
            last,
            Request::Rollback {
                service: service.into(),
                local: false,
                force: false,
                reason: None,
            },
        )?;
        say(&format!(
            "edge-{}: switcher rollback {service}  -> blue (kept warm) on every host, acknowledged in {:.1} ms:",
            hosts - 1,
            r.ack_ms
        ));
        hosts_lines(&r);
    }
    report(&lab.rigs)?;

    say("waiting for the senders to finish, then counting every line on every host's sinks");
    let mut bad = 0;
    for (i, (r, (u, t))) in lab.rigs.iter().zip(&senders).enumerate() {
        let sent_u = rig::finish_sender(u, Duration::from_secs(total + 30))?;
        let sent_t = rig::finish_sender(t, Duration::from_secs(total + 30))?;
        let gu = r.wait_stream("fu", sent_u as usize, Duration::from_secs(10))?;
        let gt = r.wait_stream("ft", sent_t as usize, Duration::from_secs(10))?;
        let (lu, du) = gu.loss_and_duplicates(sent_u);
        let (lt, dt) = gt.loss_and_duplicates(sent_t);
        println!(
            "    edge-{i}: UDP sent {sent_u}: blue {} green {} lost {} dup {} | TCP (opened before the flip) sent {sent_t}: blue {} green {} lost {} dup {}",
            gu.blue.len(), gu.green.len(), lu.len(), du.len(), gt.blue.len(), gt.green.len(), lt.len(), dt.len()
        );
        bad += lu.len() + du.len() + lt.len() + dt.len() + gt.green.len();
    }
    let st = fleet::status(asker)?;
    say(&format!(
        "fleet in drift: {} host(s); audit trail: `switcher fleet history` on any host",
        st.in_drift
    ));
    if bad > 0 {
        bail!("{bad} lines were lost, duplicated or moved off their pinned colour");
    }
    say("every line arrived exactly once on every host; established TCP stayed on blue through both changes");
    Ok(())
}

fn call(rig: &Rig, req: Request) -> Result<FleetFlip> {
    Ok(serde_json::from_value(rig.call(&req)?)?)
}

fn hosts_lines(r: &FleetFlip) {
    for h in &r.hosts {
        println!(
            "      {:<8} {:<8} {}{}",
            h.host,
            h.result,
            h.active.map_or("-".to_string(), |c| c.to_string()),
            h.apply_us.map_or(String::new(), |u| format!(
                "  (applied in {:.1} ms on its clock)",
                u as f64 / 1000.0
            ))
        );
    }
}

fn report(rigs: &[Rig]) -> Result<()> {
    let mut parts = Vec::new();
    for (i, r) in rigs.iter().enumerate() {
        let st = r.status()?;
        let colour = |n: &str| {
            st.services
                .iter()
                .find(|s| s.name == n)
                .map_or("?".to_string(), |s| s.active.to_string())
        };
        parts.push(format!(
            "edge-{i} udp4={} tcp4={}",
            colour("udp4"),
            colour("tcp4")
        ));
    }
    println!(
        "    [live, read from each host's BPF maps] {}",
        parts.join(" | ")
    );
    Ok(())
}

fn sleep_until(t: Instant, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    while Instant::now() < t {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
