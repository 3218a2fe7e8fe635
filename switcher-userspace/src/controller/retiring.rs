//! When the colour a flip left may be stopped. Long-lived shippers (syslog over TCP holds a
//! connection for days) stay on that colour by design; status says how many connections still
//! drain there and since when, and when its collectors can be stopped: once nothing can reach
//! it any more, or at an optional deadline (`retire_after_ms`), after which the connections
//! still pinned reconnect to the active colour when their collector closes them.

use serde::{Deserialize, Serialize};

use crate::domain::Color;

/// The inactive colour of a flipped service, as far as retiring it goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retiring {
    pub color: Color,
    /// When the service flipped away from it (Unix ms).
    pub since_ms: u64,
    /// TCP connections still pinned to it.
    pub connections: u64,
    /// Until when packets without a connection entry (`drain_ms`) or with UDP affinity
    /// (`udp_affinity_max_age_ms`) may still be sent to it (Unix ms).
    pub steered_until_ms: u64,
    /// The flip plus `retire_after_ms`, when the service sets one.
    pub deadline_ms: Option<u64>,
    /// Nothing reaches it any more, or the deadline passed: its collectors can be stopped.
    pub ready_to_stop: bool,
}

impl Retiring {
    /// Judges `color`, left at `since_ms` with `connections` pinned, at `now_ms`. `steering`
    /// is how long after the flip packets may still be sent to it without a connection;
    /// `retire_after` the service's deadline, in ms.
    pub fn judge(
        color: Color,
        since_ms: u64,
        connections: u64,
        steering_ms: u64,
        retire_after_ms: Option<u64>,
        now_ms: u64,
    ) -> Self {
        let steered_until_ms = since_ms.saturating_add(steering_ms);
        let deadline_ms = retire_after_ms.map(|d| since_ms.saturating_add(d));
        let drained = connections == 0 && now_ms >= steered_until_ms;
        let overdue = deadline_ms.is_some_and(|d| now_ms >= d);
        Self {
            color,
            since_ms,
            connections,
            steered_until_ms,
            deadline_ms,
            ready_to_stop: drained || overdue,
        }
    }

    /// One line for `status`.
    pub fn describe(&self, fmt_time: impl Fn(u64) -> String) -> String {
        let conns = match self.connections {
            1 => "1 connection".to_owned(),
            n => format!("{n} connections"),
        };
        let state = match (self.ready_to_stop, self.connections) {
            (true, 0) => "ready to stop: drained".to_owned(),
            (true, _) => format!(
                "ready to stop: deadline passed with {conns} pinned (each reconnects to the \
                 active colour when its collector closes it)"
            ),
            (false, _) => match self.deadline_ms {
                Some(d) => format!("draining {conns} (ready at {} at the latest)", fmt_time(d)),
                None => format!("draining {conns}"),
            },
        };
        format!(
            "{} retiring since {}: {state}",
            self.color,
            fmt_time(self.since_ms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_drained_and_past_the_windows_or_at_the_deadline() {
        let at = |conns, now| Retiring::judge(Color::Blue, 1_000, conns, 500, None, now);
        assert!(!at(0, 1_200).ready_to_stop, "drain window still open");
        assert!(at(0, 1_500).ready_to_stop);
        assert!(
            !at(3, 1_000_000).ready_to_stop,
            "long-lived connections keep it"
        );
        let deadline =
            |conns, now| Retiring::judge(Color::Blue, 1_000, conns, 500, Some(60_000), now);
        assert!(!deadline(3, 60_999).ready_to_stop);
        let r = deadline(3, 61_000);
        assert!(r.ready_to_stop);
        assert_eq!((r.deadline_ms, r.steered_until_ms), (Some(61_000), 1_500));
    }

    #[test]
    fn the_status_line_says_what_to_do() {
        let t = |ms: u64| format!("t{ms}");
        let r = Retiring::judge(Color::Green, 10, 2, 0, Some(50), 20);
        assert_eq!(
            r.describe(t),
            "green retiring since t10: draining 2 connections (ready at t60 at the latest)"
        );
        let r = Retiring::judge(Color::Green, 10, 1, 0, Some(50), 60);
        assert!(r
            .describe(t)
            .contains("deadline passed with 1 connection pinned"));
        let r = Retiring::judge(Color::Green, 10, 0, 0, None, 60);
        assert_eq!(
            r.describe(t),
            "green retiring since t10: ready to stop: drained"
        );
    }
}
