//! The datapath's view of the services (colours, counters, cutover times), read from its
//! maps; the controller adds the deployment state on top (`controller::StatusView`).

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
    pub unreachables: u64,
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
                    unreachables: k.unreachables,
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
}
