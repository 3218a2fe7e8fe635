//! `promote --wait`: following a promotion after its flip until its watch window ends, on
//! this host (its deployment in the history) or across the fleet (every host's own watch,
//! from `fleet status`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::exit;
use crate::{
    api::{self, Request},
    deploy::{Deployment, Phase},
    fleet::{FleetFlip, FleetStatus},
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

/// Follows the fleet promotion `flip` (the promote's reply) until every host that applied
/// the flip has passed its own watch window (Ok), or until any host's watch rolled it back,
/// which rolls the fleet back (exit 6); at most `timeout` (exit 7, naming the hosts still
/// watching). While this daemon cannot read etcd, or a host it waits on is disconnected,
/// nothing is concluded: the wait goes on.
pub fn fleet(socket: &std::path::Path, flip: &FleetFlip, timeout: Duration) -> Result<()> {
    let service = flip.service.as_str();
    let id = flip
        .deployment
        .as_deref()
        .context("the promote reply names no fleet deployment")?;
    let hosts: Vec<&str> = flip
        .hosts
        .iter()
        .filter(|h| h.result == "applied")
        .map(|h| h.host.as_str())
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let v = api::call(socket, &Request::FleetStatus)?;
        let s: FleetStatus = serde_json::from_value(v).context("decoding fleet status")?;
        match fleet_outcome(&s, service, id, flip.to, &hosts) {
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
                        "{service}: fleet deployment {id} not stable after {timeout:?}: {}",
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
    /// What is still awaited: hosts whose watch has not ended, or etcd itself.
    Watching(Vec<String>),
}

/// Where fleet deployment `id` (promoted to `colour`, applied by `hosts`) stands: rolled back
/// as soon as the desired colour left it or any host's side of it rolled back; stable once
/// each of `hosts` is connected and reports its side of `id` stable. A status not read from
/// etcd (this daemon disconnected) concludes nothing.
fn fleet_outcome(
    s: &FleetStatus,
    service: &str,
    id: &str,
    colour: crate::domain::Color,
    hosts: &[&str],
) -> FleetOutcome {
    if !s.connected || s.error.is_some() {
        return FleetOutcome::Watching(vec![format!("etcd (from {})", s.host)]);
    }
    if let Some(d) = s.desired.get(service) {
        if d.desired.active != colour {
            return FleetOutcome::RolledBack(d.desired.reason.clone());
        }
    }
    let side = |host: &str| {
        s.hosts
            .iter()
            .find(|h| h.host == host && h.connected)
            .and_then(|h| h.services.get(service))
            .and_then(|sv| sv.report.deployment.as_ref())
            .filter(|d| d.fleet_id == id)
    };
    if let Some((h, d)) = s
        .hosts
        .iter()
        .filter_map(|h| Some((h, side(&h.host)?)))
        .find(|(_, d)| d.phase == Phase::RolledBack)
    {
        return FleetOutcome::RolledBack(format!("{}: {}", h.host, d.reason));
    }
    if hosts.is_empty() {
        // Nobody applied the flip (cannot happen for a promotion that flipped): nothing to
        // call stable.
        return FleetOutcome::Watching(vec!["no host applied the flip".into()]);
    }
    let watching: Vec<String> = hosts
        .iter()
        .filter(|h| side(h).is_none_or(|d| d.phase != Phase::Stable))
        .map(|h| (*h).to_string())
        .collect();
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
        fleet_outcome(s, "syslog", "d1", Color::Green, &["a", "b"])
    }

    #[test]
    fn stable_only_when_every_host_that_applied_passed_its_watch() {
        let s = status(
            "green",
            &[("a", true, Some("stable")), ("b", true, Some("promoted"))],
        );
        assert_eq!(outcome(&s), FleetOutcome::Watching(vec!["b".into()]));
        // A host that has not reported its side yet is still watching.
        let s = status("green", &[("a", true, Some("stable")), ("b", true, None)]);
        assert_eq!(outcome(&s), FleetOutcome::Watching(vec!["b".into()]));
        // A host that applied the flip and then disconnected: its watch's end is unknown.
        let s = status("green", &[("a", true, Some("stable")), ("b", false, None)]);
        assert_eq!(outcome(&s), FleetOutcome::Watching(vec!["b".into()]));
        let s = status(
            "green",
            &[("a", true, Some("stable")), ("b", true, Some("stable"))],
        );
        assert_eq!(outcome(&s), FleetOutcome::Stable);
        // A host that did not apply the flip is not waited for.
        let s = status("green", &[("a", true, Some("stable")), ("c", true, None)]);
        assert_eq!(
            fleet_outcome(&s, "syslog", "d1", Color::Green, &["a"]),
            FleetOutcome::Stable
        );
    }

    #[test]
    fn a_status_without_etcd_or_without_hosts_concludes_nothing() {
        let mut s = status("green", &[]);
        s.connected = false;
        s.error = Some("etcd unreachable".into());
        assert!(matches!(outcome(&s), FleetOutcome::Watching(_)));
        let s = status("green", &[]);
        assert_eq!(
            outcome(&s),
            FleetOutcome::Watching(vec!["a".into(), "b".into()])
        );
        assert!(matches!(
            fleet_outcome(&s, "syslog", "d1", Color::Green, &[]),
            FleetOutcome::Watching(_)
        ));
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
