//! Map keys and values. Every type is `#[repr(C)]` with explicit padding fields so that the
//! kernel hashes exactly the bytes we write; sizes are locked by const asserts.

use core::mem::size_of;

/// Services the datapath can hold. The issue asks for at least 256.
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of the table of established TCP connections (FLOWS). A plain hash, not an LRU:
/// no other sender can evict an established connection; closed and idle entries are removed
/// by the daemon.
pub const FLOW_TABLE_SIZE: u32 = 262_144;
/// Half-open TCP connections (a SYN seen, the handshake not completed): an LRU, so a SYN
/// flood evicts other half-open entries and never an established connection.
pub const HALF_TABLE_SIZE: u32 = 65_536;
/// What may be forgotten: UDP affinity entries and TCP packets that had no entry (pin misses).
/// An LRU.
pub const SOFT_TABLE_SIZE: u32 = 131_072;
/// Pinned-map ABI version: bumped whenever a layout below changes, so a new daemon never
/// adopts maps it cannot read (it uses a fresh folder instead).
pub const MAP_ABI_VERSION: u32 = 4;
/// BPF_F_MMAPABLE: the daemon maps ACTIVE and FLIP_MARKS and flips with plain stores.
pub const MAP_F_MMAPABLE: u32 = 1 << 10;

/// Members (ingest nodes) one colour of a service may have.
pub const MAX_MEMBERS: usize = 64;
/// Slots of a colour's consistent-hashing table: 16 × [`MAX_MEMBERS`], so each of 64 members
/// gets 16 slots (balance within a slot, about 6%) and fewer members proportionally more. A
/// power of two: the slot is `hash & (size - 1)`, which the verifier bounds at once (a
/// modulo by a prime is compiled to multiplications it cannot follow); Maglev's permutations
/// then use odd skips, which are coprime with it.
pub const POOL_TABLE_SIZE: usize = 1024;
/// Per-member counter slots, shared by every member of every service (a member has one while
/// it is in a pool): per-CPU memory stays bounded however many services there are.
pub const MEMBER_SLOTS: u32 = 8192;
/// Chunked GELF messages whose chunks are being steered at once (an LRU: a sender inventing
/// message ids evicts the oldest entries only).
pub const GELF_TABLE_SIZE: u32 = 65_536;

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
    pub const SERVICE_BY_ID: &str = "SERVICE_BY_ID";
    pub const POOLS: &str = "POOLS";
    pub const ACTIVE: &str = "ACTIVE";
    pub const FLIP_MARKS: &str = "FLIP_MARKS";
    pub const FLOWS: &str = "FLOWS";
    pub const HALF_FLOWS: &str = "HALF_FLOWS";
    pub const SOFT_FLOWS: &str = "SOFT_FLOWS";
    pub const FRAGS: &str = "FRAGS";
    pub const GELF_CHUNKS: &str = "GELF_CHUNKS";
    pub const REVERSE: &str = "REVERSE";
    pub const COLOR_COUNTERS: &str = "COLOR_COUNTERS";
    pub const MEMBER_COUNTERS: &str = "MEMBER_COUNTERS";
    pub const MEMBER_LIVE: &str = "MEMBER_LIVE";
    pub const REASON_COUNTERS: &str = "REASON_COUNTERS";
    pub const REDIRECT_OK: &str = "REDIRECT_OK";
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    pub const SHADOW: &str = "SHADOW";
    pub const SHADOW_COUNTERS: &str = "SHADOW_COUNTERS";
    pub const SHADOW_ANY: &str = "SHADOW_ANY";
    pub const XDP_PROG: &str = "switcher_ingress";
    pub const TC_SHADOW_PROG: &str = "switcher_shadow";
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
// The datapath writes the key's last word whole (`parse::key_words`, ingress' `put_keys`).
const _: () = assert!(core::mem::offset_of!(Endpoint, port_be) == 16);
const _: () = assert!(core::mem::offset_of!(Endpoint, proto) == 18);
const _: () = assert!(core::mem::offset_of!(Endpoint, family) == 19);

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
    /// Index into the per-service arrays (ACTIVE, POOLS, FLIP_MARKS, COLOR_COUNTERS).
    pub id: u32,
    pub flags: u32,
    /// UDP source-flow affinity: a flow idle longer than this picks the active colour again.
    pub udp_idle_ns: u64,
    /// How long after a flip a TCP packet with no flow entry is sent to the previous colour.
    pub drain_ns: u64,
    /// Share of new flows sent to the inactive colour, in 1/65536 (canary); 0 = none.
    pub canary_share: u32,
    /// Bumped by every rollback: UDP affinity entries made under an older epoch are void, so a
    /// rollback moves every UDP sender at once.
    pub epoch: u32,
    /// UDP affinity to a colour that is no longer active lasts at most this long (a sender that
    /// never idles still follows a flip).
    pub udp_max_age_ns: u64,
}
const _: () = assert!(size_of::<ServiceValue>() == 40);

