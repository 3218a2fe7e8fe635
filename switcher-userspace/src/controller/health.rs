//! The latest health of every pool member, blue and green, as the health monitor last probed
//! it: the dashboard shows it, `/metrics` exports it, and its verdicts (with hysteresis) take
//! members out of their pool's table and put them back.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};

use crate::domain::{now_ms, Color};

/// Consecutive failed probes that take a member out of service, and consecutive passed ones
/// that put it back: one lost probe does not move flows, and a flapping member is not put
/// back on its first good answer.
pub const DOWN_AFTER: u32 = 2;
pub const UP_AFTER: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendHealth {
    pub backend: String,
    pub up: bool,
    pub latency_seconds: f64,
    pub checked_at_ms: u64,
    pub error: Option<String>,
    pub ok_total: u64,
    pub failed_total: u64,
    /// In its pool's table (new flows reach it); see [`DOWN_AFTER`] and [`UP_AFTER`].
    #[serde(default = "yes")]
    pub in_service: bool,
    /// Probes in a row with the latest result.
    #[serde(default)]
    pub streak: u32,
}

fn yes() -> bool {
    true
}

/// Board key: service, colour, member.
pub type MemberKey = (String, Color, SocketAddr);

/// Latest probe result per pool member.
#[derive(Debug, Clone, Default)]
pub struct HealthBoard(Arc<Mutex<BTreeMap<MemberKey, BackendHealth>>>);

impl HealthBoard {
    pub fn snapshot(&self) -> BTreeMap<MemberKey, BackendHealth> {
        // A panicking prober leaves the last complete results behind: still valid.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The members of one colour of `service`, in address order.
    pub fn members(&self, service: &str, color: Color) -> Vec<BackendHealth> {
        self.snapshot()
            .into_iter()
            .filter(|((s, c, _), _)| s == service && *c == color)
            .map(|(_, h)| h)
            .collect()
    }

    /// Records one probe; returns the member's new service state when this probe changed it.
    pub(super) fn record(
        &self,
        service: &str,
        color: Color,
        member: SocketAddr,
        result: Result<f64, String>,
    ) -> Option<bool> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let e = m
            .entry((service.to_string(), color, member))
            .or_insert_with(|| BackendHealth {
                backend: member.to_string(),
                up: false,
                latency_seconds: 0.0,
                checked_at_ms: 0,
                error: None,
                ok_total: 0,
                failed_total: 0,
                in_service: true,
                streak: 0,
            });
        e.checked_at_ms = now_ms();
        let was_up = e.up;
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
        // A first probe counts as a streak of its own; the streak counts probes since the
        // last change of `up`.
        e.streak = if e.up == was_up && e.ok_total + e.failed_total > 1 {
            e.streak.saturating_add(1)
        } else {
            1
        };
        let change = match (e.in_service, e.up) {
            (true, false) if e.streak >= DOWN_AFTER => Some(false),
            (false, true) if e.streak >= UP_AFTER => Some(true),
            _ => None,
        };
        if let Some(s) = change {
            e.in_service = s;
        }
        change
    }

    /// Forgets members no longer in any pool.
    pub(super) fn retain(&self, live: &BTreeSet<MemberKey>) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_leaves_after_two_failures_and_returns_after_two_successes() {
        let b = HealthBoard::default();
        let m: SocketAddr = "198.18.2.3:514".parse().expect("addr");
        let probe = |r: Result<f64, String>| b.record("svc", Color::Green, m, r);
        assert_eq!(probe(Ok(0.001)), None, "healthy from the start");
        assert_eq!(
            probe(Err("refused".into())),
            None,
            "one failure is not enough"
        );
        assert_eq!(probe(Ok(0.001)), None);
        assert_eq!(probe(Err("refused".into())), None);
        assert_eq!(probe(Err("refused".into())), Some(false), "second in a row");
        assert_eq!(probe(Err("refused".into())), None, "already out");
        assert!(!b.members("svc", Color::Green)[0].in_service);
        assert_eq!(probe(Ok(0.001)), None, "one success is not enough");
        assert_eq!(probe(Ok(0.001)), Some(true));
        assert!(b.members("svc", Color::Green)[0].in_service);
        // A member that fails from its very first probe leaves after two.
        let n: SocketAddr = "198.18.2.4:514".parse().expect("addr");
        assert_eq!(b.record("svc", Color::Green, n, Err("x".into())), None);
        assert_eq!(
            b.record("svc", Color::Green, n, Err("x".into())),
            Some(false)
        );
        b.retain(&BTreeSet::from([("svc".into(), Color::Green, n)]));
        assert_eq!(b.members("svc", Color::Green).len(), 1);
    }
}
