//! The dashboard's live view: one JSON snapshot of every service, rebuilt every
//! [`PERIOD`] and right after any controller event (flip, transition, check), so a change is
//! on screen well within a second. All browsers share the same snapshot.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::{
    config::Color,
    controller::{now_ms, view::CatalogEntry, Event, Shared},
    telemetry::{
        health::{BackendHealth, HealthBoard},
        maps::{MapReader, Sample},
    },
};

pub const PERIOD: Duration = Duration::from_millis(500);
/// Controller events kept for the page's event log.
const EVENTS: usize = 60;

#[derive(Serialize)]
struct ColorView<'a> {
    backend: &'a Option<String>,
    version: &'a Option<String>,
    validated: bool,
    packets: u64,
    bytes: u64,
    new_flows: u64,
    pinned: u64,
    resets: u64,
    unreachables: u64,
    health: Option<&'a BackendHealth>,
}

/// Builds the snapshot document from one catalog + sample + health reading.
pub fn document(
    catalog: &[CatalogEntry],
    sample: &Sample,
    health: &std::collections::BTreeMap<(String, Color), BackendHealth>,
    events: &VecDeque<Event>,
    mono_ns: u64,
) -> Value {
    let at_ms = now_ms();
    let services: Vec<Value> = catalog
        .iter()
        .filter_map(|e| {
            let s = sample.services.get(&e.id)?;
            let color = |c: Color| {
                let i = c.index() as usize;
                let slot = match c {
                    Color::Blue => &e.blue,
                    Color::Green => &e.green,
                };
                ColorView {
                    backend: &slot.backend,
                    version: &slot.version,
                    validated: slot.validated,
                    packets: s.counters[i].packets,
                    bytes: s.counters[i].bytes,
                    new_flows: s.counters[i].new_flows,
                    pinned: s.pinned[i],
                    resets: s.counters[i].resets,
                    unreachables: s.counters[i].unreachables,
                    health: health.get(&(e.name.clone(), c)),
                }
            };
            let active = Color::from_index(s.active.color());
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
        "flow_entries": sample.flow_entries,
    })
}

/// One snapshot document, as JSON text.
pub async fn build(
    shared: &Shared,
    reader: &Arc<MapReader>,
    board: &HealthBoard,
    events: &VecDeque<Event>,
) -> Result<String> {
    let catalog = shared.lock().await.catalog();
    let ids: Vec<u32> = catalog.iter().map(|e| e.id).collect();
    let reader = reader.clone();
    let (sample, mono_ns) = tokio::task::spawn_blocking(move || -> Result<(Sample, u64)> {
        Ok((reader.sample(&ids)?, crate::datapath::monotonic_ns()?))
    })
    .await
    .context("sampling task")??;
    let doc = document(&catalog, &sample, &board.snapshot(), events, mono_ns);
    Ok(serde_json::to_string(&doc)?)
}

/// Publishes snapshots into `tx` while `viewers` (open event streams) is not zero, until
/// every receiver is gone. Without viewers it only keeps the event log.
pub async fn run(
    shared: Shared,
    reader: Arc<MapReader>,
    board: HealthBoard,
    tx: watch::Sender<Arc<String>>,
    viewers: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut rx = shared.lock().await.subscribe();
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
        match build(&shared, &reader, &board, &events).await {
            Ok(doc) => {
                if tx.send(Arc::new(doc)).is_err() {
                    return;
                }
            }
            Err(e) => warn!("dashboard snapshot: {e:#}"),
        }
    }
}
