//! The datapath's maps, all pinned by name so a restarted daemon adopts them with their state.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use switcher_common::{
    ActiveWord, Backend, ColorCounters, Endpoint, FlipMark, FlowKey, FlowValue, FragKey, FragValue,
    GelfKey, MemberCounters, Pool, Reason, ReverseValue, ServiceEntry, ServiceValue,
    ShadowCounters, ShadowValue, FLOW_TABLE_SIZE, GELF_TABLE_SIZE, HALF_TABLE_SIZE, MAP_F_MMAPABLE,
    MAX_SERVICES, MEMBER_SLOTS, PORT_SLOTS, SOFT_TABLE_SIZE,
};

/// Datagrams being reassembled at once; LRU evicts the oldest when full.
pub const FRAG_TABLE_SIZE: u32 = 16_384;

#[map]
pub static SERVICES: HashMap<Endpoint, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);
/// By [`switcher_common::port_slot`]: which services use that destination port and protocol
/// (PORT_NONE, PORT_SHARED, or the id + 1 of the only one). Most traffic on an edge is not
/// for a service and passes after this array lookup alone; a port with one service leads to
/// its entry in SERVICE_BY_ID without hashing the 20-byte key (hashing it was about a fifth
/// of a service hit's cost).
#[map]
pub static SERVICE_PORTS: Array<u32> = Array::pinned(PORT_SLOTS, 0);
#[map]
pub static SERVICE_BY_ID: Array<ServiceEntry> = Array::pinned(MAX_SERVICES, 0);
/// Two buffers per (service, colour): see [`switcher_common::Pool`].
#[map]
pub static POOLS: Array<Pool> = Array::pinned(MAX_SERVICES * 4, 0);
/// Mapped by the daemon (MAP_F_MMAPABLE): a flip is a store into it, not a system call.
#[map]
pub static ACTIVE: Array<ActiveWord> = Array::pinned(MAX_SERVICES, MAP_F_MMAPABLE);
#[map]
pub static FLIP_MARKS: Array<FlipMark> = Array::pinned(MAX_SERVICES, MAP_F_MMAPABLE);
/// Established TCP connections: a plain hash, so no other sender can evict one (the daemon
/// removes closed and idle entries).
#[map]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::pinned(FLOW_TABLE_SIZE, 0);
/// TCP connections whose handshake has not completed: a SYN flood churns only this LRU.
#[map]
pub static HALF_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(HALF_TABLE_SIZE, 0);
/// UDP affinity and TCP pin misses: what may be forgotten.
#[map]
pub static SOFT_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(SOFT_TABLE_SIZE, 0);
#[map]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAG_TABLE_SIZE, 0);
/// Chunked GELF messages → where their first-seen chunk went.
#[map]
pub static GELF_CHUNKS: LruHashMap<GelfKey, FragValue> = LruHashMap::pinned(GELF_TABLE_SIZE, 0);
/// Every member's (address, port, protocol) → the service and VIP its replies come from.
#[map]
pub static REVERSE: HashMap<Endpoint, ReverseValue> =
    HashMap::pinned(MAX_SERVICES * 2 * switcher_common::MAX_MEMBERS as u32, 0);
