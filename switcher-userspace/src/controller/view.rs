//! What `status` and `history` show, built from the controller's state and the datapath.

use std::fmt::Write as _;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Controller;
use crate::{
    config::Color,
    deploy::{Deployment, Phase},
    status::{ColorStatus, FlipStatus},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub services: Vec<ServiceView>,
    pub reasons: Vec<(String, u64)>,
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
    pub blue: SlotView,
    pub green: SlotView,
    pub last_flip: Option<FlipStatus>,
    pub deployment: Option<DeploymentView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotView {
    pub version: Option<String>,
    pub validated: bool,
    #[serde(flatten)]
    pub traffic: ColorStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: u64,
    pub phase: Phase,
    pub color: Color,
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
            backend: d.backend.to_string(),
            version: d.version.clone(),
            since_ms: last.map_or(0, |t| t.at_ms),
            actor: last.map_or(String::new(), |t| t.actor.clone()),
            reason: last.map_or(String::new(), |t| t.reason.clone()),
            watch_until_ms: d.watch_until_ms,
            warm_until_ms: d.warm_until_ms,
        }
    }
}

impl Controller {
    pub fn status(&self, only: Option<&str>) -> Result<StatusView> {
        let base = crate::status::Status::collect(&self.dp, &self.effective_config())?;
        let mut services = Vec::new();
        for s in base.services {
            if only.is_some_and(|n| n != s.name) {
                continue;
            }
            let st = self.state.services.get(&s.name);
            let slot = |c: Color, traffic: ColorStatus| SlotView {
                version: st.and_then(|st| st.slot(c).version.clone()),
                validated: st.is_some_and(|st| st.slot(c).validated),
                traffic,
            };
            services.push(ServiceView {
                blue: slot(Color::Blue, s.blue),
                green: slot(Color::Green, s.green),
                deployment: st
                    .and_then(|st| st.current.as_ref())
                    .map(DeploymentView::of),
                name: s.name,
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
                active: s.active,
                generation: s.generation,
                last_flip: s.last_flip,
            });
        }
        if let Some(n) = only {
            if services.is_empty() {
                anyhow::bail!("no service named {n:?}");
            }
        }
        Ok(StatusView {
            services,
            reasons: base.reasons,
            flows: base.flows,
        })
    }

    fn effective_config(&self) -> crate::config::Config {
        let mut cfg = self.cfg.clone();
        cfg.services = super::effective(&self.cfg, &self.state);
        cfg
    }
}

/// Unix milliseconds as RFC 3339 UTC.
pub fn fmt_time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

impl StatusView {
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
            for (c, slot) in [(Color::Blue, &s.blue), (Color::Green, &s.green)] {
                let mark = if c == s.active { "*" } else { " " };
                let t = &slot.traffic;
                let _ = writeln!(
                    out,
                    "  {mark}{c:<6} {:<26} {:<10} {:<9} packets={:<9} new_flows={:<6} pin_misses={:<4} resets={:<4} unreachables={}",
                    t.backend.as_deref().unwrap_or("-"),
                    slot.version.as_deref().unwrap_or("-"),
                    if slot.validated { "validated" } else { "unproven" },
                    t.packets,
                    t.new_flows,
                    t.pin_misses,
                    t.resets,
                    t.unreachables
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
            if let Some(d) = &s.deployment {
                let _ = writeln!(
                    out,
                    "   deployment {}: {} {} {} is {} since {} ({}: {})",
                    d.id,
                    d.color,
                    d.backend,
                    d.version.as_deref().unwrap_or(""),
                    d.phase,
                    fmt_time(d.since_ms),
                    d.actor,
                    d.reason
                );
                if let Some(w) = d.watch_until_ms.filter(|_| d.phase == Phase::Promoted) {
                    let _ = writeln!(out, "   watching until {}", fmt_time(w));
                }
                if let Some(w) = d.warm_until_ms.filter(|_| d.phase == Phase::Stable) {
                    let _ = writeln!(
                        out,
                        "   {} kept warm for rollback until {}",
                        d.color.other(),
                        fmt_time(w)
                    );
                }
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

/// Human-readable history of deployments, oldest first.
pub fn render_history(ds: &[Deployment]) -> String {
    let mut out = String::new();
    if ds.is_empty() {
        out.push_str("no deployments yet\n");
    }
    for d in ds {
        let _ = writeln!(
            out,
            "deployment {}: {} {} {} -> {}",
            d.id,
            d.color,
            d.backend,
            d.version.as_deref().unwrap_or(""),
            d.phase
        );
        for t in &d.transitions {
            let _ = writeln!(
                out,
                "  {}  {:<20} {:<24} {}",
                fmt_time(t.at_ms),
                t.to.to_string(),
                t.actor,
                t.reason
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(fmt_time(1_795_478_400_000), "2026-11-24T00:00:00.000Z");
    }
}
