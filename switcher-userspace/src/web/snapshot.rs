//! The dashboard's live view: one JSON snapshot of every service, rebuilt every
//! [`PERIOD`] and right after any controller event (flip, transition, check), so a change is
//! on screen well within a second. All browsers share the same snapshot.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::{
    controller::{
        BackendHealth, CatalogEntry, ColorView, Controller, Event, MemberKey, MemberView,
    },
    datapath::{monotonic_ns, read::Readings, MapReader},
    domain::{now_ms, Color},
};

pub const PERIOD: Duration = Duration::from_millis(500);
/// Controller events kept for the page's event log.
const EVENTS: usize = 60;

/// Builds the snapshot document from one catalog + readings + health board.
pub fn document(
    catalog: &[CatalogEntry],
    readings: &Readings,
    health: &std::collections::BTreeMap<MemberKey, BackendHealth>,
    events: &VecDeque<Event>,
    mono_ns: u64,
) -> Value {
    let at_ms = now_ms();
    let services: Vec<Value> = catalog
        .iter()
        .filter_map(|e| {
            let s = readings.services.get(&e.id)?;
            let color = |c: Color| {
                let probed: Vec<BackendHealth> = health
                    .iter()
                    .filter(|((n, hc, _), _)| *n == e.name && *hc == c)
                    .map(|(_, h)| h.clone())
                    .collect();
                let members = MemberView::join(
                    &e.slot(c).members,
                    readings
                        .members
                        .get(&(e.id, c.index()))
                        .map_or(&[][..], Vec::as_slice),
                    &readings.census,
                    &probed,
                );
                ColorView::new(e.slot(c), s, c, readings.census.pinned(e.id, c), members)
            };
            let active = s.active_color();
            let last_flip = (s.mark.flip_ns != 0).then(|| {
                let first = s.mark.first_ns[active.index() as usize];
                json!({
                    "at_ms": at_ms.saturating_sub(mono_ns.saturating_sub(s.mark.flip_ns) / 1_000_000),
                    "cutover_us": (first >= s.mark.flip_ns).then(|| (first - s.mark.flip_ns) / 1000),
                })
            });
            Some(json!({
                "name": e.name,
                "vip": e.vip,
                "port": e.port,
                "protocol": e.protocol,
                "active": active,
                "generation": s.active.generation(),
                "colors": { "blue": color(Color::Blue), "green": color(Color::Green) },
                "last_flip": last_flip,
                "deployment": e.current,
                "recent": e.recent,
            }))
        })
        .collect();
    json!({
        "at_ms": at_ms,
        "version": env!("CARGO_PKG_VERSION"),
        "services": services,
        "events": events,
        "flow_entries": readings.census.entries,
    })
}

/// One snapshot document, as JSON text.
pub async fn build(
    ctl: &Controller,
    reader: &Arc<MapReader>,
    events: &VecDeque<Event>,
) -> Result<String> {
    let catalog = ctl.catalog().await;
    let ids: Vec<u32> = catalog.iter().map(|e| e.id).collect();
    let reader = reader.clone();
    let (readings, mono_ns) = tokio::task::spawn_blocking(move || -> Result<(Readings, u64)> {
        Ok((reader.readings(&ids)?, monotonic_ns()?))
    })
    .await
    .context("sampling task")??;
    let doc = document(
        &catalog,
        &readings,
        &ctl.health().snapshot(),
        events,
        mono_ns,
    );
    Ok(serde_json::to_string(&doc)?)
}