/// A service's key and settings by its id (SERVICE_BY_ID): a destination port that only one
/// service uses leads here directly, without hashing the key (see [`port_slot`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    pub key: Endpoint,
    pub _pad: u32,
    pub value: ServiceValue,
}
const _: () = assert!(size_of::<ServiceEntry>() == 64);

/// Entries of SERVICE_PORTS: one per (destination port, TCP or UDP, IPv4 or IPv6).
pub const PORT_SLOTS: u32 = 4 * 65_536;
/// A SERVICE_PORTS value: no service uses the port.
pub const PORT_NONE: u32 = 0;
/// A SERVICE_PORTS value: several services use the slot (their VIPs differ): the datapath
/// looks the packet's key up in SERVICES. Any other value is the id + 1 of the only
/// one, whose key the packet must still match.
pub const PORT_SHARED: u32 = u32::MAX;

/// The SERVICE_PORTS index of destination `port` (host order) over `proto` and `family`.
pub const fn port_slot(port: u16, proto: u8, family: u8) -> u32 {
    port as u32 | ((proto == PROTO_TCP) as u32) << 16 | ((family == FAMILY_V6) as u32) << 17
}

/// Forward with bpf_fib_lookup + XDP_REDIRECT; otherwise XDP_PASS to the kernel.
pub const SVC_F_REDIRECT: u32 = 1 << 0;
/// UDP: keep a source flow on one colour while it is active (ordering).
pub const SVC_F_UDP_AFFINITY: u32 = 1 << 1;
/// UDP: every chunk of a chunked GELF message goes where its first-seen chunk went.
pub const SVC_F_GELF: u32 = 1 << 2;

/// One member (ingest node) of a colour's pool.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub family: u8,
    /// Non-zero when this holds a member.
    pub valid: u8,
    /// Its counter slot in MEMBER_COUNTERS (< [`MEMBER_SLOTS`]).
    pub slot: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Backend>() == 24);

/// Index of (service, colour) in the per-colour arrays (COLOR_COUNTERS).
pub const fn backend_index(service_id: u32, color: u8) -> u32 {
    service_id * 2 + (color as u32 & 1)
}

/// One colour's pool: its members and the consistent-hashing table from flow hash to member.
/// Two buffers per (service, colour), selected by the ACTIVE word: userspace writes the one
/// not in use, then switches with one aligned write, so a packet never sees half a pool.
/// 8-aligned (as the kernel lays out array values anyway): the datapath copies a member as
/// whole words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Members in `member` (the rest are invalid). 0: the colour has no backend.
    pub members: u32,
    pub _pad: u32,
    pub member: [Backend; MAX_MEMBERS],
    /// Flow hash % [`POOL_TABLE_SIZE`] → index into `member`. Members out of service (health)
    /// keep their index but get no slot.
    pub table: [u8; POOL_TABLE_SIZE],
}
const _: () = assert!(size_of::<Pool>() == 8 + 24 * MAX_MEMBERS + POOL_TABLE_SIZE);
const _: () = assert!(POOL_TABLE_SIZE.is_power_of_two());

