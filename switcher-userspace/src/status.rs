//! What `switcher status` shows: built by the daemon from its maps, printed by the CLI.

use std::fmt::Write as _;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Color, Config},
    datapath::{service_key, Datapath},
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    /// Reason label → packets, summed over CPUs.
    pub reasons: Vec<(String, u64)>,
    pub flows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub active: Color,
    pub generation: u32,
    pub blue: ColorStatus,
    pub green: ColorStatus,
    pub last_flip: Option<FlipStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColorStatus {
    pub backend: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub pin_misses: u64,
    pub resets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlipStatus {
    pub generation: u32,
    pub flip_ns: u64,
    /// Kernel time from the flip's map write to the first packet each colour then received.
    pub blue_first_after_ns: Option<u64>,
    pub green_first_after_ns: Option<u64>,
}

impl Status {
    pub fn collect(dp: &Datapath, cfg: &Config) -> Result<Status> {
        let present = dp.services()?;
        let mut services = Vec::new();
        for s in &cfg.services {
            let Some(v) = present.get(&service_key(s)) else {
                continue;
            };
            let active = dp.active(v.id)?;
            let mark = dp.flip_mark(v.id)?;
            let color = |c: Color| -> Result<ColorStatus> {
                let k = dp.color_counters(v.id, c)?;
                Ok(ColorStatus {
                    backend: s.backend(c).map(|a| a.to_string()),
                    packets: k.packets,
                    bytes: k.bytes,
                    new_flows: k.new_flows,
                    pin_misses: k.pin_misses,
                    resets: k.resets,
                })
            };
            let after = |c: Color| {
                let t = mark.first_ns[c.index() as usize];
                (t != 0).then(|| t.saturating_sub(mark.flip_ns))
            };
            services.push(ServiceStatus {
                name: s.name.clone(),
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                active: Color::from_index(active.color()),
                generation: active.generation(),
                blue: color(Color::Blue)?,
                green: color(Color::Green)?,
                last_flip: (mark.flip_ns != 0).then(|| FlipStatus {
                    generation: mark.generation,
                    flip_ns: mark.flip_ns,
                    blue_first_after_ns: after(Color::Blue),
                    green_first_after_ns: after(Color::Green),
                }),
            });
        }
        let reasons = dp
            .reason_counters()?
            .into_iter()
            .map(|(r, n)| (r.label().to_string(), n))
            .collect();
        Ok(Status {
            services,
            reasons,
            flows: dp.flow_count()?,
        })
    }

    /// Human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.services {
            let vip = match s.vip.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, s.port).to_string(),
                Err(_) => format!("{}:{}", s.vip, s.port),
            };
            let _ = writeln!(
                out,
                "{}  {vip}/{}  active={} (generation {})",
                s.name, s.protocol, s.active, s.generation
            );
            for (c, st) in [(Color::Blue, &s.blue), (Color::Green, &s.green)] {
                let mark = if c == s.active { "*" } else { " " };
                let _ = writeln!(
                    out,
                    "  {mark}{c:<6} {:<28} packets={:<10} bytes={:<12} new_flows={:<8} pin_misses={}",
                    st.backend.as_deref().unwrap_or("-"),
                    st.packets,
                    st.bytes,
                    st.new_flows,
                    st.pin_misses
                );
            }
            if let Some(f) = &s.last_flip {
                let fmt = |v: Option<u64>| {
                    v.map_or("-".to_string(), |ns| format!("{:.1} µs", ns as f64 / 1e3))
                };
                let _ = writeln!(
                    out,
                    "   last flip: generation {}, first packet after it: blue {}, green {}",
                    f.generation,
                    fmt(f.blue_first_after_ns),
                    fmt(f.green_first_after_ns)
                );
            }
        }
        let _ = writeln!(out, "flows tracked: {}", self.flows);
        let nonzero: Vec<String> = self
            .reasons
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "reasons: {}",
            if nonzero.is_empty() {
                "-".into()
            } else {
                nonzero.join(" ")
            }
        );
        out
    }
}
