//! The datapath's maps, all pinned by name so a restarted daemon adopts them with their state.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use switcher_common::{
    ActiveWord, Backend, ColorCounters, Endpoint, FlipMark, FlowKey, FlowValue, FragKey, FragValue,
    Reason, ReverseValue, ServiceValue, FLOW_TABLE_SIZE, MAX_SERVICES,
};

/// Datagrams being reassembled at once; LRU evicts the oldest when full.
pub const FRAG_TABLE_SIZE: u32 = 16_384;

#[map]
pub static SERVICES: HashMap<Endpoint, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);
/// Destination ports (host order) that some service uses: 1, else 0. An array lookup is
/// far cheaper than hashing the 20-byte service key, and most traffic on an edge is not for a
/// service: it passes after this check alone.
#[map]
pub static SERVICE_PORTS: Array<u32> = Array::pinned(65_536, 0);
#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_SERVICES * 2, 0);
#[map]
pub static ACTIVE: Array<ActiveWord> = Array::pinned(MAX_SERVICES, 0);
#[map]
pub static FLIP_MARKS: Array<FlipMark> = Array::pinned(MAX_SERVICES, 0);
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(FLOW_TABLE_SIZE, 0);
#[map]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAG_TABLE_SIZE, 0);
#[map]
pub static REVERSE: HashMap<Endpoint, ReverseValue> = HashMap::pinned(MAX_SERVICES * 2, 0);
#[map]
pub static COLOR_COUNTERS: PerCpuArray<ColorCounters> = PerCpuArray::pinned(MAX_SERVICES * 2, 0);
/// Interfaces (ifindex → 1) that accept XDP_REDIRECTed frames, kept current by the daemon.
/// A redirect anywhere else would be dropped after the program returned.
#[map]
pub static REDIRECT_OK: HashMap<u32, u32> = HashMap::pinned(1024, 0);
#[map]
pub static REASON_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Scratch space for bpf_fib_lookup parameters (not pinned: holds no state).
#[map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Per-packet working set kept off the 512-byte stack: the flow key, the service key and the
/// fragment key are built here and passed to map helpers directly.
#[repr(C)]
pub struct Scratch {
    pub flow: FlowKey,
    pub svc: Endpoint,
    pub _pad: u32,
    pub frag: FragKey,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