impl Default for Pool {
    fn default() -> Self {
        Self {
            members: 0,
            _pad: 0,
            member: [Backend::default(); MAX_MEMBERS],
            table: [0; POOL_TABLE_SIZE],
        }
    }
}

/// Index of a pool buffer in POOLS.
pub const fn pool_index(service_id: u32, color: u8, buffer: u8) -> u32 {
    (backend_index(service_id, color) << 1) | (buffer as u32 & 1)
}

/// The ACTIVE map value: one aligned u32 per service, so a flip (or a pool change) is a single
/// 4-byte write and no reader can see a torn state. Bit 0 is the active colour, bit 1 the
/// blue pool's buffer, bit 2 the green pool's, bits 8..32 the flip generation.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveWord(pub u32);

impl ActiveWord {
    /// Both pools on buffer 0.
    pub const fn new(color: u8, generation: u32) -> Self {
        Self(((generation & 0x00ff_ffff) << 8) | (color as u32 & 1))
    }
    pub const fn color(self) -> u8 {
        (self.0 & 1) as u8
    }
    pub const fn generation(self) -> u32 {
        self.0 >> 8
    }
    /// The buffer `color`'s pool is read from.
    pub const fn buffer(self, color: u8) -> u8 {
        ((self.0 >> (1 + (color as u32 & 1))) & 1) as u8
    }
    /// The word a flip to `color` writes: next generation, pools unchanged.
    pub const fn flipped_to(self, color: u8) -> Self {
        let buffers = self.0 & 0b110;
        Self(Self::new(color, self.generation().wrapping_add(1)).0 | buffers)
    }
    /// The word that makes `color`'s pool read from its other buffer; nothing else changes.
    pub const fn pool_switched(self, color: u8) -> Self {
        Self(self.0 ^ (1 << (1 + (color as u32 & 1))))
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
// The datapath writes the key as five words in this order (`parse::key_words`).
const _: () = assert!(core::mem::offset_of!(FlowKey, dst) == 16);
const _: () = assert!(core::mem::offset_of!(FlowKey, sport_be) == 32);
const _: () = assert!(core::mem::offset_of!(FlowKey, dport_be) == 34);
const _: () = assert!(core::mem::offset_of!(FlowKey, proto) == 36);
const _: () = assert!(core::mem::offset_of!(FlowKey, family) == 37);

pub const FLOW_OPEN: u8 = 1;
/// FIN or RST seen: the flow keeps its backend for its last packets, a new SYN re-picks, and
/// the daemon removes the entry after a grace time.
pub const FLOW_CLOSING: u8 = 2;

/// The client sent data on this connection (not a bare handshake): a reset from its backend
/// then says something about the backend's health.
pub const FLOW_F_DATA: u8 = 1 << 0;

/// Where a flow goes, in every flow table (established, half-open, soft): the colour and the
/// exact member, so a flow keeps its node across flips and pool changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub service_id: u32,
    pub color: u8,
    pub state: u8,
    pub flags: u8,
    pub _pad: u8,
    /// The service's affinity epoch when the entry was made (UDP).
    pub epoch: u32,
    pub _pad2: u32,
    /// Coarse kernel time the flow was last seen (refreshed at most every
    /// [`crate::decide::TOUCH_NS`]), or when it started closing.
    pub last_seen_ns: u64,
    pub created_ns: u64,
    pub backend: Backend,
}
const _: () = assert!(size_of::<FlowValue>() == 56);

/// IP fragments of one datagram: (src, dst, IP identification, protocol). For IPv6 the
/// protocol is the Fragment header's next header, the same in every fragment (the first one's
/// transport protocol may lie behind further headers that later fragments do not repeat).
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

/// Where a datagram's first fragment, or a GELF message's first-seen chunk, went: the value
/// of FRAGS and of GELF_CHUNKS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub service_id: u32,
    pub color: u8,
    pub _pad: [u8; 3],
    pub created_ns: u64,
    /// The member the first fragment went to: every fragment follows it.
    pub backend: Backend,
}
const _: () = assert!(size_of::<FragValue>() == 40);

