//! Map keys and values. Every type is `#[repr(C)]` with explicit padding fields so that the
//! kernel hashes exactly the bytes we write; sizes are locked by const asserts.

use core::mem::size_of;

/// Services the datapath can hold. The issue asks for at least 256.
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of the flow table (an LRU hash: when full, inserts evict the least recently used).
pub const FLOW_TABLE_SIZE: u32 = 262_144;
/// Pinned-map ABI version: bumped whenever a layout below changes, so a new daemon never
/// adopts maps it cannot read (it uses a fresh folder instead).
pub const MAP_ABI_VERSION: u32 = 1;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

pub const BLUE: u8 = 0;
pub const GREEN: u8 = 1;

/// Map names, shared so userspace cannot drift from the eBPF side.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const ACTIVE: &str = "ACTIVE";
    pub const FLIP_MARKS: &str = "FLIP_MARKS";
    pub const FLOWS: &str = "FLOWS";
    pub const FRAGS: &str = "FRAGS";
    pub const REVERSE: &str = "REVERSE";
    pub const COLOR_COUNTERS: &str = "COLOR_COUNTERS";
    pub const REASON_COUNTERS: &str = "REASON_COUNTERS";
    pub const REDIRECT_OK: &str = "REDIRECT_OK";
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    pub const XDP_PROG: &str = "switcher_ingress";
    pub const TC_PROG: &str = "switcher_egress";
}

/// An L4 endpoint as the datapath matches it: the service key (VIP, port, protocol) and the
/// reverse-translation key (backend address, port, protocol) share this layout.
/// IPv4 addresses occupy the first 4 bytes of `addr`, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    /// Network byte order, as it appears in the packet.
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<Endpoint>() == 20);

impl Endpoint {
    pub fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        Self {
            addr: a,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V4,
        }
    }

    pub fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V6,
        }
    }

    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

/// Per-service settings, keyed by the service [`Endpoint`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service arrays (ACTIVE, BACKENDS, FLIP_MARKS, COLOR_COUNTERS).
    pub id: u32,
    pub flags: u32,
    /// UDP source-flow affinity: a flow idle longer than this picks the active colour again.
    pub udp_idle_ns: u64,
    /// How long after a flip a TCP packet with no flow entry is sent to the previous colour.
    pub drain_ns: u64,
    /// Share of new flows sent to the inactive colour, in 1/65536 (canary); 0 = none.
    pub canary_share: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 32);

/// Forward with bpf_fib_lookup + XDP_REDIRECT; otherwise XDP_PASS to the kernel.
pub const SVC_F_REDIRECT: u32 = 1 << 0;
/// UDP: keep a source flow on one colour while it is active (GELF chunks, ordering).
pub const SVC_F_UDP_AFFINITY: u32 = 1 << 1;

/// One backend slot: index `service_id * 2 + color` in BACKENDS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u8,
    /// Non-zero when the slot holds a backend.
    pub valid: u8,
}
const _: () = assert!(size_of::<Backend>() == 20);

pub const fn backend_index(service_id: u32, color: u8) -> u32 {
    service_id * 2 + (color as u32 & 1)
}

/// The ACTIVE map value: one aligned u32 per service, so a flip is a single 4-byte write and no
/// reader can see a torn state. Bit 0 is the colour, bits 8..32 the flip generation.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveWord(pub u32);

impl ActiveWord {
    pub const fn new(color: u8, generation: u32) -> Self {
        Self(((generation & 0x00ff_ffff) << 8) | (color as u32 & 1))
    }
    pub const fn color(self) -> u8 {
        (self.0 & 1) as u8
    }
    pub const fn generation(self) -> u32 {
        self.0 >> 8
    }
    /// The word a flip to `color` writes.
    pub const fn flipped_to(self, color: u8) -> Self {
        Self::new(color, self.generation().wrapping_add(1))
    }
}

/// Written by userspace just before a flip (same generation as the new ACTIVE word); the
/// datapath fills `first_ns[color]` with the kernel time of the first packet each colour gets
/// after it: the in-kernel cutover measurement.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlipMark {
    pub generation: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) when userspace wrote the flip.
    pub flip_ns: u64,
    pub first_ns: [u64; 2],
}
const _: () = assert!(size_of::<FlipMark>() == 32);

/// Flow table key: the client's 5-tuple towards the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

pub const FLOW_OPEN: u8 = 1;
/// FIN or RST seen: the flow keeps its colour for its last packets, a new SYN re-picks.
pub const FLOW_CLOSING: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub service_id: u32,
    pub color: u8,
    pub state: u8,
    pub _pad: [u8; 2],
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<FlowValue>() == 16);

/// IP fragments of one datagram: (src, dst, IP identification, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub service_id: u32,
    pub color: u8,
    pub _pad: [u8; 3],
    pub created_ns: u64,
}
const _: () = assert!(size_of::<FragValue>() == 16);

/// Fragments older than this no longer steer (the kernel's reassembly timeout is 30 s).
pub const FRAG_TTL_NS: u64 = 30_000_000_000;

/// Reverse translation for replies: keyed by the backend [`Endpoint`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    pub vip: [u8; 16],
    pub vport_be: u16,
    pub family: u8,
    /// The colour whose backend this is, for the per-colour reset counter.
    pub color: u8,
    pub service_id: u32,
}
const _: () = assert!(size_of::<ReverseValue>() == 24);

/// Per-CPU counters of one (service, colour): index `backend_index(id, color)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColorCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// TCP packets with no flow entry that were steered by the drain rule.
    pub pin_misses: u64,
    /// TCP resets this colour's backend sent to clients (counted on egress).
    pub resets: u64,
    /// ICMP destination-unreachable errors about packets sent to this colour's backend.
    pub unreachables: u64,
}
const _: () = assert!(size_of::<ColorCounters>() == 48);

impl ColorCounters {
    pub fn add(&mut self, other: &ColorCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
        self.pin_misses = self.pin_misses.wrapping_add(other.pin_misses);
        self.resets = self.resets.wrapping_add(other.resets);
        self.unreachables = self.unreachables.wrapping_add(other.unreachables);
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, made only of integers and byte arrays, and have no
    // implicit padding (checked by the size asserts above).
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ActiveWord {}
    unsafe impl aya::Pod for FlipMark {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for ReverseValue {}
    unsafe impl aya::Pod for ColorCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_word_flip_bumps_generation_and_sets_color() {
        let w = ActiveWord::new(BLUE, 7);
        assert_eq!(w.color(), BLUE);
        assert_eq!(w.generation(), 7);
        let f = w.flipped_to(GREEN);
        assert_eq!(f.color(), GREEN);
        assert_eq!(f.generation(), 8);
        // Generation wraps within its 24 bits without touching the colour bit.
        let top = ActiveWord::new(GREEN, 0x00ff_ffff).flipped_to(BLUE);
        assert_eq!(top.generation(), 0);
        assert_eq!(top.color(), BLUE);
    }

    #[test]
    fn endpoint_keeps_port_in_network_order() {
        let e = Endpoint::v4([198, 18, 10, 10], 514, PROTO_UDP);
        assert_eq!(e.port(), 514);
        assert_eq!(e.port_be.to_ne_bytes(), [0x02, 0x02]);
        assert_eq!(&e.addr[4..], &[0u8; 12]);
    }

    #[test]
    fn backend_index_interleaves_colors() {
        assert_eq!(backend_index(0, BLUE), 0);
        assert_eq!(backend_index(0, GREEN), 1);
        assert_eq!(backend_index(5, GREEN), 11);
    }
}
