//! From the file as written to a [`Config`]: every field checked, defaults filled in, every
//! error collected with its field path. Nothing partial comes out: one error rejects the whole
//! file.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use switcher_common::MAX_SERVICES;

use super::{
    backend_conflicts, check_pool, pool,
    schema::{RawColor, RawConfig, RawHttp, RawService},
    Color, Config, DaemonConfig, FieldError, Forward, HttpConfig, Member, Protocol, Service,
    XdpMode, DEFAULT_BPFFS_DIR, DEFAULT_DRAIN_MS, DEFAULT_HTTP_LISTEN, DEFAULT_SOCKET,
    DEFAULT_STATE_DIR, DEFAULT_UDP_AFFINITY_MAX_AGE_MS,
};

mod checks;
mod fleet;
use checks::checks;

/// Bounds of the numeric settings. Every duration the controller adds to a clock or a tokio
/// `Instant`, or the datapath converts to u64 nanoseconds, stays far inside what those hold
/// (a u64 of ns is 584 years), and no interval is short enough to busy-loop.
const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const WEEK_MS: u64 = 7 * 24 * HOUR_MS;
/// Any repeated check: the watch, health rounds.
const INTERVALS: RangeInclusive<u64> = 10..=HOUR_MS;
/// How long a validation step may run: a health deadline, a load run, a canary.
const STEPS: RangeInclusive<u64> = 1..=HOUR_MS;
/// One probe: a TCP connect, an HTTP GET, a scrape.
const TIMEOUTS: RangeInclusive<u64> = 1..=5 * MINUTE_MS;
/// Windows that may be long but not forever: watch, warm, drain, UDP affinity.
const WINDOWS: RangeInclusive<u64> = 0..=WEEK_MS;
/// The daemon's background health probes (0 turns them off).
const PROBE_INTERVALS: RangeInclusive<u64> = 100..=HOUR_MS;
const LOAD_LINES: RangeInclusive<u64> = 1..=10_000_000;
/// Lines per second; 0 sends unpaced.
const LOAD_RATE: RangeInclusive<u64> = 0..=1_000_000;
const _: () = assert!(WEEK_MS <= u64::MAX / 1_000_000, "ns of a week fit u64");

/// The error for `v` outside `range` (milliseconds when `unit_ms`): the range is named.
fn out_of_range(v: u64, range: &RangeInclusive<u64>, unit_ms: bool) -> String {
    let (lo, hi) = (*range.start(), *range.end());
    if unit_ms {
        format!(
            "{v} is out of range: {lo}..={hi} ({} to {})",
            humantime::format_duration(Duration::from_millis(lo)),
            humantime::format_duration(Duration::from_millis(hi))
        )
    } else {
        format!("{v} is out of range: {lo}..={hi}")
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `v` milliseconds within `range`, or `default` with the error recorded at `field`.
    fn ms(
        &mut self,
        v: Option<u64>,
        field: &str,
        range: RangeInclusive<u64>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(ms) if range.contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                self.push(field, out_of_range(ms, &range, true));
                default
            }
        }
    }

    /// A count within `range`, or `default` with the error recorded at `field`.
    fn count(
        &mut self,
        v: Option<u64>,
        field: &str,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        match v {
            None => default,
            Some(n) if range.contains(&n) => n,
            Some(n) => {
                self.push(field, out_of_range(n, &range, false));
                default
            }
        }
    }

    /// `text` parsed as `T`, or `default` with the parse error recorded at `field`.
    fn parsed<T: FromStr<Err = String>>(
        &mut self,
        text: Option<&str>,
        field: &str,
        default: T,
    ) -> T {
        match text.map(str::parse::<T>) {
            None => default,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.push(field, e);
                default
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    if raw.daemon.interfaces.is_empty() {
        errs.push("daemon.interfaces", "at least one interface is required");
    }
    for (i, ifname) in raw.daemon.interfaces.iter().enumerate() {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
            errs.push(
                format!("daemon.interfaces[{i}]"),
                format!("{ifname:?} is not a valid interface name"),
            );
        }
    }
    let xdp_mode = errs.parsed(
        raw.daemon.xdp_mode.as_deref(),
        "daemon.xdp_mode",
        XdpMode::Auto,
    );
    let default_forward = errs.parsed(
        raw.daemon.forward.as_deref(),
        "daemon.forward",
        Forward::Redirect,
    );
    let http = http_config(raw.http.unwrap_or_default(), &mut errs);
    let fleet = raw.fleet.map(|f| fleet::fleet(f, &mut errs));
    let probe_interval = match raw.daemon.probe_interval_ms {
        Some(0) => None,
        Some(ms) if !PROBE_INTERVALS.contains(&ms) => {
            errs.push(
                "daemon.probe_interval_ms",
                format!(
                    "{ms} ms would hammer the backends or never probe them: 0 (off) or {}..={} ({} to {})",
                    PROBE_INTERVALS.start(),
                    PROBE_INTERVALS.end(),
                    humantime::format_duration(Duration::from_millis(*PROBE_INTERVALS.start())),
                    humantime::format_duration(Duration::from_millis(*PROBE_INTERVALS.end())),
                ),
            );
            None
        }
        ms => Some(Duration::from_millis(ms.unwrap_or(1000))),
    };

    if raw.services.len() > MAX_SERVICES as usize {
        errs.push(
            "service",
            format!("{} services, at most {MAX_SERVICES}", raw.services.len()),
        );
    }

    let mut services = Vec::new();
    // The file index of each entry of `services` and whether each colour used `backends`,
    // for field paths.
    let mut indexes = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        let listed = [&s.blue, &s.green].map(|c| c.as_ref().is_some_and(|c| c.backends.is_some()));
        if let Some(svc) = service(i, s, default_forward, &mut names, &mut keys, &mut errs) {
            services.push(svc);
            indexes.push((i, listed));
        }
    }
    for c in backend_conflicts(&services) {
        let (i, listed) = indexes[c.index];
        errs.push(
            member_field(
                &format!("service[{i}].{}", c.color),
                listed[c.color.index() as usize],
                Some(c.position),
            ),
            format!(
                "{}/{} is already the backend of service {:?}",
                c.backend, c.protocol, c.owner
            ),
        );
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Config {
        daemon: DaemonConfig {
            interfaces: raw.daemon.interfaces,
            xdp_mode,
            bpffs_dir: raw
                .daemon
                .bpffs_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR)),
            socket: raw
                .daemon
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            state_dir: raw
                .daemon
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            probe_interval,
        },
        http,
        fleet,
        services,
    })
}

