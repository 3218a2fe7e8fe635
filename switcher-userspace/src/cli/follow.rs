//! `promote --wait`: following a promotion after its flip until its watch window ends, on
//! this host (its deployment in the history) or across the fleet (every host's own watch,
//! from `fleet status`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::exit;
use crate::{
    api::{self, Request},
    deploy::{Deployment, Phase},
    fleet::FleetStatus,
};

const POLL: Duration = Duration::from_millis(250);

/// Follows deployment `id` of `service` after its flip until its watch ends (stable, or
/// rolled back), at most `timeout`.
pub fn deployment(
    socket: &std::path::Path,
    service: &str,
    id: u64,
    timeout: Duration,
) -> Result<Deployment> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = api::call(
            socket,
            &Request::History {
                service: service.into(),
            },
        )?;
        let ds: Vec<Deployment> = serde_json::from_value(v).context("decoding history")?;
        let d = ds
            .into_iter()
            .find(|d| d.id == id)
            .with_context(|| format!("deployment {id} of {service} disappeared"))?;
        if !matches!(d.phase, Phase::Promoted) {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            return Err(exit::Outcome {
                exit: exit::Exit::Timeout,
                message: format!(
                    "{service}: deployment {id} still promoted (watching) after {timeout:?}"
                ),
            }
            .into());
        }
        std::thread::sleep(POLL);
    }
}

/// Follows the fleet deployment of `service` that was just flipped to until every connected
/// host's watch window passed (Ok), or until any host's watch rolled it back, which rolls
/// the fleet back (exit 6); at most `timeout` (exit 7).
pub fn fleet(socket: &std::path::Path, service: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut target = None;
    loop {
        let v = api::call(socket, &Request::FleetStatus)?;
        let s: FleetStatus = serde_json::from_value(v).context("decoding fleet status")?;
        // The deployment and colour promoted, as first seen after the flip.
        let (id, colour) = match &target {
            Some(t) => t,
            None => {
                let d = s
                    .desired
                    .get(service)
                    .and_then(|d| d.desired.deployment.as_ref())
                    .with_context(|| format!("the fleet has no deployment of {service}"))?;
                target.insert((d.id.clone(), d.color))
            }
        };
        match fleet_outcome(&s, service, id, *colour) {
            FleetOutcome::Stable => return Ok(()),
            FleetOutcome::RolledBack(why) => {
                return Err(exit::Outcome {
                    exit: exit::Exit::RolledBack,
                    message: format!("{service}: fleet deployment {id} was rolled back: {why}"),
                }
                .into())
            }
            FleetOutcome::Watching(hosts) if Instant::now() >= deadline => {
                return Err(exit::Outcome {
                    exit: exit::Exit::Timeout,
                    message: format!(
                        "{service}: fleet deployment {id} still watching after {timeout:?} on {}",
                        hosts.join(", ")
                    ),
                }
                .into())
            }
            FleetOutcome::Watching(_) => std::thread::sleep(POLL),
        }
    }
}

#[derive(Debug, PartialEq)]
enum FleetOutcome {
    Stable,
    RolledBack(String),
    /// The hosts whose watch has not ended yet.
    Watching(Vec<String>),
}

/// Where fleet deployment `id` (promoted to `colour`) stands: rolled back as soon as the
/// desired colour left it or any host's own deployment rolled back; stable once every
/// connected host serving the service reports its side of `id` stable.
fn fleet_outcome(
    s: &FleetStatus,
    service: &str,
    id: &str,
    colour: crate::domain::Color,
) -> FleetOutcome {
    if let Some(d) = s.desired.get(service) {
        if d.desired.active != colour {
            return FleetOutcome::RolledBack(d.desired.reason.clone());
        }
    }
    let mut watching = Vec::new();
    for h in s.hosts.iter().filter(|h| h.connected) {
        let Some(sv) = h.services.get(service) else {
            continue;
        };
        match sv.report.deployment.as_ref().filter(|d| d.fleet_id == id) {
            Some(d) if d.phase == Phase::Stable => {}
            Some(d) if d.phase == Phase::RolledBack => {
                return FleetOutcome::RolledBack(format!("{}: {}", h.host, d.reason));
            }
            _ => watching.push(h.host.clone()),
        }
    }
    if watching.is_empty() {
        FleetOutcome::Stable
    } else {
        FleetOutcome::Watching(watching)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Color;

    /// A fleet status: desired `active` for syslog (deployment d1 to green) and one host per
    /// `(host, connected, phase of its side of d1)`.
    fn status(active: &str, hosts: &[(&str, bool, Option<&str>)]) -> FleetStatus {
        let hosts: Vec<serde_json::Value> = hosts
            .iter()
            .map(|(host, connected, phase)| {
                let mut report = serde_json::json!({
                    "applied_revision": 7, "active": "green", "generation": 1,
                    "config_hash": "h", "config_matches": true, "lag": 0,
                });
                if let Some(p) = phase {
                    report["deployment"] = serde_json::json!({
                        "fleet_id": "d1", "local_id": 3, "phase": p, "reason": "watch: errors",
                    });
                }
                serde_json::json!({
                    "host": host, "connected": connected, "drift": [],
                    "services": { "syslog": report },
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "cluster": "c", "host": "a", "connected": true, "in_drift": 0,
            "desired": { "syslog": {
                "revision": 7, "active": active, "config_hash": "h", "actor": "cli",
                "reason": "fleet rollback: b's watch failed", "at_ms": 1,
                "deployment": { "id": "d1", "color": "green", "members": [],
                                "phase": "promoted", "reason": "" },
            }},
            "hosts": hosts,
        }))
        .expect("a fleet status")
    }

    fn outcome(s: &FleetStatus) -> FleetOutcome {
        fleet_outcome(s, "syslog", "d1", Color::Green)
    }

    #[test]
    fn stable_only_when_every_connected_host_passed_its_watch() {
        let s = status(
            "green",
            &[("a", true, Some("stable")), ("b", true, Some("promoted"))],
        );
        assert_eq!(outcome(&s), FleetOutcome::Watching(vec!["b".into()]));
        // A host that has not reported its side yet is still watching.
        let s = status("green", &[("a", true, Some("stable")), ("b", true, None)]);
        assert_eq!(outcome(&s), FleetOutcome::Watching(vec!["b".into()]));
        // A disconnected host does not hold the fleet up (it converges when it returns).
        let s = status("green", &[("a", true, Some("stable")), ("b", false, None)]);
        assert_eq!(outcome(&s), FleetOutcome::Stable);
    }

    #[test]
    fn a_host_rollback_or_the_desired_colour_leaving_is_a_rollback() {
        let s = status(
            "green",
            &[
                ("a", true, Some("stable")),
                ("b", true, Some("rolled_back")),
            ],
        );
        assert_eq!(
            outcome(&s),
            FleetOutcome::RolledBack("b: watch: errors".into())
        );
        let s = status("blue", &[("a", true, Some("stable"))]);
        assert_eq!(
            outcome(&s),
            FleetOutcome::RolledBack("fleet rollback: b's watch failed".into())
        );
    }
}
