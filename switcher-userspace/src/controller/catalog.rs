//! The services as the metrics, the dashboard and the health monitor see them: built once per
//! change from the controller's state and shared, so a scrape holds the controller's lock only
//! for an `Arc` clone.

use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError},
    time::Duration,
};

use crate::{
    config::Service,
    deploy::Deployment,
    domain::{Color, Protocol},
    judge,
    probe::health::{HealthRounds, HealthSpec},
    state::{ServiceState, Slot},
};

/// Finished deployments the dashboard shows per service.
const RECENT: usize = 8;

/// What the metrics and the dashboard need to know of one service besides its maps.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub name: String,
    /// The datapath's id: the index of its counters, active word and flip mark.
    pub id: u32,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub blue: Slot,
    pub green: Slot,
    /// How to probe each member of each colour's pool (by colour index); empty: nothing to
    /// probe.
    pub health: [Vec<(SocketAddr, HealthSpec)>; 2],
    pub current: Option<Deployment>,
    /// The latest finished deployments, newest last.
    pub recent: Vec<Deployment>,
}

impl CatalogEntry {
    pub fn slot(&self, c: Color) -> &Slot {
        match c {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    pub(super) fn new(
        s: &Service,
        id: u32,
        st: &ServiceState,
        history: Option<&Vec<Deployment>>,
    ) -> Self {
        let spec = |backend: SocketAddr| match &s.checks.health {
            Some(h) => Some(judge::health_spec(h, s.protocol, backend)),
            // A TCP service's own port answers a connect; UDP has nothing to ask.
            None => (s.protocol == Protocol::Tcp).then(|| HealthSpec {
                tcp: Some(backend),
                http_url: None,
                rounds: HealthRounds {
                    successes: 1,
                    interval: Duration::from_secs(1),
                    deadline: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                },
            }),
        };
        let probe = |c: Color| {
            s.members(c)
                .iter()
                .filter_map(|m| Some((m.addr, spec(m.addr)?)))
                .collect()
        };
        let slot = |c: Color| Slot {
            members: s.members(c).to_vec(),
            ..st.slot(c).clone()
        };
        Self {
            name: s.name.clone(),
            id,
            vip: s.vip.to_string(),
            port: s.port,
            protocol: s.protocol.to_string(),
            blue: slot(Color::Blue),
            green: slot(Color::Green),
            health: [probe(Color::Blue), probe(Color::Green)],
            current: st.current.clone(),
            recent: history.map_or(Vec::new(), |h| h[h.len().saturating_sub(RECENT)..].to_vec()),
        }
    }
}

/// The last catalog built and the change count it was built at.
#[derive(Default)]
pub(super) struct CatalogCache(std::sync::Mutex<Option<(u64, Arc<Vec<CatalogEntry>>)>>);

impl CatalogCache {
    /// The cached catalog if it was built at change count `now`, else `build()`'s, cached.
    pub fn get_or_build(
        &self,
        now: u64,
        build: impl FnOnce() -> Vec<CatalogEntry>,
    ) -> Arc<Vec<CatalogEntry>> {
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, c)) = cache.as_ref() {
            if *at == now {
                return c.clone();
            }
        }
        let built = Arc::new(build());
        *cache = Some((now, built.clone()));
        built
    }
}
