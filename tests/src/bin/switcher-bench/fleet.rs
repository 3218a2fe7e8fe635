//! Fleet flip latency (issue 10): five edge hosts, each a lab with its own daemon, joined
//! through a real etcd. A flip is written by one host's daemon (the driver) and waited for
//! until every host acknowledged it; everything end to end is timed on the driver's clock,
//! each host's own part (watch event → map written) on that host's clock. Then one host is
//! cut from etcd while the fleet flips, and the time it takes to converge once the cut
//! heals is measured.
//!
//! The section fails when a flip is not applied by every host, or a rejoining host does not
//! converge.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use switcher::domain::Color;
use switcher_tests::fleet::{self, FleetLab};

use crate::{
    report::{num, percentile, Table},
    Opts,
};

const HOSTS: usize = 5;

pub fn run(opts: &Opts) -> Result<Value> {
    let flips: usize = if opts.quick { 20 } else { 200 };
    let rejoins: usize = if opts.quick { 2 } else { 5 };
    let lab = FleetLab::up("fbn", HOSTS, 1, "")?;
    let driver = &lab.rigs[0];
    let (mut ack, mut write, mut apply, mut slowest_apply) = (vec![], vec![], vec![], vec![]);
    for i in 0..flips {
        let to = if i % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let r = fleet::flip(driver, "udp4", to)?;
        if r.hosts.len() != HOSTS {
            bail!("flip {i} reached {} of {HOSTS} hosts", r.hosts.len());
        }
        ack.push(r.ack_ms);
        write.push(r.write_ms);
        let per_host: Vec<f64> = r
            .hosts
            .iter()
            .filter_map(|h| h.apply_us.map(|u| u as f64 / 1000.0))
            .collect();
        slowest_apply.push(per_host.iter().copied().fold(0.0, f64::max));
        apply.extend(per_host);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Rejoin: the last host is cut off, the fleet flips without it, the cut heals.
    let cut = &lab.rigs[HOSTS - 1];
    let mut converge = Vec::new();
    for i in 0..rejoins {
        lab.etcd.partition(&cut.lab)?;
        switcher_tests::poll::until_state_every(
            "the cut host's lease to expire",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                let s = fleet::status(driver)?;
                Ok(if s.hosts.iter().any(|h| !h.connected) {
                    Ok(())
                } else {
                    Err(String::new())
                })
            },
        )?;
        let to = if i % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let before = fleet::status(driver)?.desired["udp4"].desired.active;
        let to = if before == to { to.other() } else { to };
        let r = fleet::flip(driver, "udp4", to)?;
        if r.excluded.len() != 1 {
            bail!("the cut host was not excluded: {r:?}");
        }
        let healed = Instant::now();
        lab.etcd.heal(&cut.lab)?;
        lab.wait_in_sync(0, Duration::from_secs(30))?;
        converge.push(healed.elapsed().as_secs_f64() * 1e3);
    }
    let stats = |v: &mut Vec<f64>| json!({ "p50": percentile(v, 50.0), "p99": percentile(v, 99.0), "max": percentile(v, 100.0), "samples": v.len() });
    let v = json!({
        "hosts": HOSTS,
        "flips": flips,
        "ack_ms": stats(&mut ack),
        "write_ms": stats(&mut write),
        "host_apply_ms": stats(&mut apply),
        "slowest_host_apply_ms": stats(&mut slowest_apply),
        "rejoin_converge_ms": stats(&mut converge),
    });
    println!("\n== Fleet: {flips} flips of {HOSTS} hosts through etcd, then {rejoins} rejoins after a partition ==");
    print!("{}", table(&v).text("  "));
    Ok(v)
}

fn table(v: &Value) -> Table {
    let mut t = Table::new(&["measured", "p50 ms", "p99 ms", "max ms"]);
    for (label, key) in [
        (
            "desired written -> last host acknowledged (driver clock)",
            "ack_ms",
        ),
        ("the write itself (etcd transaction, fsync)", "write_ms"),
        (
            "one host: watch event -> map written (its clock)",
            "host_apply_ms",
        ),
        ("slowest host's apply, per flip", "slowest_host_apply_ms"),
        (
            "rejoin: partition healed -> fleet in sync",
            "rejoin_converge_ms",
        ),
    ] {
        let l = &v[key];
        t.row(vec![
            label.to_string(),
            num(&l["p50"], 2),
            num(&l["p99"], 2),
            num(&l["max"], 2),
        ]);
    }
    t
}

pub fn markdown(v: &Value) -> String {
    format!(
        "{} fleet flips of {} hosts (each a lab with its own daemon) through one etcd member, \
         20 ms apart, asked on one host and waited for until every host acknowledged; then \
         {} rejoins of a host cut from etcd (nftables drop) while the fleet flipped without it.\n\n{}",
        v["flips"],
        v["hosts"],
        v["rejoin_converge_ms"]["samples"],
        table(v).markdown()
    )
}

pub fn summary(v: &Value) -> Vec<[String; 2]> {
    vec![
        [
            format!("fleet flip, {} hosts (p50 / p99)", v["hosts"]),
            format!(
                "{} / {} ms",
                num(&v["ack_ms"]["p50"], 1),
                num(&v["ack_ms"]["p99"], 1)
            ),
        ],
        [
            "fleet rejoin after a partition (p50)".into(),
            format!("{} ms", num(&v["rejoin_converge_ms"]["p50"], 0)),
        ],
    ]
}
