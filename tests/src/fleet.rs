//! A fleet in the lab (issue 10): `n` edge hosts, each a [`Rig`] (its own lab, daemon, XDP
//! and sinks) with a `[fleet]` section, and a real etcd ([`Etcd`]) on the control net every
//! edge joins. Shared by the fleet tests, the fleet benchmark, `cargo xtask lab up --hosts`
//! and the fleet demo.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use switcher::{
    api::Request,
    fleet::{FleetFlip, FleetStatus},
};

pub use crate::services::fleet_section;
use crate::{
    lab::Etcd,
    poll,
    rig::{self, Rig},
};

/// A running fleet. The etcd goes first when it is dropped (fields drop in order), before the
/// labs it joins.
pub struct FleetLab {
    pub etcd: Etcd,
    pub rigs: Vec<Rig>,
}

impl FleetLab {
    /// `n` hosts with the standard services (`checks` appended to each) and an etcd of
    /// `members` members; returns once every host reports in sync.
    pub fn up(tag: &str, n: usize, members: usize, checks: &str) -> Result<FleetLab> {
        let services = rig::standard_services("redirect", checks);
        let mut rigs = Vec::new();
        for i in 0..n {
            let text = format!("{}{services}", fleet_section(tag, i, members));
            rigs.push(Rig::up(&format!("{tag}{i}"), &text).with_context(|| format!("host {i}"))?);
        }
        let first = rigs.first().context("a fleet needs a host")?;
        let etcd = Etcd::up(&first.lab, members)?;
        for (i, r) in rigs.iter().enumerate() {
            etcd.connect(&r.lab, i)?;
        }
        let fleet = FleetLab { etcd, rigs };
        if fleet.wait_in_sync(0, Duration::from_secs(20)).is_err() {
            // Seen about once in twenty lab builds: one edge's TCP to etcd times out while
            // its ping (checked by connect) goes through. Its control link is made anew once.
            let status = status(&fleet.rigs[0])?;
            for (i, r) in fleet.rigs.iter().enumerate() {
                let host = format!("edge-{i}");
                if !status.hosts.iter().any(|h| h.host == host && h.connected) {
                    eprintln!("fleet lab: {host} did not join; its control link is made anew");
                    fleet.etcd.disconnect(&r.lab)?;
                    fleet.etcd.connect(&r.lab, i)?;
                }
            }
        }
        if let Err(e) = fleet.wait_in_sync(0, Duration::from_secs(30)) {
            let logs: Vec<String> = fleet
                .rigs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let tail = r
                        .daemon()
                        .map_or("no daemon".to_string(), |d| d.stderr_tail(15));
                    format!("edge-{i}:\n{tail}")
                })
                .collect();
            bail!("{e:#}\n{}", logs.join("\n"));
        }
        Ok(fleet)
    }

    /// Until host `from` sees every host connected and none in drift; how long it took.
    pub fn wait_in_sync(&self, from: usize, timeout: Duration) -> Result<Duration> {
        wait_in_sync(&self.rigs[from], self.rigs.len(), timeout)
    }
}

/// `switcher fleet status` as `rig`'s daemon answers it.
pub fn status(rig: &Rig) -> Result<FleetStatus> {
    serde_json::from_value(rig.call(&Request::FleetStatus)?).context("decoding fleet status")
}

/// Until `rig` sees `n` connected hosts, none in drift; how long it took.
pub fn wait_in_sync(rig: &Rig, n: usize, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    poll::until_state_every(
        &format!("{n} hosts in sync"),
        timeout,
        Duration::from_millis(20),
        || {
            let s = status(rig)?;
            let live = s.hosts.iter().filter(|h| h.connected).count();
            Ok(if s.connected && live == n && s.in_drift == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{live} connected, {} in drift: {:?}",
                    s.in_drift,
                    s.hosts
                        .iter()
                        .map(|h| (&h.host, &h.drift))
                        .collect::<Vec<_>>()
                ))
            })
        },
    )?;
    Ok(start.elapsed())
}

/// A fleet flip of `service` to `to` asked on `rig` (forced, with a reason).
pub fn flip(rig: &Rig, service: &str, to: switcher::domain::Color) -> Result<FleetFlip> {
    let v = rig.call(&Request::Flip {
        service: service.into(),
        to,
        force: true,
        reason: Some("fleet lab".into()),
        local: false,
    })?;
    let r: FleetFlip = serde_json::from_value(v).context("decoding the fleet reply")?;
    if r.hosts.iter().any(|h| h.result != "applied") {
        bail!("not every host applied: {r:?}");
    }
    Ok(r)
}
