//! What `status` shows: each service with its two colours (slot and traffic), the last flip
//! and the deployment in progress. One [`ColorView`] shape serves `status` and the dashboard
//! alike (the dashboard fills in `health`); the CLI renders these (`cli::render`).

use serde::{Deserialize, Serialize};

use std::{collections::BTreeMap, net::SocketAddr};

use super::health::{BackendHealth, MemberKey};
use crate::{
    config::{describe, Member},
    datapath::{read::MemberReading, Census, ServiceReading},
    deploy::{Deployment, Phase},
    domain::Color,
    state::Slot,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub services: Vec<ServiceView>,
    /// Reason label → packets, summed over CPUs.
    pub reasons: Vec<(String, u64)>,
    /// Entries in the flow table.
    pub flows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub active: Color,
    pub generation: u32,
    pub blue: ColorView,
    pub green: ColorView,
    pub last_flip: Option<FlipStatus>,
    pub deployment: Option<DeploymentView>,
    /// The colour the last flip left, while it has collectors: may they be stopped yet?
    #[serde(default)]
    pub retiring: Option<super::retiring::Retiring>,
}

impl StatusView {
    /// Each member's last probe from the health monitor's board, and each pool's health.
    pub fn fill_health(&mut self, board: &BTreeMap<MemberKey, BackendHealth>) {
        for s in &mut self.services {
            for (c, view) in [(Color::Blue, &mut s.blue), (Color::Green, &mut s.green)] {
                for m in &mut view.members {
                    m.health = board.get(&(s.name.clone(), c, m.addr)).cloned();
                }
                view.health = pool_health(&view.members);
            }
        }
    }
}

