//! The latest health of every backend, blue and green, as the health monitor last probed it:
//! the dashboard shows it, `/metrics` exports it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::domain::{now_ms, Color};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

    pub(super) fn record(
        &self,
        service: &str,
        color: Color,
        backend: String,
        result: Result<f64, String>,
    ) {
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
    pub(super) fn retain(&self, live: &[(String, Color)]) {
        let mut m = match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.retain(|k, _| live.contains(k));
    }
}
