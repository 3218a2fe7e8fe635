//! The schedule: [`Plan`] says when each line is due (paced from t0, bounded by the deadline),
//! its seq and stream name.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use crate::line::Framing;

/// What every worker needs to know; read-only once the run starts.
pub(crate) struct Plan {
    pub(crate) target: SocketAddr,
    pub(crate) first_seq: u64,
    pub(crate) count: u64,
    /// Seconds between consecutive lines (globally); 0 = unpaced.
    pub(crate) interval: f64,
    pub(crate) stream: String,
    pub(crate) size: usize,
    pub(crate) framing: Framing,
    pub(crate) connections: u64,
    pub(crate) hold: Duration,
    pub(crate) t0: Instant,
    pub(crate) deadline: Instant,
}

impl Plan {
    /// When line `index` is due, or None if that is past the deadline.
    /// Deadlines come from t0, not from the previous send, so a late line
    /// doesn't push back all the following ones.
    pub(crate) fn due(&self, index: u64) -> Option<Instant> {
        let at = Duration::try_from_secs_f64(index as f64 * self.interval)
            .ok()
            .and_then(|offset| self.t0.checked_add(offset))?;
        (at < self.deadline).then_some(at)
    }

    pub(crate) fn seq(&self, index: u64) -> u64 {
        self.first_seq + index
    }

    pub(crate) fn stream_name(&self, connection: u64) -> String {
        if self.connections > 1 {
            format!("{}-c{connection}", self.stream)
        } else {
            self.stream.clone()
        }
    }
}

/// Sleeps until `when`; never spins.
pub(crate) fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        thread::sleep(when - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_bounded_by_deadline() {
        let t0 = Instant::now();
        let plan = Plan {
            target: SocketAddr::from(([127, 0, 0, 1], 9)),
            first_seq: 5,
            count: 100,
            interval: 0.5,
            stream: "s".into(),
            size: 0,
            framing: Framing::Octet,
            connections: 2,
            hold: Duration::ZERO,
            t0,
            deadline: t0 + Duration::from_secs(10),
        };
        assert_eq!(plan.due(0), Some(t0));
        assert_eq!(plan.due(4), Some(t0 + Duration::from_secs(2)));
        assert_eq!(plan.due(20), None);
        assert_eq!(plan.seq(3), 8);
        assert_eq!(plan.stream_name(1), "s-c1");
    }
}