#[map]
pub static COLOR_COUNTERS: PerCpuArray<ColorCounters> = PerCpuArray::pinned(MAX_SERVICES * 2, 0);
#[map]
pub static MEMBER_COUNTERS: PerCpuArray<MemberCounters> = PerCpuArray::pinned(MEMBER_SLOTS, 0);
/// By member counter slot: 1 while the member holds slots of its pool's table in use, else 0
/// (out of service, or no longer a member). UDP affinity follows a member only while it is 1.
#[map]
pub static MEMBER_LIVE: Array<u32> = Array::pinned(MEMBER_SLOTS, 0);
/// Interfaces (ifindex → 1) that accept XDP_REDIRECTed frames, kept current by the daemon.
/// A redirect anywhere else would be dropped after the program returned.
#[map]
pub static REDIRECT_OK: HashMap<u32, u32> = HashMap::pinned(1024, 0);
#[map]
pub static SHADOW: Array<ShadowValue> = Array::pinned(MAX_SERVICES, 0);
/// Entry 0: non-zero while some service is shadowed. Every other packet leaves the shadow
/// program after this one lookup, so the kernel path pays nearly nothing for it.
#[map]
pub static SHADOW_ANY: Array<u32> = Array::pinned(1, 0);
#[map]
pub static SHADOW_COUNTERS: PerCpuArray<ShadowCounters> = PerCpuArray::pinned(MAX_SERVICES, 0);
#[map]
pub static REASON_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// The member of `color`'s pool of service `id` (the buffer `active` selects) that `flow`
/// hashes to: the one lookup both ingress and the shadow copies pick members with.
#[inline(always)]
pub fn pool_member(
    id: u32,
    color: u8,
    active: ActiveWord,
    flow: &FlowKey,
) -> Option<&'static Backend> {
    let pool = POOLS.get(switcher_common::pool_index(id, color, active.buffer(color)))?;
    match pool.members {
        0 => return None,
        // Every slot of a one-member table names it (even out of service: a pool with none
        // in service keeps all), so the flow's hash is not needed.
        1 => return pool.member.first(),
        _ => {}
    }
    let slot = switcher_common::hash::slot(switcher_common::hash::flow_hash(flow));
    let &m = pool.table.get(slot)?;
    pool.member.get(m as usize)
}

/// Scratch space for bpf_fib_lookup parameters (not pinned: holds no state).
#[map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Per-packet working set kept off the 512-byte stack: keys are built here and passed to map
/// helpers directly, and flow entries are copied here before any map write (a preallocated
/// hash map may hand the element we read to another CPU's insert).
#[repr(C)]
pub struct Scratch {
    pub flow: FlowKey,
    pub svc: Endpoint,
    pub _pad: u32,
    pub frag: FragKey,
    /// The chunked GELF message this packet carries a chunk of, if any.
    pub gelf: GelfKey,
    pub _pad2: u32,
    /// Where that message's first-seen chunk went.
    pub chunk: FragValue,
    /// The flow entry the packet found, if any.
    pub found: FlowValue,
    /// The entry this packet writes.
    pub put: FlowValue,
    /// The member the packet goes to.
    pub backend: Backend,
}

// `flow` and `svc` are written a word at a time, and `svc` is compared a word at a time with
// SERVICE_BY_ID keys (8-aligned map values).
const _: () = assert!(core::mem::offset_of!(IngressScratch, work) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, flow) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, svc) % 8 == 0);
// `backend` is copied from pool members a word at a time (ingress' `copy_member`).
const _: () = assert!(core::mem::offset_of!(Scratch, backend) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Pool, member) % 8 == 0);
const _: () = assert!(core::mem::size_of::<Backend>().is_multiple_of(8));

/// Ingress's per-CPU slot: one lookup yields both parts, which are borrowed apart.
#[repr(C)]
pub struct IngressScratch {
    pub work: Scratch,
    /// The packet's service settings, copied from SERVICE_BY_ID or SERVICES: the verifier
    /// then follows one kind of pointer onwards, not one per map (which doubled its paths past
    /// its limit).
    pub service: ServiceValue,
}

#[map]
pub static SCRATCH: PerCpuArray<IngressScratch> = PerCpuArray::with_max_entries(1, 0);

/// Egress's working set (TC egress and XDP ingress may not share one: separate contexts).
#[repr(C)]
pub struct EgressScratch {
    pub reply: FlowKey,
    /// The flow of the client towards the VIP that the reply answers.
    pub flow: FlowKey,
    pub backend: Endpoint,
    pub _pad: u32,
}

/// The shadow program's working set.
#[repr(C)]
pub struct ShadowScratch {
    pub pkt: FlowKey,
    /// The client's flow towards the VIP (hashed to pick the candidate member).
    pub flow: FlowKey,
    /// The packet's destination (the serving member).
    pub member: Endpoint,
    pub _pad: u32,
    /// Where its copy goes: a candidate member's address, the shadow port.
    pub to: [u8; 16],
    pub to_port_be: u16,
    pub color: u8,
    pub _pad2: u8,
    pub service_id: u32,
}

#[map]
pub static SHADOW_SCRATCH: PerCpuArray<ShadowScratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static EGRESS_SCRATCH: PerCpuArray<EgressScratch> = PerCpuArray::with_max_entries(1, 0);
