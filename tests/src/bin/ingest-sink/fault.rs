//! Fault injection: the settings behind `GET`/`POST /fault` (failing health, slow acks, errors
//! reported in the metrics) and the ticker that turns an error rate into counter increments.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::metrics::SinkState;

/// Bounds on injected faults: large enough for any test, small enough that a
/// typo cannot wedge the sink (an ack delay of days) or spin it.
pub(crate) const MAX_ACK_DELAY_MS: u64 = 600_000;
const MAX_ERRORS_PER_SEC: u64 = 1_000_000;
/// How often the injected-error ticker adds to the counter.
const INJECT_TICK: Duration = Duration::from_millis(100);

/// The fault settings as `GET /fault` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FaultSettings {
    /// false: /health answers 503.
    pub(crate) health_ok: bool,
    /// Every --ack acknowledgement waits this long.
    pub(crate) ack_delay_ms: u64,
    /// `ingest_errors_total{reason="injected"}` grows by this much per second.
    pub(crate) errors_per_sec: u64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            health_ok: true,
            ack_delay_ms: 0,
            errors_per_sec: 0,
        }
    }
}

/// A `POST /fault` body: every field optional, a missing one is left unchanged.
/// Unknown fields are rejected so a typo is not silently a no-op.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultUpdate {
    health_ok: Option<bool>,
    ack_delay_ms: Option<u64>,
    errors_per_sec: Option<u64>,
}

impl FaultUpdate {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        let update: Self =
            serde_json::from_slice(body).map_err(|e| format!("invalid fault JSON: {e}"))?;
        if update.ack_delay_ms.is_some_and(|ms| ms > MAX_ACK_DELAY_MS) {
            return Err(format!("ack_delay_ms must be at most {MAX_ACK_DELAY_MS}"));
        }
        if update
            .errors_per_sec
            .is_some_and(|n| n > MAX_ERRORS_PER_SEC)
        {
            return Err(format!(
                "errors_per_sec must be at most {MAX_ERRORS_PER_SEC}"
            ));
        }
        Ok(update)
    }

    pub(crate) fn apply(&self, current: FaultSettings) -> FaultSettings {
        FaultSettings {
            health_ok: self.health_ok.unwrap_or(current.health_ok),
            ack_delay_ms: self.ack_delay_ms.unwrap_or(current.ack_delay_ms),
            errors_per_sec: self.errors_per_sec.unwrap_or(current.errors_per_sec),
        }
    }
}

/// Live fault settings, read on hot paths (every ack), hence atomics. An update
/// is validated as a whole before any field is stored.
pub(crate) struct Faults {
    health_ok: AtomicBool,
    ack_delay_ms: AtomicU64,
    errors_per_sec: AtomicU64,
}

impl Faults {
    pub(crate) fn new(initial: FaultSettings) -> Self {
        Self {
            health_ok: AtomicBool::new(initial.health_ok),
            ack_delay_ms: AtomicU64::new(initial.ack_delay_ms),
            errors_per_sec: AtomicU64::new(initial.errors_per_sec),
        }
    }

