//! One scrape: the catalog, a map sample and the health board encoded as OpenMetrics text.
//! Values are read at scrape time; nothing is cached between scrapes, so every scrape shows
//! what the kernel counted up to that moment.
//!
//! Series per pool member carry a `backend` label (`ADDR:PORT`): at most
//! [`switcher_common::MAX_MEMBERS`] members per colour, two colours per service, so each such
//! metric has at most 128 series per service.

use std::{
    collections::BTreeMap,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::{Registry, Unit},
};

use crate::{
    controller::{BackendHealth, CatalogEntry, MemberKey, MemberView, Recorded},
    datapath::{
        read::{Readings, ServiceReading},
        xdp_attached::Attached,
    },
    deploy::Phase,
    domain::Color,
};

/// Phases the `deployment_phase` state set reports; `none` when no deployment is open.
const PHASES: &[(Option<Phase>, &str)] = &[
    (None, "none"),
    (Some(Phase::Deployed), "deployed"),
    (Some(Phase::Validating), "validating"),
    (Some(Phase::Ready), "ready"),
    (Some(Phase::Rejected), "rejected"),
    (Some(Phase::Promoted), "promoted"),
    (Some(Phase::Stable), "stable"),
    (Some(Phase::Aborted), "aborted"),
    (Some(Phase::RolledBack), "rolled_back"),
];

const COLORS: [Color; 2] = Color::BOTH;

/// Everything one scrape shows that is not a recorded metric.
#[derive(Debug)]
pub struct ScrapeData {
    pub catalog: std::sync::Arc<Vec<CatalogEntry>>,
    pub readings: Readings,
    pub health: BTreeMap<MemberKey, BackendHealth>,
    /// CLOCK_MONOTONIC and wall clock at the sample, to date kernel timestamps.
    pub mono_ns: u64,
    pub wall: SystemTime,
    /// How long the previous scrape took (a scrape cannot time itself and still be output).
    pub previous_scrape_seconds: f64,
    /// Fleet mode only.
    pub fleet: Option<FleetSample>,
    /// The XDP mode attached on each interface the daemon serves (those the kernel answered
    /// for).
    pub xdp: Vec<(String, Attached)>,
}

/// Fleet mode as one scrape sees it.
#[derive(Debug, Clone)]
pub struct FleetSample {
    pub connected: bool,
    pub reconnects: u64,
    /// Per service: (desired revision last seen, revision applied here).
    pub revisions: BTreeMap<String, (i64, i64)>,
    /// While connected: (hosts with a live lease, hosts in drift or disconnected).
    pub hosts: Option<(u64, u64)>,
}

impl FleetSample {
    fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        family(
            enc,
            "fleet_connected",
            "1 while this host reaches etcd and holds its lease; 0 while it fails static",
            None,
            MetricType::Gauge,
        )?
        .single(i64::from(self.connected))?;
        let f = family(
            enc,
            "fleet_reconnects",
            "Times this host reconnected to etcd after losing it",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.reconnects).encode(f.0)?;
        let mut f = family(
            enc,
            "fleet_desired_revision",
            "The etcd revision of the service's desired state, as last seen by this host",
            None,
            MetricType::Gauge,
        )?;
        for (s, (desired, _)) in &self.revisions {
            f.gauge(&[("service", s)], *desired)?;
        }
        let mut f = family(
            enc,
            "fleet_applied_revision",
            "The desired revision this host applied last",
            None,
            MetricType::Gauge,
        )?;
        for (s, (_, applied)) in &self.revisions {
            f.gauge(&[("service", s)], *applied)?;
        }
        if let Some((live, drift)) = self.hosts {
            family(
                enc,
                "fleet_hosts_connected",
                "Hosts of the fleet with a live lease",
                None,
                MetricType::Gauge,
            )?
            .single(live as i64)?;
            family(
                enc,
                "fleet_hosts_in_drift",
                "Hosts whose colour, config or applied revision differs from the desired state, or that are disconnected",
                None,
                MetricType::Gauge,
            )?
            .single(drift as i64)?;
        }
        Ok(())
    }
}