impl ServiceView {
    pub fn color(&self, c: Color) -> &ColorView {
        match c {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

/// One colour of one service: its slot, what the datapath counted for it, and its health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColorView {
    /// The pool in one line (`ADDR:PORT` for a pool of one); null: no backend.
    pub backend: Option<String>,
    pub version: Option<String>,
    /// Known good (see [`Slot::trusted`]); `validated` on the wire, as before.
    #[serde(rename = "validated")]
    pub trusted: bool,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub pin_misses: u64,
    pub resets: u64,
    pub unreachables: u64,
    /// Open TCP flows pinned to this colour: what still drains after a flip away from it.
    #[serde(default)]
    pub pinned: u64,
    /// The health monitor's last probes: of the one member, or of the pool as a whole (up
    /// when every member is); null when nothing is probed.
    #[serde(default)]
    pub health: Option<BackendHealth>,
    /// Each member of the pool.
    #[serde(default)]
    pub members: Vec<MemberView>,
}

/// One member of a colour's pool: its share of new flows, its traffic and its health.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberView {
    pub addr: SocketAddr,
    pub weight: u8,
    /// Its share of the colour's new flows (its slots of the lookup table); 0 while out of
    /// service.
    pub share: f64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Open TCP connections pinned to it.
    pub pinned: u64,
    pub health: Option<BackendHealth>,
}

impl MemberView {
    /// The slot's members joined with what the datapath read of them (by address), the
    /// census (by counter slot) and the health board (by address).
    pub fn join(
        members: &[Member],
        readings: &[MemberReading],
        census: &Census,
        health: &[BackendHealth],
    ) -> Vec<MemberView> {
        members
            .iter()
            .map(|m| {
                let r = readings.iter().find(|r| r.addr == m.addr);
                let k = r.map(|r| r.counters).unwrap_or_default();
                let addr = m.addr.to_string();
                MemberView {
                    addr: m.addr,
                    weight: m.weight,
                    share: r.map_or(0.0, |r| r.share),
                    packets: k.packets,
                    bytes: k.bytes,
                    new_flows: k.new_flows,
                    pinned: r.map_or(0, |r| {
                        census.member_pinned.get(&r.slot).copied().unwrap_or(0)
                    }),
                    health: health.iter().find(|h| h.backend == addr).cloned(),
                }
            })
            .collect()
    }
}

/// A pool's health as one: its only member's, or every member's together (up when all are).
pub fn pool_health(members: &[MemberView]) -> Option<BackendHealth> {
    let probed: Vec<&BackendHealth> = members.iter().filter_map(|m| m.health.as_ref()).collect();
    match probed.as_slice() {
        [] => None,
        [one] if members.len() == 1 => Some((*one).clone()),
        all => {
            let mut h = all[0].clone();
            h.backend = format!("{} members", members.len());
            h.up = all.iter().all(|m| m.up) && all.len() == members.len();
            h.latency_seconds = all.iter().map(|m| m.latency_seconds).fold(0.0, f64::max);
            h.checked_at_ms = all.iter().map(|m| m.checked_at_ms).max().unwrap_or(0);
            h.error = all
                .iter()
                .find_map(|m| m.error.as_ref().map(|e| format!("{}: {e}", m.backend)));
            h.ok_total = all.iter().map(|m| m.ok_total).sum();
            h.failed_total = all.iter().map(|m| m.failed_total).sum();
            h.in_service = all.iter().any(|m| m.in_service);
            Some(h)
        }
    }
}

impl ColorView {
    pub fn new(
        slot: &Slot,
        reading: &ServiceReading,
        c: Color,
        pinned: u64,
        members: Vec<MemberView>,
    ) -> Self {
        let k = reading.counters(c);
        Self {
            backend: (!slot.members.is_empty()).then(|| describe(&slot.members)),
            version: slot.version.clone(),
            trusted: slot.trusted,
            packets: k.packets,
            bytes: k.bytes,
            new_flows: k.new_flows,
            pin_misses: k.pin_misses,
            resets: k.resets,
            unreachables: k.unreachables,
            pinned,
            health: pool_health(&members),
            members,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlipStatus {
    pub generation: u32,
    pub flip_ns: u64,
    /// Kernel time from the flip's map write to the first packet each colour then received.
    pub blue_first_after_ns: Option<u64>,
    pub green_first_after_ns: Option<u64>,
}

impl FlipStatus {
    /// The last flip of a service, if it was ever flipped.
    pub fn of(r: &ServiceReading) -> Option<Self> {
        (r.mark.flip_ns != 0).then(|| Self {
            generation: r.mark.generation,
            flip_ns: r.mark.flip_ns,
            blue_first_after_ns: r.first_after_flip_ns(Color::Blue),
            green_first_after_ns: r.first_after_flip_ns(Color::Green),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: u64,
    pub phase: Phase,
    pub color: Color,
    /// The candidate's pool in one line.
    pub backend: String,
    pub version: Option<String>,
    pub since_ms: u64,
    pub actor: String,
    pub reason: String,
    pub watch_until_ms: Option<u64>,
    pub warm_until_ms: Option<u64>,
}

impl DeploymentView {
    pub fn of(d: &Deployment) -> Self {
        let last = d.last();
        Self {
            id: d.id,
            phase: d.phase,
            color: d.color,
            backend: describe(&d.members),
            version: d.version.clone(),
            since_ms: last.map_or(0, |t| t.at_ms),
            actor: last.map_or(String::new(), |t| t.actor.clone()),
            reason: last.map_or(String::new(), |t| t.reason.clone()),
            watch_until_ms: d.watch_until_ms,
            warm_until_ms: d.warm_until_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documents scripts read (`status --json`, the dashboard): their keys are a contract.
    #[test]
    fn a_colour_is_documented_with_the_keys_scripts_read() {
        let addr: SocketAddr = "198.18.2.2:514".parse().expect("addr");
        let slot = Slot {
            members: vec![Member::new(addr)],
            deployed: true,
            version: Some("v2".into()),
            trusted: true,
        };
        let mut r = ServiceReading::default();
        r.counters[Color::Green.index() as usize].packets = 7;
        let reading = MemberReading {
            addr,
            slot: 4,
            share: 1.0,
            counters: switcher_common::MemberCounters {
                packets: 7,
                bytes: 70,
                new_flows: 1,
            },
        };
        let census = Census {
            member_pinned: [(4, 3)].into(),
            ..Default::default()
        };
        let members = MemberView::join(&slot.members, &[reading], &census, &[]);
        let v = serde_json::to_value(ColorView::new(&slot, &r, Color::Green, 3, members))
            .expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "backend": "198.18.2.2:514", "version": "v2", "validated": true,
                "packets": 7, "bytes": 0, "new_flows": 0, "pin_misses": 0, "resets": 0,
                "unreachables": 0, "pinned": 3, "health": null,
                "members": [{
                    "addr": "198.18.2.2:514", "weight": 1, "share": 1.0, "packets": 7,
                    "bytes": 70, "new_flows": 1, "pinned": 3, "health": null
                }]
            })
        );
        // Older documents without `pinned` and `health` still read.
        let old = serde_json::json!({
            "backend": null, "version": null, "validated": false, "packets": 1, "bytes": 2,
            "new_flows": 3, "pin_misses": 4, "resets": 5, "unreachables": 6
        });
        let c: ColorView = serde_json::from_value(old).expect("older colour");
        assert_eq!((c.pinned, c.unreachables, c.trusted), (0, 6, false));
    }

    #[test]
    fn the_last_flip_times_are_relative_to_the_map_write() {
        let mut r = ServiceReading::default();
        assert_eq!(FlipStatus::of(&r), None, "never flipped");
        r.mark.generation = 4;
        r.mark.flip_ns = 1_000;
        r.mark.first_ns[Color::Blue.index() as usize] = 1_350;
        assert_eq!(
            FlipStatus::of(&r),
            Some(FlipStatus {
                generation: 4,
                flip_ns: 1_000,
                blue_first_after_ns: Some(350),
                green_first_after_ns: None,
            })
        );
    }
}