    pub(crate) fn get(&self) -> FaultSettings {
        FaultSettings {
            health_ok: self.health_ok.load(Ordering::Relaxed),
            ack_delay_ms: self.ack_delay_ms.load(Ordering::Relaxed),
            errors_per_sec: self.errors_per_sec.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set(&self, settings: FaultSettings) {
        self.health_ok.store(settings.health_ok, Ordering::Relaxed);
        self.ack_delay_ms
            .store(settings.ack_delay_ms, Ordering::Relaxed);
        self.errors_per_sec
            .store(settings.errors_per_sec, Ordering::Relaxed);
    }

    pub(crate) fn ack_delay(&self) -> Duration {
        Duration::from_millis(self.ack_delay_ms.load(Ordering::Relaxed))
    }
}

/// Turns a rate into whole counter increments: after t seconds at rate r the
/// counter has grown by exactly ⌊r·t⌋, however the ticks fall. A rate change
/// starts a new count from that moment.
#[derive(Debug)]
struct ErrorPacer {
    rate: u64,
    since: Instant,
    done: u64,
}

impl ErrorPacer {
    fn new(now: Instant) -> Self {
        Self {
            rate: 0,
            since: now,
            done: 0,
        }
    }

    /// Increments due at `now` under `rate` per second.
    fn due(&mut self, rate: u64, now: Instant) -> u64 {
        if rate != self.rate {
            *self = Self {
                rate,
                since: now,
                done: 0,
            };
        }
        let ms = now.saturating_duration_since(self.since).as_millis();
        let total = u64::try_from(u128::from(rate) * ms / 1000).unwrap_or(u64::MAX);
        let add = total.saturating_sub(self.done);
        self.done = total;
        add
    }
}

/// Background ticker behind `errors_per_sec`.
pub(crate) async fn inject_errors(shared: Arc<SinkState>) {
    let mut tick = tokio::time::interval(INJECT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pacer = ErrorPacer::new(Instant::now());
    loop {
        tick.tick().await;
        let rate = shared.faults.errors_per_sec.load(Ordering::Relaxed);
        let add = pacer.due(rate, Instant::now());
        if add > 0 {
            shared.injected_errors.inc_by(add);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_update_parsing() -> Result<(), String> {
        assert_eq!(FaultUpdate::parse(b"{}")?, FaultUpdate::default());
        assert_eq!(
            FaultUpdate::parse(br#"{"health_ok": false, "ack_delay_ms": 250}"#)?,
            FaultUpdate {
                health_ok: Some(false),
                ack_delay_ms: Some(250),
                errors_per_sec: None,
            }
        );
        // null is "leave unchanged", like a missing field.
        assert_eq!(
            FaultUpdate::parse(br#"{"errors_per_sec": 5, "health_ok": null}"#)?,
            FaultUpdate {
                errors_per_sec: Some(5),
                ..FaultUpdate::default()
            }
        );
        for (body, want) in [
            (&b""[..], "invalid fault JSON"),
            (b"[]", "invalid fault JSON"),
            (br#"{"health": false}"#, "unknown field `health`"),
            (br#"{"health_ok": "no"}"#, "invalid type"),
            (br#"{"ack_delay_ms": -1}"#, "invalid value"),
            (br#"{"ack_delay_ms": 600001}"#, "at most 600000"),
            (br#"{"errors_per_sec": 1000001}"#, "at most 1000000"),
        ] {
            match FaultUpdate::parse(body) {
                Ok(u) => panic!("{:?} accepted: {u:?}", String::from_utf8_lossy(body)),
                Err(e) => assert!(e.contains(want), "{e}"),
            }
        }
        Ok(())
    }

    #[test]
    fn fault_update_leaves_missing_fields_alone() -> Result<(), String> {
        let start = FaultSettings {
            health_ok: false,
            ack_delay_ms: 10,
            errors_per_sec: 3,
        };
        assert_eq!(FaultUpdate::parse(b"{}")?.apply(start), start);
        let got = FaultUpdate::parse(br#"{"health_ok": true}"#)?.apply(start);
        assert_eq!(
            got,
            FaultSettings {
                health_ok: true,
                ..start
            }
        );
        let faults = Faults::new(FaultSettings::default());
        faults.set(got);
        assert_eq!(faults.get(), got);
        assert_eq!(faults.ack_delay(), Duration::from_millis(10));
        Ok(())
    }

    #[test]
    fn fault_settings_json_shape() -> Result<(), serde_json::Error> {
        let json = serde_json::to_string(&FaultSettings::default())?;
        assert_eq!(
            json,
            r#"{"health_ok":true,"ack_delay_ms":0,"errors_per_sec":0}"#
        );
        Ok(())
    }

    #[test]
    fn error_pacer_counts_exactly() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = ErrorPacer::new(t0);
        assert_eq!(p.due(0, at(500)), 0);
        // Rate 7/s from 1000 ms: ticks at uneven times still sum to ⌊7·t⌋.
        assert_eq!(p.due(7, at(1000)), 0);
        let mut total = 0;
        for ms in [1100, 1250, 1333, 1700, 2000, 2999, 3000] {
            total += p.due(7, at(ms));
        }
        assert_eq!(total, 14);
        // A rate change restarts the count from that moment.
        assert_eq!(p.due(1000, at(3000)), 0);
        assert_eq!(p.due(1000, at(3100)), 100);
        assert_eq!(p.due(0, at(4000)), 0);
        assert_eq!(p.due(0, at(9000)), 0);
    }

    #[tokio::test]
    async fn ticker_injects_errors_at_the_rate() {
        let shared = Arc::new(SinkState::new(
            "blue",
            FaultSettings {
                errors_per_sec: 100,
                ..FaultSettings::default()
            },
        ));
        let ticker = tokio::spawn(inject_errors(shared.clone()));
        tokio::time::sleep(Duration::from_millis(450)).await;
        ticker.abort();
        // ≈ 100/s over the ticks that fell within 450 ms (the first at 0 adds nothing).
        let got = shared.injected_errors.get();
        assert!((10..=50).contains(&got), "{got}");
    }
}