/// Encodes `data` and the recorded metrics, all named `switcher_*`.
pub fn encode(data: ScrapeData, recorded: &Recorded) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("switcher");
    recorded.register(&mut registry);
    registry.register_collector(Box::new(data));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The samples of one metric, written label set by label set.
struct Family<'a>(prometheus_client::encoding::MetricEncoder<'a>);

fn family<'a>(
    enc: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    unit: Option<&'a Unit>,
    t: MetricType,
) -> Result<Family<'a>, fmt::Error> {
    // Registered metrics get a full stop appended by the registry; match them.
    Ok(Family(enc.encode_descriptor(
        name,
        &format!("{help}."),
        unit,
        t,
    )?))
}

impl Family<'_> {
    fn counter(&mut self, labels: &[(&str, &str)], v: u64) -> fmt::Result {
        ConstCounter::new(v).encode(self.0.encode_family(&labels)?)
    }
    fn gauge(&mut self, labels: &[(&str, &str)], v: i64) -> fmt::Result {
        ConstGauge::new(v).encode(self.0.encode_family(&labels)?)
    }
    /// A metric without labels.
    fn single(self, v: i64) -> fmt::Result {
        ConstGauge::new(v).encode(self.0)
    }
    fn gauge_f(&mut self, labels: &[(&str, &str)], v: f64) -> fmt::Result {
        ConstGauge::new(v).encode(self.0.encode_family(&labels)?)
    }
}

/// One series per pool member: `write` gets the family, the member's labels (service, color,
/// backend) and the member.
fn member_family(
    enc: &mut DescriptorEncoder,
    pools: &[(&CatalogEntry, Color, Vec<MemberView>)],
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    t: MetricType,
    mut write: impl FnMut(&mut Family, &[(&str, &str)], &MemberView) -> fmt::Result,
) -> fmt::Result {
    let mut f = family(enc, name, help, unit, t)?;
    for (e, c, members) in pools {
        let color = c.to_string();
        for m in members {
            let backend = m.addr.to_string();
            write(
                &mut f,
                &[
                    ("service", &e.name),
                    ("color", &color),
                    ("backend", &backend),
                ],
                m,
            )?;
        }
    }
    Ok(())
}

impl ScrapeData {
    fn services(&self) -> impl Iterator<Item = (&CatalogEntry, &ServiceReading)> {
        self.catalog
            .iter()
            .filter_map(|e| self.readings.services.get(&e.id).map(|s| (e, s)))
    }

    /// Wall-clock seconds of a CLOCK_MONOTONIC kernel timestamp.
    fn wall_seconds(&self, mono: u64) -> f64 {
        let wall = self
            .wall
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        wall - (self.mono_ns.saturating_sub(mono)) as f64 / 1e9
    }

    /// The members of each colour of every service with a reading, joined with their
    /// counters, open connections and health as `status` and the dashboard join them.
    fn pools(&self) -> Vec<(&CatalogEntry, Color, Vec<MemberView>)> {
        let mut out = Vec::new();
        for (e, _) in self.services() {
            for c in COLORS {
                let slot = &e.slot(c).members;
                let probed: Vec<BackendHealth> = slot
                    .iter()
                    .filter_map(|m| self.health.get(&(e.name.clone(), c, m.addr)).cloned())
                    .collect();
                let readings = self
                    .readings
                    .members
                    .get(&(e.id, c.index()))
                    .map_or(&[][..], Vec::as_slice);
                let members = MemberView::join(slot, readings, &self.readings.census, &probed);
                out.push((e, c, members));
            }
        }
        out
    }

    /// Per-colour counters of every service.
    fn encode_color_counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        get: impl Fn(&switcher_common::ColorCounters) -> u64,
    ) -> fmt::Result {
        let mut f = family(enc, name, help, unit, MetricType::Counter)?;
        for (e, s) in self.services() {
            for c in COLORS {
                let color = c.to_string();
                f.counter(
                    &[("service", &e.name), ("color", &color)],
                    get(&s.counters[c.index() as usize]),
                )?;
            }
        }
        Ok(())
    }
}