/// A chunked GELF message towards a service: its sender's address and its message id (a
/// sender may spread chunks over several source ports; ids are unique per sender).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GelfKey {
    pub src: [u8; 16],
    /// The service: VIP, port, family (the protocol is UDP).
    pub dst: [u8; 16],
    pub message_id: [u8; 8],
    pub dport_be: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<GelfKey>() == 44);

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
    /// `REV_F_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ReverseValue>() == 28);

/// A UDP service without affinity keeps no flow state, so its replies cannot be matched to a
/// steered flow: every datagram from the member's address and port gets the VIP as source.
pub const REV_F_STATELESS: u8 = 1;
/// The member left its pool (a reload removed it) while connections still use it: their
/// replies still need the VIP as source. The daemon removes the entry once no flow uses the
/// member any more. The datapath ignores the bit.
pub const REV_F_DRAINING: u8 = 2;

/// Shadowing of a service's UDP packets to its candidate (a validation step): index the
/// service id. While `share` is set and `until_ns` not passed, XDP hands the service's packets
/// to the kernel after steering them (never XDP_REDIRECT), and the TC ingress program sends a
/// copy of that share of them to a member of `color`'s pool at `port_be`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowValue {
    /// Share of the packets copied, in 1/65536 (65536: all); 0: off.
    pub share: u32,
    /// The candidate colour (copies go to its pool's members, by the client's flow hash).
    pub color: u8,
    pub _pad: u8,
    /// The candidate members' shadow port, network order.
    pub port_be: u16,
    /// Copies stop at this kernel time (bpf_ktime_get_coarse_ns) even if nobody clears the
    /// entry: a crashed daemon cannot leave copies flowing.
    pub until_ns: u64,
}
const _: () = assert!(size_of::<ShadowValue>() == 16);

/// Per-CPU shadowing counters of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowCounters {
    /// Copies sent to the candidate.
    pub copies: u64,
    /// Packets selected whose copy could not be made (no member, a rewrite or the clone
    /// failed); the original went on unchanged.
    pub failed: u64,
}
const _: () = assert!(size_of::<ShadowCounters>() == 16);

impl ShadowCounters {
    pub fn add(&mut self, other: &ShadowCounters) {
        self.copies = self.copies.wrapping_add(other.copies);
        self.failed = self.failed.wrapping_add(other.failed);
    }
}

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

/// Per-CPU counters of one member: index [`Backend::slot`] in MEMBER_COUNTERS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(size_of::<MemberCounters>() == 24);

impl MemberCounters {
    pub fn add(&mut self, other: &MemberCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

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
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ActiveWord {}
    unsafe impl aya::Pod for FlipMark {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for GelfKey {}
    unsafe impl aya::Pod for ReverseValue {}
    unsafe impl aya::Pod for ColorCounters {}
    unsafe impl aya::Pod for MemberCounters {}
    unsafe impl aya::Pod for Pool {}
    unsafe impl aya::Pod for ShadowValue {}
    unsafe impl aya::Pod for ShadowCounters {}
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
    fn pool_buffers_switch_without_touching_colour_or_generation() {
        let w = ActiveWord::new(GREEN, 9);
        assert_eq!((w.buffer(BLUE), w.buffer(GREEN)), (0, 0));
        let s = w.pool_switched(BLUE);
        assert_eq!((s.color(), s.generation()), (GREEN, 9));
        assert_eq!((s.buffer(BLUE), s.buffer(GREEN)), (1, 0));
        let s = s.pool_switched(GREEN).pool_switched(BLUE);
        assert_eq!((s.buffer(BLUE), s.buffer(GREEN)), (0, 1));
        // A flip keeps the buffers.
        let f = s.flipped_to(BLUE);
        assert_eq!((f.color(), f.generation()), (BLUE, 10));
        assert_eq!((f.buffer(BLUE), f.buffer(GREEN)), (0, 1));
        assert_eq!(pool_index(3, GREEN, 1), 15);
        assert_eq!(pool_index(3, BLUE, 0), 12);
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
