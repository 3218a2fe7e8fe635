//! Human output of the fleet commands: a fleet flip's per-host results, `fleet status`.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

/// Whether the daemon answered for the fleet (per-host results), not for itself alone.
pub fn is_fleet_reply(v: &serde_json::Value) -> bool {
    v.get("hosts").is_some()
}

/// The fleet's per-host lines for a fleet reply, `local` for a single host's.
pub fn or(
    v: &serde_json::Value,
    local: impl FnOnce(&serde_json::Value) -> Result<String>,
) -> Result<String> {
    if is_fleet_reply(v) {
        flip_lines(v)
    } else {
        local(v)
    }
}

/// A fleet flip or rollback: the revision written, then one line per host.
pub fn flip_lines(v: &serde_json::Value) -> Result<String> {
    let f: crate::fleet::FleetFlip =
        serde_json::from_value(v.clone()).context("decoding the fleet reply")?;
    let mut out = String::new();
    if !f.changed {
        let _ = writeln!(
            out,
            "{}: already {} fleet-wide (revision {})",
            f.service, f.to, f.revision
        );
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{}: {} -> {} on the fleet (revision {}), {} host(s) acknowledged in {:.1} ms",
        f.service,
        f.from,
        f.to,
        f.revision,
        f.hosts.iter().filter(|h| h.result == "applied").count(),
        f.ack_ms
    );
    for h in &f.hosts {
        let _ = writeln!(
            out,
            "  {:<20} {:<8} {}{}{}",
            h.host,
            h.result,
            h.active.map_or("-".to_string(), |c| c.to_string()),
            h.ack_ms.map_or(String::new(), |ms| format!("  {ms:.1} ms")),
            h.error.as_ref().map_or(String::new(), |e| format!("  {e}"))
        );
    }
    for h in &f.excluded {
        let _ = writeln!(out, "  {h:<20} excluded (no live lease: disconnected)");
    }
    Ok(out)
}

/// `fleet status`: the desired state per service, then each host and what differs.
pub fn status_lines(v: &serde_json::Value) -> Result<String> {
    let s: crate::fleet::FleetStatus =
        serde_json::from_value(v.clone()).context("decoding the fleet status")?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet {} (asked {}: {}){}",
        s.cluster,
        s.host,
        if s.connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        s.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
    );
    for (name, d) in &s.desired {
        let _ = writeln!(
            out,
            "  desired {name}: {} (revision {}, config {}) by {}: {}",
            d.desired.active, d.revision, d.desired.config_hash, d.desired.actor, d.desired.reason
        );
    }
    for h in &s.hosts {
        let _ = writeln!(
            out,
            "  {:<20} {}{}",
            h.host,
            if h.connected {
                "connected"
            } else {
                "disconnected"
            },
            if h.drift.is_empty() {
                "  in sync".to_string()
            } else {
                format!("  DRIFT: {}", h.drift.join("; "))
            }
        );
        for (name, sv) in &h.services {
            let _ = writeln!(
                out,
                "    {name}: {} generation {} applied revision {} lag {} config {}",
                sv.report.active,
                sv.report.generation,
                sv.report.applied_revision,
                sv.lag,
                if sv.config_matches {
                    "matches"
                } else {
                    "DIFFERS"
                }
            );
        }
    }
    let _ = writeln!(out, "  hosts in drift: {}", s.in_drift);
    Ok(out)
}

/// `fleet history`: one line per change, oldest first.
pub fn history_lines(v: &serde_json::Value) -> Result<String> {
    let entries: Vec<crate::fleet::AuditEntry> =
        serde_json::from_value(v.clone()).context("decoding the fleet history")?;
    let mut out = String::new();
    for e in &entries {
        let _ = writeln!(
            out,
            "{}  {:<14} {:<10} {}{} by {} on {}: {}",
            crate::domain::fmt_time(e.at_ms),
            e.action,
            e.service,
            e.from.map_or(String::new(), |c| format!("{c} -> ")),
            e.to,
            e.actor,
            e.host,
            e.reason
        );
    }
    if entries.is_empty() {
        out.push_str("no fleet changes recorded\n");
    }
    Ok(out)
}