impl Collector for ScrapeData {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_color_counter(
            &mut enc,
            "service_packets",
            "Packets steered to a service's colour by the XDP datapath",
            None,
            |c| c.packets,
        )?;
        self.encode_color_counter(
            &mut enc,
            "service",
            "Bytes (IP packet lengths) steered to a service's colour",
            Some(&Unit::Bytes),
            |c| c.bytes,
        )?;
        self.encode_color_counter(
            &mut enc,
            "service_new_flows",
            "New flows (TCP SYNs, UDP affinity entries) assigned to a colour",
            None,
            |c| c.new_flows,
        )?;
        self.encode_color_counter(
            &mut enc,
            "service_pin_misses",
            "TCP packets of unknown flows steered by the drain rule",
            None,
            |c| c.pin_misses,
        )?;
        self.encode_color_counter(
            &mut enc,
            "backend_resets",
            "TCP resets sent by a colour's backend",
            None,
            |c| c.resets,
        )?;
        self.encode_color_counter(
            &mut enc,
            "backend_unreachables",
            "ICMP destination-unreachable errors about packets sent to a colour's backend",
            None,
            |c| c.unreachables,
        )?;

        let mut f = family(
            &mut enc,
            "pinned_flows",
            "Open TCP flows pinned to a colour (draining after a flip away from it)",
            None,
            MetricType::Gauge,
        )?;
        for (e, _) in self.services() {
            for c in COLORS {
                let color = c.to_string();
                f.gauge(
                    &[("service", &e.name), ("color", &color)],
                    self.readings.census.pinned(e.id, c) as i64,
                )?;
            }
        }
        let pools = self.pools();
        member_family(
            &mut enc,
            &pools,
            "member_packets",
            "Packets steered to a member of a colour's pool",
            None,
            MetricType::Counter,
            |f, l, m| f.counter(l, m.packets),
        )?;
        member_family(
            &mut enc,
            &pools,
            "member",
            "Bytes (IP packet lengths) steered to a member of a colour's pool",
            Some(&Unit::Bytes),
            MetricType::Counter,
            |f, l, m| f.counter(l, m.bytes),
        )?;
        member_family(
            &mut enc,
            &pools,
            "member_new_flows",
            "New flows (TCP SYNs, UDP affinity entries) assigned to a member of a colour's pool",
            None,
            MetricType::Counter,
            |f, l, m| f.counter(l, m.new_flows),
        )?;
        member_family(
            &mut enc,
            &pools,
            "member_pinned_flows",
            "Open TCP flows pinned to a member of a colour's pool",
            None,
            MetricType::Gauge,
            |f, l, m| f.gauge(l, m.pinned as i64),
        )?;
        member_family(
            &mut enc,
            &pools,
            "member_share",
            "Share (0 to 1) of its colour's new flows a member gets: its slots of the lookup table, 0 while out of service",
            None,
            MetricType::Gauge,
            |f, l, m| f.gauge_f(l, m.share),
        )?;
        member_family(
            &mut enc,
            &pools,
            "member_in_service",
            "1 while a probed member is in service, 0 once its health probes took it out of its pool's table (when every member is out, all keep their share)",
            None,
            MetricType::Gauge,
            |f, l, m| match &m.health {
                Some(h) => f.gauge(l, h.in_service as i64),
                None => Ok(()),
            },
        )?;

        let f = family(
            &mut enc,
            "flow_table_entries",
            "Entries in the flow table, all services and states",
            None,
            MetricType::Gauge,
        )?;
        f.single(self.readings.census.entries as i64)?;

        let mut f = family(
            &mut enc,
            "flow_table_capacity",
            "Entries each flow table holds: established (a plain hash, inserts fail when full), \
             half_open and soft (LRUs, the oldest entries are evicted)",
            None,
            MetricType::Gauge,
        )?;
        for (table, n) in [
            ("established", switcher_common::FLOW_TABLE_SIZE),
            ("half_open", switcher_common::HALF_TABLE_SIZE),
            ("soft", switcher_common::SOFT_TABLE_SIZE),
        ] {
            f.gauge(&[("table", table)], i64::from(n))?;
        }

        let mut f = family(
            &mut enc,
            "xdp_attached",
            "1 for the XDP mode the ingress program runs in on an interface, 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for (ifname, mode) in &self.xdp {
            for m in Attached::ALL {
                f.gauge(
                    &[("interface", ifname), ("mode", m.label())],
                    i64::from(*mode == m),
                )?;
            }
        }