/// One `[[service]]`; None when its key (VIP, port, protocol) is unusable.
fn service(
    i: usize,
    mut s: RawService,
    default_forward: Forward,
    names: &mut HashMap<String, usize>,
    keys: &mut HashMap<(IpAddr, u16, Protocol), usize>,
    errs: &mut Errors,
) -> Option<Service> {
    let at = |f: &str| format!("service[{i}].{f}");
    if s.name.is_empty()
        || !s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        errs.push(
            at("name"),
            format!("{:?}: use letters, digits, - _ .", s.name),
        );
    } else if let Some(prev) = names.insert(s.name.clone(), i) {
        errs.push(
            at("name"),
            format!("{:?} already used by service[{prev}]", s.name),
        );
    }
    let vip: Option<IpAddr> = match s.vip.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            errs.push(
                at("vip"),
                format!("{:?} is not an IPv4 or IPv6 address", s.vip),
            );
            None
        }
    };
    let port = match u16::try_from(s.port) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errs.push(at("port"), format!("{} is not a port (1-65535)", s.port));
            None
        }
    };
    let protocol = match s.protocol.parse::<Protocol>() {
        Ok(p) => Some(p),
        Err(e) => {
            errs.push(at("protocol"), e);
            None
        }
    };
    let active = errs.parsed(s.active.as_deref(), &at("active"), Color::Blue);
    let blue = pool(s.blue.take(), &at("blue"), vip, errs);
    let green = pool(s.green.take(), &at("green"), vip, errs);
    let has_active = match active {
        Color::Blue => !blue.is_empty(),
        Color::Green => !green.is_empty(),
    };
    if !has_active {
        errs.push(at("active"), format!("{active} has no backend"));
    }
    if let (Some(v), Some(p), Some(pr)) = (vip, port, protocol) {
        if let Some(prev) = keys.insert((v, p, pr), i) {
            errs.push(
                at("vip"),
                format!("{v}:{p}/{pr} is already service[{prev}]"),
            );
        }
    }
    let forward = errs.parsed(s.forward.as_deref(), &at("forward"), default_forward);
    // Both go to the datapath in u64 nanoseconds: WINDOWS keeps them far inside.
    let udp_affinity_idle = match s.udp_affinity_idle_ms {
        None | Some(0) => None,
        Some(ms) => {
            if protocol == Some(Protocol::Tcp) {
                errs.push(
                    at("udp_affinity_idle_ms"),
                    "only for udp services (tcp is always pinned)",
                );
            }
            Some(errs.ms(
                Some(ms),
                &at("udp_affinity_idle_ms"),
                WINDOWS,
                Duration::ZERO,
            ))
        }
    };
    if udp_affinity_idle.is_none() && s.udp_affinity_max_age_ms.is_some() {
        errs.push(
            at("udp_affinity_max_age_ms"),
            "only with udp_affinity_idle_ms (without affinity every datagram follows the active colour)",
        );
    }
    let udp_affinity_max_age = errs.ms(
        s.udp_affinity_max_age_ms,
        &at("udp_affinity_max_age_ms"),
        WINDOWS,
        Duration::from_millis(DEFAULT_UDP_AFFINITY_MAX_AGE_MS),
    );
    // GELF chunk affinity is on for every UDP service unless turned off: a syslog line never
    // starts with the chunk magic (0x1e 0x0f).
    let gelf = match (s.gelf, protocol) {
        (Some(true), Some(Protocol::Tcp)) => {
            errs.push(
                at("gelf"),
                "only for udp services (a tcp connection is pinned whole)",
            );
            false
        }
        (g, Some(Protocol::Udp)) => g.unwrap_or(true),
        _ => false,
    };
    let drain = errs.ms(
        s.drain_ms,
        &at("drain_ms"),
        WINDOWS,
        Duration::from_millis(DEFAULT_DRAIN_MS),
    );
    let retire_after = s
        .retire_after_ms
        .map(|ms| errs.ms(Some(ms), &at("retire_after_ms"), WINDOWS, Duration::ZERO));
    let checks = checks(&s, protocol, &at, errs);
    Some(Service {
        name: s.name,
        vip: vip?,
        port: port?,
        protocol: protocol?,
        active,
        blue,
        green,
        forward,
        udp_affinity_idle,
        udp_affinity_max_age,
        gelf,
        drain,
        retire_after,
        checks,
    })
}

