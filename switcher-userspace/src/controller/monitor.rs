//! Continuous health of every backend, blue and green, whether a deployment runs or not: the
//! dashboard shows it and `/metrics` exports it. Probes are the validation's own checks.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    config::Color,
    controller::{now_ms, Shared},
    probe::health::check_once,
};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendHealth {
    pub backend: String,
    pub up: bool,
    pub latency_seconds: f64,
    pub checked_at_ms: u64,
    pub error: Option<String>,
    pub ok_total: u64,
    pub failed_total: u64,
}

/// Latest probe result per (service, colour).
#[derive(Debug, Clone, Default)]
pub struct HealthBoard(Arc<Mutex<BTreeMap<(String, Color), BackendHealth>>>);

impl HealthBoard {
    pub fn snapshot(&self) -> BTreeMap<(String, Color), BackendHealth> {
        match self.0.lock() {
            Ok(m) => m.clone(),
            // A panicking prober leaves the last complete results behind: still valid.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn record(&self, service: &str, color: Color, backend: String, result: Result<f64, String>) {
        let mut m = match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let e = m
            .entry((service.to_string(), color))
            .or_insert_with(|| BackendHealth {
                backend: backend.clone(),
                up: false,
                latency_seconds: 0.0,
                checked_at_ms: 0,
                error: None,
                ok_total: 0,
                failed_total: 0,
            });
        if e.backend != backend {
            // A new deployment in this slot: the old backend's counts do not carry over.
            e.ok_total = 0;
            e.failed_total = 0;
            e.backend = backend;
        }
        e.checked_at_ms = now_ms();
        match result {
            Ok(latency) => {
                e.up = true;
                e.latency_seconds = latency;
                e.error = None;
                e.ok_total += 1;
            }
            Err(err) => {
                e.up = false;
                e.error = Some(err);
                e.failed_total += 1;
            }
        }
    }

    /// Forgets services or colours that no longer have a backend to probe.
    fn retain(&self, live: &[(String, Color)]) {
        let mut m = match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.retain(|k, _| live.contains(k));
    }
}

/// Probes every backend once per `interval`, all concurrently, until aborted.
pub async fn monitor(shared: Shared, board: HealthBoard, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let catalog = shared.lock().await.catalog();
        let mut probes = tokio::task::JoinSet::new();
        let mut live = Vec::new();
        for entry in catalog.iter() {
            for color in [Color::Blue, Color::Green] {
                let Some(spec) = entry.health[color.index() as usize].clone() else {
                    continue;
                };
                let slot = match color {
                    Color::Blue => &entry.blue,
                    Color::Green => &entry.green,
                };
                let backend = slot.backend.clone().unwrap_or_default();
                live.push((entry.name.clone(), color));
                let (board, service) = (board.clone(), entry.name.clone());
                probes.spawn(async move {
                    let start = Instant::now();
                    let result = check_once(&spec)
                        .await
                        .map(|()| start.elapsed().as_secs_f64());
                    board.record(&service, color, backend, result);
                });
            }
        }
        while probes.join_next().await.is_some() {}
        board.retain(&live);
    }
}
