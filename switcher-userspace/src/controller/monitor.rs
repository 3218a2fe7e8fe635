//! The health monitor: probes every pool member, blue and green, whether a deployment runs or
//! not, into the [`HealthBoard`], and reports members that go down or come back (the
//! controller takes them out of their pool's table or puts them back). Probes are the
//! validation's own checks.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tracing::warn;

use super::{health::HealthBoard, host::Host};
use crate::{domain::Color, probe::health::check_once};

/// Probes every member once per `interval`, all concurrently, until aborted.
pub(super) async fn run(ctl: impl Host, board: HealthBoard, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let catalog = ctl.catalog().await;
        let mut probes = tokio::task::JoinSet::new();
        let mut live = BTreeSet::new();
        for entry in catalog.iter() {
            for color in Color::BOTH {
                for (member, spec) in &entry.health[color.index() as usize] {
                    live.insert((entry.name.clone(), color, *member));
                    let (board, service, member, spec) =
                        (board.clone(), entry.name.clone(), *member, spec.clone());
                    probes.spawn(async move {
                        let start = Instant::now();
                        let result = check_once(&spec)
                            .await
                            .map(|()| start.elapsed().as_secs_f64());
                        let change = board.record(&service, color, member, result);
                        (service, color, member, change)
                    });
                }
            }
        }
        while let Some(done) = probes.join_next().await {
            let Ok((service, color, member, Some(up))) = done else {
                continue;
            };
            if let Err(e) = ctl.member_health(&service, color, member, up).await {
                warn!(%service, %color, %member, "applying a member's health: {e:#}");
            }
        }
        board.retain(&live);
    }
}
