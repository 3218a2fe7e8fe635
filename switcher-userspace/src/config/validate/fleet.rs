//! `[fleet]`: where etcd is, which fleet this host belongs to, and its timing.

use std::{ops::RangeInclusive, time::Duration};

use super::{
    super::{
        schema::{RawFleet, RawFleetTls},
        FleetConfig, FleetTls,
    },
    Errors, SECOND_MS,
};

/// etcd leases count whole seconds, and refuse TTLs under about 1.5 election timeouts.
const LEASE_TTL_S: RangeInclusive<u64> = 2..=300;
const DEFAULT_LEASE_TTL_S: u64 = 5;
const ACK_DEADLINES: RangeInclusive<u64> = 100..=10 * 60 * SECOND_MS;
/// Past the default lease: a host that died is seen gone (lost, not waited for) before it
/// could count as having missed a change.
const DEFAULT_ACK_DEADLINE_MS: u64 = 10_000;
const PROMOTE_DEADLINES: RangeInclusive<u64> = SECOND_MS..=60 * 60 * SECOND_MS;
const DEFAULT_PROMOTE_DEADLINE_MS: u64 = 10 * 60 * SECOND_MS;
const CONNECT_TIMEOUTS: RangeInclusive<u64> = 100..=60 * SECOND_MS;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;

pub(super) fn fleet(raw: RawFleet, errs: &mut Errors) -> FleetConfig {
    if raw.endpoints.is_empty() {
        errs.push("fleet.endpoints", "at least one etcd endpoint is required");
    }
    let mut https = false;
    for (i, e) in raw.endpoints.iter().enumerate() {
        match endpoint(e) {
            Ok(secure) => https |= secure,
            Err(why) => errs.push(format!("fleet.endpoints[{i}]"), why),
        }
    }
    if !name_ok(&raw.cluster) {
        errs.push(
            "fleet.cluster",
            format!(
                "{:?}: 1-64 characters of [A-Za-z0-9_-] (it is the etcd key prefix)",
                raw.cluster
            ),
        );
    }
    let host_id = match raw.host_id {
        Some(h) => h,
        None => match nix::unistd::gethostname() {
            Ok(h) => h.to_string_lossy().into_owned(),
            Err(e) => {
                errs.push(
                    "fleet.host_id",
                    format!("not set, and the hostname cannot be read ({e}): set it"),
                );
                String::new()
            }
        },
    };
    if !host_ok(&host_id) {
        errs.push(
            "fleet.host_id",
            format!("{host_id:?}: 1-64 characters of [A-Za-z0-9._-]"),
        );
    }
    let lease_s = errs.count(
        raw.lease_ttl_s,
        "fleet.lease_ttl_s",
        LEASE_TTL_S,
        DEFAULT_LEASE_TTL_S,
    );
    let ack_deadline = errs.ms(
        raw.ack_deadline_ms,
        "fleet.ack_deadline_ms",
        ACK_DEADLINES,
        Duration::from_millis(DEFAULT_ACK_DEADLINE_MS),
    );
    let promote_deadline = errs.ms(
        raw.promote_deadline_ms,
        "fleet.promote_deadline_ms",
        PROMOTE_DEADLINES,
        Duration::from_millis(DEFAULT_PROMOTE_DEADLINE_MS),
    );
    let connect_timeout = errs.ms(
        raw.connect_timeout_ms,
        "fleet.connect_timeout_ms",
        CONNECT_TIMEOUTS,
        Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
    );
    if ack_deadline <= Duration::from_secs(lease_s) {
        errs.push(
            "fleet.ack_deadline_ms",
            format!(
                "{} ms is not past the lease ({lease_s} s): a host that died would count as \
                 missing a change (and the change be written back) before its lease ran out",
                ack_deadline.as_millis()
            ),
        );
    }
    let tls = raw.tls.map(|t| tls(t, errs));
    if https && tls.is_none() {
        errs.push(
            "fleet.tls",
            "https:// endpoints need [fleet.tls] ca (and cert and key for client certificates)",
        );
    }
    if !https && tls.is_some() && !raw.endpoints.is_empty() {
        errs.push(
            "fleet.tls",
            "set, but every endpoint is http://: use https:// endpoints",
        );
    }
    FleetConfig {
        endpoints: raw.endpoints,
        cluster: raw.cluster,
        host_id,
        lease_ttl: Duration::from_secs(lease_s),
        ack_deadline,
        promote_deadline,
        connect_timeout,
        tls,
    }
}

/// Whether `e` is `https://` (Ok(true)) or `http://` (Ok(false)) with a host and a port.
fn endpoint(e: &str) -> Result<bool, String> {
    let (secure, rest) = if let Some(r) = e.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = e.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{e:?}: must start with http:// or https://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port = rest
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 && !host.contains('/') => Ok(secure),
        _ => Err(format!("{e:?}: expected scheme://host:port")),
    }
}

fn tls(raw: RawFleetTls, errs: &mut Errors) -> FleetTls {
    for (field, p) in [
        ("fleet.tls.ca", Some(&raw.ca)),
        ("fleet.tls.cert", raw.cert.as_ref()),
        ("fleet.tls.key", raw.key.as_ref()),
    ] {
        if p.is_some_and(|p| !p.is_absolute()) {
            errs.push(field, "must be an absolute path");
        }
    }
    let identity = match (raw.cert, raw.key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            errs.push(
                "fleet.tls",
                "cert and key go together: set both for a client certificate, or neither",
            );
            None
        }
    };
    FleetTls {
        ca: raw.ca,
        identity,
    }
}

fn name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn host_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