/// The field path of a colour's member: `backend`, or `backends[i]` when the pool is listed.
fn member_field(color_at: &str, listed: bool, i: Option<usize>) -> String {
    match (listed, i) {
        (true, Some(i)) => format!("{color_at}.backends[{i}]"),
        (true, None) => format!("{color_at}.backends"),
        (false, _) => format!("{color_at}.backend"),
    }
}

/// A colour's pool: `backend = "ADDR:PORT"` (a pool of one) or `backends = [...]` with
/// optional `weights`, in the VIP's address family. Empty when absent or invalid.
fn pool(c: Option<RawColor>, at: &str, vip: Option<IpAddr>, errs: &mut Errors) -> Vec<Member> {
    let Some(c) = c else {
        return Vec::new();
    };
    let listed = c.backends.is_some();
    let addrs: Vec<String> = match (c.backend, c.backends) {
        (Some(_), Some(_)) => {
            errs.push(at, "backend or backends, not both");
            return Vec::new();
        }
        (Some(b), None) => vec![b],
        (None, Some(list)) => list,
        (None, None) => {
            errs.push(
                at,
                "backend = \"ADDR:PORT\" or backends = [...] is required",
            );
            return Vec::new();
        }
    };
    let weights = match c.weights {
        Some(_) if !listed => {
            errs.push(format!("{at}.weights"), "only with backends = [...]");
            return Vec::new();
        }
        Some(w) if w.len() != addrs.len() => {
            errs.push(
                format!("{at}.weights"),
                format!("{} weights for {} backends", w.len(), addrs.len()),
            );
            return Vec::new();
        }
        Some(w) => w,
        None => vec![1; addrs.len()],
    };
    let mut members = Vec::with_capacity(addrs.len());
    let mut ok = true;
    for (i, (a, w)) in addrs.iter().zip(weights).enumerate() {
        let addr =
            pool::member_addr(a, vip).map_err(|e| errs.push(member_field(at, listed, Some(i)), e));
        let weight = pool::weight_value(w).map_err(|e| errs.push(format!("{at}.weights[{i}]"), e));
        match (addr, weight) {
            (Ok(addr), Ok(weight)) => members.push(Member { addr, weight }),
            _ => ok = false,
        }
    }
    if !ok {
        return Vec::new();
    }
    if let Err((i, e)) = check_pool(&members) {
        errs.push(member_field(at, listed, i), e);
        return Vec::new();
    }
    members
}

fn http_config(raw: RawHttp, errs: &mut Errors) -> HttpConfig {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
    let listen = match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                "http.listen",
                format!("{text:?} is not an address:port (e.g. {DEFAULT_HTTP_LISTEN})"),
            );
            None
        }
    };
    if raw.token_file.as_ref().is_some_and(|p| !p.is_absolute()) {
        errs.push("http.token_file", "must be an absolute path");
    }
    HttpConfig {
        listen: listen.filter(|_| raw.enabled.unwrap_or(true)),
        token_file: raw.token_file,
    }
}

fn port_field(v: Option<i64>, field: String, errs: &mut Errors) -> Option<u16> {
    let v = v?;
    match u16::try_from(v) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            errs.push(field, format!("{v} is not a port (1-65535)"));
            None
        }
    }
}

fn url_field(v: &str, field: String, errs: &mut Errors) {
    if !v.starts_with("http://") {
        errs.push(field, format!("{v:?}: only http:// URLs are supported"));
    }
}
