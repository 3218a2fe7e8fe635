//! What `status` and `history` show, built from the controller's state and the datapath.

use std::{fmt::Write as _, sync::Arc};

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

/// What the metrics and the dashboard need to know of one service besides its maps.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    pub name: String,
    pub id: u32,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub blue: SlotInfo,
    pub green: SlotInfo,
    /// How to probe each colour's backend (by colour index); None: nothing to probe.
    #[serde(skip)]
    pub health: [Option<crate::probe::health::HealthSpec>; 2],
    pub current: Option<Deployment>,
    /// The latest finished deployments, newest last.
    pub recent: Vec<Deployment>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub backend: Option<String>,
    pub version: Option<String>,
    pub validated: bool,
}

/// Finished deployments the dashboard shows per service.
const RECENT: usize = 8;

impl Controller {
    /// The services as metrics and the dashboard see them. Built once per change and shared:
    /// scrapes and dashboard samples hold the controller's lock only for an `Arc` clone
    /// unless something changed since the last build.
    pub fn catalog(&self) -> Arc<Vec<CatalogEntry>> {
        let now = self.changes.load(std::sync::atomic::Ordering::Relaxed);
        let mut cache = match self.catalog_cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((at, c)) = cache.as_ref() {
            if *at == now {
                return c.clone();
            }
        }
        let built = Arc::new(self.build_catalog());
        *cache = Some((now, built.clone()));
        built
    }

    fn build_catalog(&self) -> Vec<CatalogEntry> {
        let mut out = Vec::new();
        for s in super::effective(&self.cfg, &self.state) {
            let (Some(&id), Some(st)) = (self.ids.get(&s.name), self.state.services.get(&s.name))
            else {
                continue;
            };
            let slot = |c: Color| SlotInfo {
                backend: s.backend(c).map(|b| b.to_string()),
                version: st.slot(c).version.clone(),
                validated: st.slot(c).validated,
            };
            let probe = |c: Color| {
                let backend = s.backend(c)?;
                match &s.checks.health {
                    Some(h) => Some(super::validate::health_spec(h, s.protocol, backend)),
                    // A TCP service's own port answers a connect; UDP has nothing to ask.
                    None => (s.protocol == crate::config::Protocol::Tcp).then(|| {
                        crate::probe::health::HealthSpec {
                            tcp: Some(backend),
                            http_url: None,
                            successes: 1,
                            interval: std::time::Duration::from_secs(1),
                            deadline: std::time::Duration::from_secs(1),
                            timeout: std::time::Duration::from_secs(1),
                        }
                    }),
                }
            };
            let history = self.state.history.get(&s.name);
            let recent =
                history.map_or(Vec::new(), |h| h[h.len().saturating_sub(RECENT)..].to_vec());
            out.push(CatalogEntry {
                id,
                vip: s.vip.to_string(),
                port: s.port,
                protocol: s.protocol.to_string(),
                blue: slot(Color::Blue),
                green: slot(Color::Green),
                health: [probe(Color::Blue), probe(Color::Green)],
                current: st.current.clone(),
                recent,
                name: s.name,
            });
        }
        out
    }
}
