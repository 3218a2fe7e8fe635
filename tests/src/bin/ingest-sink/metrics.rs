//! Metrics: the state shared by receivers, writer and HTTP ([`SinkState`]) with its Prometheus
//! registry, per-transport counters and the open-connection gauge.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::fault::{FaultSettings, Faults};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Counters for one transport (clones share the underlying atomics).
#[derive(Clone, Default)]
pub(crate) struct TransportCounters {
    pub(crate) messages: Counter,
    pub(crate) bytes: Counter,
}

type Labels = Vec<(&'static str, &'static str)>;

/// What every listener and the HTTP endpoints share: the metrics and the faults to inject.
pub(crate) struct SinkState {
    pub(crate) name: String,
    pub(crate) registry: Registry,
    pub(crate) udp: TransportCounters,
    pub(crate) tcp: TransportCounters,
    pub(crate) frame_errors: Counter,
    /// Errors reported on purpose (`errors_per_sec` fault).
    pub(crate) injected_errors: Counter,
    /// GELF messages whose chunks did not all arrive within 5 s.
    pub(crate) gelf_incomplete: Counter,
    /// GELF datagrams that could not be read (bad chunk header, not JSON, ...).
    pub(crate) gelf_invalid: Counter,
    pub(crate) tcp_connections: Gauge,
    pub(crate) faults: Faults,
}

impl SinkState {
    pub(crate) fn new(name: &str, faults: FaultSettings) -> Self {
        let mut registry = Registry::default();
        let messages = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let tcp_connections = Gauge::default();
        // Counters get their `_total` suffix from the encoder, info its `_info`.
        registry.register("ingest_messages", "Messages received", messages.clone());
        registry.register("ingest_bytes", "Message bytes received", bytes.clone());
        registry.register("ingest_errors", "Receive errors", errors.clone());
        registry.register(
            "ingest_tcp_connections",
            "Open TCP connections",
            tcp_connections.clone(),
        );
        registry.register(
            "ingest",
            "Sink identity",
            Info::new(vec![("name", name.to_owned())]),
        );
        // Created up front so every series is exported (as 0) from the start.
        let counters = |transport| TransportCounters {
            messages: messages
                .get_or_create(&vec![("transport", transport)])
                .clone(),
            bytes: bytes.get_or_create(&vec![("transport", transport)]).clone(),
        };
        let frame_errors = errors.get_or_create(&vec![("reason", "frame")]).clone();
        let injected_errors = errors.get_or_create(&vec![("reason", "injected")]).clone();
        let gelf_incomplete = errors
            .get_or_create(&vec![("reason", "gelf_incomplete")])
            .clone();
        let gelf_invalid = errors
            .get_or_create(&vec![("reason", "gelf_invalid")])
            .clone();
        Self {
            name: name.to_owned(),
            udp: counters("udp"),
            tcp: counters("tcp"),
            frame_errors,
            injected_errors,
            gelf_incomplete,
            gelf_invalid,
            tcp_connections,
            registry,
            faults: Faults::new(faults),
        }
    }

    pub(crate) fn counters(&self, transport: Transport) -> &TransportCounters {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
        }
    }
}

/// Keeps `ingest_tcp_connections` right however a connection task ends.
pub(crate) struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
