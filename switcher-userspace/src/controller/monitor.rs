//! The health monitor: probes every backend, blue and green, whether a deployment runs or
//! not, into the [`HealthBoard`]. Probes are the validation's own checks.

use std::time::{Duration, Instant};

use super::{health::HealthBoard, host::Host};
use crate::{domain::Color, probe::health::check_once};

/// Probes every backend once per `interval`, all concurrently, until aborted.
pub(super) async fn run(ctl: impl Host, board: HealthBoard, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let catalog = ctl.catalog().await;
        let mut probes = tokio::task::JoinSet::new();
        let mut live = Vec::new();
        for entry in catalog.iter() {
            for color in [Color::Blue, Color::Green] {
                let Some(spec) = entry.health[color.index() as usize].clone() else {
                    continue;
                };
                let backend = entry
                    .slot(color)
                    .backend
                    .map(|b| b.to_string())
                    .unwrap_or_default();
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
