//! Metrics the controller records as things happen (flips, rollbacks, validations, flip
//! latency). Cheap atomic handles: the controller never waits on a scrape.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlipLabels {
    pub service: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub service: String,
    /// `manual` (an operator) or `auto` (the watch).
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub service: String,
    /// `passed` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepLabel {
    /// `closed`, `idle` or `service_gone`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

/// 1 µs .. ~0.5 s: a map write takes tens of µs, an API round trip with fsync a few ms.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 20)
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub flips: Family<FlipLabels, Counter>,
    pub rollbacks: Family<TriggerLabels, Counter>,
    pub validations: Family<ResultLabels, Counter>,
    /// 1 if the last validation of the service passed, 0 if it failed.
    pub last_validation_passed: Family<ServiceLabel, Gauge>,
    /// Duration of the flip's map writes (the controller's part of a flip).
    pub flip_write: Histogram,
    /// API request accepted until the map was written.
    pub flip_api: Histogram,
    pub last_flip_write: Family<ServiceLabel, Gauge<f64, AtomicU64>>,
    /// Established-connection entries the sweeper removed, by reason.
    pub flows_swept: Family<SweepLabel, Counter>,
    /// 1 if the last reload of the config file applied, 0 if it was refused (the daemon runs
    /// on the config it had); 1 from the start (the file it started with was valid).
    pub reload_ok: Gauge,
    /// When the config last applied (start or reload), Unix seconds.
    pub reload_ok_at: Gauge<f64, AtomicU64>,
}

impl Default for Recorded {
    fn default() -> Self {
        Self {
            flips: Family::default(),
            rollbacks: Family::default(),
            validations: Family::default(),
            last_validation_passed: Family::default(),
            flip_write: Histogram::new(latency_buckets()),
            flip_api: Histogram::new(latency_buckets()),
            last_flip_write: Family::default(),
            flows_swept: Family::default(),
            reload_ok: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            reload_ok_at: {
                let g = Gauge::<f64, AtomicU64>::default();
                g.set(crate::domain::now_ms() as f64 / 1000.0);
                g
            },
        }
    }
}

impl Recorded {
    pub fn flip(&self, service: &str, to: &str, write_seconds: f64) {
        self.flips
            .get_or_create(&FlipLabels {
                service: service.into(),
                to: to.into(),
            })
            .inc();
        self.flip_write.observe(write_seconds);
        self.last_flip_write
            .get_or_create(&ServiceLabel {
                service: service.into(),
            })
            .set(write_seconds);
    }

    /// A reload of the config file applied (`ok`) or was refused.
    pub fn reload(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_ok_at
                .set(crate::domain::now_ms() as f64 / 1000.0);
        }
    }

    pub fn rollback(&self, service: &str, auto: bool) {
        self.rollbacks
            .get_or_create(&TriggerLabels {
                service: service.into(),
                trigger: if auto { "auto" } else { "manual" }.into(),
            })
            .inc();
    }

    pub fn swept(&self, sweep: &crate::datapath::FlowSweep) {
        for (reason, n) in [
            ("closed", sweep.closed),
            ("idle", sweep.idle),
            ("service_gone", sweep.service_gone),
        ] {
            self.flows_swept
                .get_or_create(&SweepLabel {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
    }

    pub fn validation(&self, service: &str, passed: bool) {
        self.validations
            .get_or_create(&ResultLabels {
                service: service.into(),
                result: if passed { "passed" } else { "failed" }.into(),
            })
            .inc();
        self.last_validation_passed
            .get_or_create(&ServiceLabel {
                service: service.into(),
            })
            .set(passed as i64);
    }

    /// Adds clones of the handles to `r` (a registry built per scrape).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "flips",
            "Flips of a service's active colour, by target colour",
            self.flips.clone(),
        );
        r.register(
            "rollbacks",
            "Rollbacks to the previous colour, by trigger (manual or auto)",
            self.rollbacks.clone(),
        );
        r.register(
            "validations",
            "Validations of a candidate before a flip, by result",
            self.validations.clone(),
        );
        r.register(
            "last_validation_passed",
            "1 if the service's last validation passed, 0 if it failed",
            self.last_validation_passed.clone(),
        );
        r.register_with_unit(
            "flip_map_write",
            "Time the controller took to write a flip into the maps",
            Unit::Seconds,
            self.flip_write.clone(),
        );
        r.register_with_unit(
            "flip_api_latency",
            "Time from an API flip request being accepted to the map written",
            Unit::Seconds,
            self.flip_api.clone(),
        );
        r.register(
            "flow_entries_swept",
            "Established-connection entries removed from the protected flow table, by reason \
             (closed: after the closing grace; idle: no packet for the idle timeout; \
             service_gone: the service was removed)",
            self.flows_swept.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 if the last reload of the config file applied, 0 if it was refused",
            self.reload_ok.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the config file last applied (start or reload), Unix time",
            Unit::Seconds,
            self.reload_ok_at.clone(),
        );
        r.register_with_unit(
            "last_flip_map_write",
            "Map write time of the service's last flip",
            Unit::Seconds,
            self.last_flip_write.clone(),
        );
    }
}