/// Publishes snapshots into `tx` while `viewers` (open event streams) is not zero, until
/// every receiver is gone. Without viewers it only keeps the event log.
pub async fn run(
    ctl: Controller,
    reader: Arc<MapReader>,
    tx: watch::Sender<Arc<String>>,
    viewers: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut rx = ctl.subscribe();
    let mut events: VecDeque<Event> = VecDeque::with_capacity(EVENTS);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if events.len() == EVENTS {
                        events.pop_front();
                    }
                    events.push_back(ev);
                    // Take whatever else arrived in the same burst before rebuilding.
                    while let Ok(ev) = rx.try_recv() {
                        if events.len() == EVENTS {
                            events.pop_front();
                        }
                        events.push_back(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        if viewers.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            continue;
        }
        match build(&ctl, &reader, &events).await {
            Ok(doc) => {
                if tx.send(Arc::new(doc)).is_err() {
                    return;
                }
            }
            Err(e) => warn!("dashboard snapshot: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{datapath::ServiceReading, state::Slot};

    fn entry() -> CatalogEntry {
        let slot = |b: &str, trusted| Slot {
            members: vec![crate::config::Member::new(b.parse().expect("addr"))],
            deployed: false,
            version: None,
            trusted,
        };
        CatalogEntry {
            name: "udp4".into(),
            id: 3,
            vip: "198.18.10.10".into(),
            port: 514,
            protocol: "udp".into(),
            blue: slot("198.18.1.2:514", true),
            green: slot("198.18.2.2:514", false),
            health: [Vec::new(), Vec::new()],
            current: None,
            recent: Vec::new(),
        }
    }

    /// The page (dashboard/app.js) reads these keys; a rename would break it silently.
    #[test]
    fn the_document_has_what_the_page_reads() {
        let mut readings = Readings::default();
        let mut r = ServiceReading {
            active: switcher_common::ActiveWord::new(Color::Green.index(), 5),
            ..Default::default()
        };
        r.mark.flip_ns = 2_000_000_000;
        r.mark.first_ns[Color::Green.index() as usize] = 2_000_300_000;
        r.counters[Color::Blue.index() as usize].packets = 10;
        readings.services.insert(3, r);
        readings.census.pinned.insert(3, [2, 0]);
        readings.census.entries = 2;
        let mut health = std::collections::BTreeMap::new();
        health.insert(
            (
                "udp4".to_string(),
                Color::Blue,
                "198.18.1.2:514".parse().expect("addr"),
            ),
            BackendHealth {
                backend: "198.18.1.2:514".into(),
                up: true,
                latency_seconds: 0.001,
                checked_at_ms: 1,
                error: None,
                ok_total: 1,
                failed_total: 0,
                in_service: true,
                streak: 1,
            },
        );
        // Someone without a reading (not in the maps yet) is left out.
        let mut missing = entry();
        missing.id = 9;
        let doc = document(
            &[entry(), missing],
            &readings,
            &health,
            &VecDeque::new(),
            3_000_000_000,
        );
        assert_eq!(doc["services"].as_array().map(Vec::len), Some(1));
        assert_eq!(doc["flow_entries"], 2);
        let s = &doc["services"][0];
        assert_eq!(
            (s["name"].as_str(), s["active"].as_str()),
            (Some("udp4"), Some("green"))
        );
        assert_eq!(s["generation"], 5);
        let blue = &s["colors"]["blue"];
        assert_eq!(
            (blue["packets"].as_u64(), blue["pinned"].as_u64()),
            (Some(10), Some(2))
        );
        assert_eq!(blue["validated"], true);
        assert_eq!(blue["health"]["up"], true);
        assert!(s["colors"]["green"]["health"].is_null());
        assert_eq!(s["colors"]["green"]["validated"], false);
        assert_eq!(s["last_flip"]["cutover_us"], 300);
        // The flip was 1 s before the sample: its wall time is about 1 s before `at_ms`.
        let at = doc["at_ms"].as_u64().expect("at_ms");
        let flipped = s["last_flip"]["at_ms"].as_u64().expect("flip at_ms");
        assert_eq!(at - flipped, 1000);
        for key in ["version", "events"] {
            assert!(doc.get(key).is_some(), "{key}");
        }
        for key in ["vip", "port", "protocol", "deployment", "recent"] {
            assert!(s.get(key).is_some(), "{key}");
        }
    }
}
