//! The systemd notification protocol (`Type=notify`, sd_notify(3)) over `$NOTIFY_SOCKET`:
//! `READY=1` once the datapath is attached and the API socket and HTTP listener are up,
//! `STATUS=` lines, `STOPPING=1`, and `WATCHDOG=1` while the controller answers. Without
//! `$NOTIFY_SOCKET` (a terminal, the lab) the daemon prints `READY` on stdout instead.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

use crate::controller::Controller;

/// Whether a service manager listens for notifications.
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    // Losing a notification must not stop the daemon; systemd's timeouts report it.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!("notifying the service manager: {e}");
    }
}

/// Serving: the datapath is attached, the API socket and the HTTP listener are bound.
pub fn ready(status: &str) {
    if supervised() {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    } else {
        println!("READY");
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// With `WatchdogSec=` set, pets the watchdog every quarter period for as long as the
/// controller answers a request (its lock taken, every service's colour read from the maps)
/// within that quarter: two pets are never more than half a period apart while it answers,
/// and a controller wedged for most of a period stops them, so systemd restarts the daemon
/// (`--keep-attached` leaves the datapath forwarding meanwhile).
pub fn start_watchdog(ctl: Controller) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let quarter = Duration::from_micros(usec / 4);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(quarter);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tokio::time::timeout(quarter, ctl.colours()).await {
                Ok(Ok(_)) => send(&[NotifyState::Watchdog]),
                Ok(Err(e)) => warn!("watchdog not petted: the controller failed: {e:#}"),
                Err(_) => {
                    warn!("watchdog not petted: the controller did not answer within {quarter:?}")
                }
            }
        }
    }))
}