        let mut f = family(
            &mut enc,
            "datapath_packets",
            "Packets by what the datapath did with them (passed, redirected, fallbacks, errors)",
            None,
            MetricType::Counter,
        )?;
        for (r, n) in &self.readings.reasons {
            f.counter(&[("reason", r.label())], *n)?;
        }

        let mut f = family(
            &mut enc,
            "active_color",
            "1 for the colour that receives a service's new flows, 0 for the other",
            None,
            MetricType::Gauge,
        )?;
        for (e, s) in self.services() {
            for c in COLORS {
                let color = c.to_string();
                let active = s.active.color() == c.index();
                f.gauge(&[("service", &e.name), ("color", &color)], active as i64)?;
            }
        }
        let mut f = family(
            &mut enc,
            "generation",
            "Flip generation of a service: increases by one with every flip",
            None,
            MetricType::Gauge,
        )?;
        for (e, s) in self.services() {
            f.gauge(&[("service", &e.name)], i64::from(s.active.generation()))?;
        }

        let mut f = family(
            &mut enc,
            "deployment_phase",
            "1 for the phase of the service's open deployment (none: no deployment open)",
            None,
            MetricType::Gauge,
        )?;
        for e in self.catalog.iter() {
            let now = e.current.as_ref().map(|d| d.phase);
            for (p, label) in PHASES {
                f.gauge(
                    &[("service", &e.name), ("phase", label)],
                    (now == *p) as i64,
                )?;
            }
        }

        let mut f = family(
            &mut enc,
            "last_flip_timestamp",
            "When the service's last flip was written into the maps (Unix time)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (e, s) in self.services() {
            if s.mark.flip_ns != 0 {
                f.gauge_f(&[("service", &e.name)], self.wall_seconds(s.mark.flip_ns))?;
            }
        }
        let mut f = family(
            &mut enc,
            "last_flip_cutover",
            "Kernel time from the last flip's map write to the first packet the new colour got",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (e, s) in self.services() {
            let first = s.mark.first_ns[(s.active.color() & 1) as usize];
            // Only for the current flip: the mark is per generation.
            if s.mark.flip_ns != 0 && first >= s.mark.flip_ns {
                let secs = (first - s.mark.flip_ns) as f64 / 1e9;
                f.gauge_f(&[("service", &e.name)], secs)?;
            }
        }

        let mut up = family(
            &mut enc,
            "backend_up",
            "1 if the pool member passed its last health probe",
            None,
            MetricType::Gauge,
        )?;
        for ((service, c, _), h) in &self.health {
            let color = c.to_string();
            up.gauge(
                &[
                    ("service", service),
                    ("color", &color),
                    ("backend", &h.backend),
                ],
                h.up as i64,
            )?;
        }
        let mut lat = family(
            &mut enc,
            "backend_probe_duration",
            "Duration of the pool member's last successful health probe",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for ((service, c, _), h) in &self.health {
            if h.ok_total > 0 {
                let color = c.to_string();
                lat.gauge_f(
                    &[
                        ("service", service),
                        ("color", &color),
                        ("backend", &h.backend),
                    ],
                    h.latency_seconds,
                )?;
            }
        }
        let mut probes = family(
            &mut enc,
            "backend_probes",
            "Health probes of a pool member, by result",
            None,
            MetricType::Counter,
        )?;
        for ((service, c, _), h) in &self.health {
            let color = c.to_string();
            for (result, n) in [("ok", h.ok_total), ("failed", h.failed_total)] {
                probes.counter(
                    &[
                        ("service", service),
                        ("color", &color),
                        ("backend", &h.backend),
                        ("result", result),
                    ],
                    n,
                )?;
            }
        }

        let f = family(
            &mut enc,
            "scrape_duration",
            "Time the previous scrape of this endpoint took",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.previous_scrape_seconds).encode(f.0)?;
        let mut f = family(
            &mut enc,
            "build_info",
            "Version of the running daemon",
            None,
            MetricType::Gauge,
        )?;
        f.gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1)?;
        if let Some(fleet) = &self.fleet {
            fleet.encode(&mut enc)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
