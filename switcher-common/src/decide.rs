//! Which colour (and which recorded member) a packet goes to, and what the flow tables must
//! remember. Pure functions, so the rules the datapath applies are tested here and the eBPF
//! side only moves bytes. The tables (see README "Datapath rules"):
//! - FLOWS: established TCP connections, a plain hash nobody else can evict from;
//! - HALF_FLOWS: connections whose handshake has not completed (an LRU: a SYN flood evicts
//!   only other half-open entries);
//! - SOFT_FLOWS: UDP affinity and TCP packets that came without any entry (an LRU).

use crate::{ActiveWord, FlipMark, FlowValue, FLOW_CLOSING, FLOW_F_DATA, FLOW_OPEN};

/// What the service's state says about colours at the time of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColorState {
    pub active: u8,
    /// The colour that was active before the last flip, while its drain window lasts.
    pub draining: Option<u8>,
    /// This new flow falls in the canary share (goes to the inactive colour).
    pub canary: bool,
}

impl ColorState {
    /// Derives the state from the ACTIVE word and the last flip mark.
    #[inline(always)]
    pub fn new(active: ActiveWord, mark: &FlipMark, drain_ns: u64, now_ns: u64) -> Self {
        let draining = (mark.generation == active.generation()
            && mark.flip_ns != 0
            && now_ns < mark.flip_ns.saturating_add(drain_ns))
        .then_some(active.color() ^ 1);
        Self {
            active: active.color(),
            draining,
            canary: false,
        }
    }

    /// The colour a brand-new flow gets.
    pub const fn new_flow_color(&self) -> u8 {
        if self.canary {
            self.active ^ 1
        } else {
            self.active
        }
    }
}

/// Is this new flow in the canary share? `random` is uniformly distributed.
pub const fn in_canary(share: u32, random: u32) -> bool {
    share != 0 && (random & 0xffff) < share
}

/// What to do with one flow table's entry for this packet's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Keep,
    /// Insert or overwrite with the decision's colour, state, flags and the time now.
    Put,
    Delete,
}

/// Where the packet's member comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Established,
    HalfOpen,
    Soft,
    /// Chosen now: the colour's pool, slot by flow hash.
    Pick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub source: Source,
    pub color: u8,
    /// Operations on FLOWS, HALF_FLOWS and SOFT_FLOWS for this flow.
    pub est: Op,
    pub half: Op,
    pub soft: Op,
    /// State and flags an entry written with `Op::Put` gets.
    pub state: u8,
    pub flags: u8,
    pub new_flow: bool,
    pub pin_miss: bool,
}

impl Decision {
    const fn from_entry(source: Source, e: &FlowValue) -> Self {
        Self {
            source,
            color: e.color,
            est: Op::Keep,
            half: Op::Keep,
            soft: Op::Keep,
            state: e.state,
            flags: e.flags,
            new_flow: false,
            pin_miss: false,
        }
    }

    const fn pick(color: u8) -> Self {
        Self {
            source: Source::Pick,
            color,
            est: Op::Keep,
            half: Op::Keep,
            soft: Op::Keep,
            state: FLOW_OPEN,
            flags: 0,
            new_flow: false,
            pin_miss: false,
        }
    }
}

/// How long an entry may go without a refresh of `last_seen_ns` (refreshing costs a map
/// write; idle timeouts are measured with this granularity).
pub const TOUCH_NS: u64 = 1_000_000_000;

#[inline(always)]
fn stale(e: &FlowValue, now_ns: u64) -> bool {
    now_ns.saturating_sub(e.last_seen_ns) > TOUCH_NS
}

/// The TCP flags that matter for pinning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

impl TcpFlags {
    pub const fn from_byte(b: u8) -> Self {
        Self {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            ack: b & 0x10 != 0,
        }
    }
}

/// What one TCP packet of the client finds in the flow tables (looked up in this order; a
/// later table is not consulted when an earlier one has the flow).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpEntries<'a> {
    pub established: Option<&'a FlowValue>,
    pub half_open: Option<&'a FlowValue>,
    pub soft: Option<&'a FlowValue>,
}

/// TCP: a connection is pinned at its SYN (half-open), moves to the protected table when its
/// handshake completes, keeps its member until it closes, and is re-picked by a SYN after it
/// closed. See README "Datapath rules".
#[inline(always)]
pub fn decide_tcp(
    flags: TcpFlags,
    payload: bool,
    found: TcpEntries<'_>,
    st: &ColorState,
    now_ns: u64,
) -> Decision {
    let opening = flags.syn && !flags.ack;
    let closing = flags.fin || flags.rst;
    let data = if payload { FLOW_F_DATA } else { 0 };
    if let Some(e) = found.established {
        if opening && e.state == FLOW_CLOSING {
            // The tuple is reused by a new connection: it starts over as half-open.
            let mut d = new_connection(st);
            d.est = Op::Delete;
            return d;
        }
        let mut d = Decision::from_entry(Source::Established, e);
        // Data without FIN or RST on a closing entry: the connection is alive after all (a
        // reset or FIN spoofed with its tuple marked it), so the sweeper must not remove it.
        let state = if closing {
            FLOW_CLOSING
        } else if payload && e.state == FLOW_CLOSING {
            FLOW_OPEN
        } else {
            e.state
        };
        let flags = e.flags | data;
        // Closing is recorded once (its time starts the grace the daemon waits before it
        // removes the entry); data once; otherwise a touch now and then for the idle timeout.
        if state != e.state || flags != e.flags || (e.state == FLOW_OPEN && stale(e, now_ns)) {
            d.est = Op::Put;
            d.state = state;
            d.flags = flags;
        }
        return d;
    }
    if let Some(h) = found.half_open {
        let mut d = Decision::from_entry(Source::HalfOpen, h);
        if !opening {
            // The client's first packet after its SYN: the handshake completed (or was
            // aborted): the connection moves to the protected table.
            d.est = Op::Put;
            d.half = Op::Delete;
            d.state = if closing { FLOW_CLOSING } else { FLOW_OPEN };
            d.flags = h.flags | data;
        }
        return d;
    }
    if let Some(s) = found.soft {
        if opening {
            let mut d = new_connection(st);
            d.soft = Op::Delete;
            return d;
        }
        let mut d = Decision::from_entry(Source::Soft, s);
        if (closing && s.state != FLOW_CLOSING) || stale(s, now_ns) {
            d.soft = Op::Put;
            d.state = if closing { FLOW_CLOSING } else { s.state };
        }
        return d;
    }
    if opening {
        return new_connection(st);
    }
    // No entry for a mid-connection packet: the connection predates the switch, its entry
    // was removed as idle, or a table was full. While the previous colour drains, the
    // connection most likely lives there; afterwards only the active colour is left. Such
    // entries go to the soft table: anyone can send a bare ACK, so they must not be able to
    // fill the protected one.
    let mut d = Decision::pick(st.draining.unwrap_or(st.active));
    d.soft = Op::Put;
    d.state = if closing { FLOW_CLOSING } else { FLOW_OPEN };
    d.pin_miss = true;
    d
}

#[inline(always)]
fn new_connection(st: &ColorState) -> Decision {
    let mut d = Decision::pick(st.new_flow_color());
    d.half = Op::Put;
    d.new_flow = true;
    d
}

/// What UDP affinity needs to know about the service.
#[derive(Clone, Copy, Debug)]
pub struct Affinity {
    pub idle_ns: u64,
    /// To a colour that is no longer active, at most this long after the entry was made.
    pub max_age_ns: u64,
    /// The service's rollback epoch: older entries are void.
    pub epoch: u32,
}

/// UDP: per packet to the active colour (member by flow hash), or with affinity, per source
/// flow until it idles out, a rollback voids it, or (after a flip away from its colour) it
/// reaches its maximum age.
#[inline(always)]
pub fn decide_udp(
    affinity: Option<&Affinity>,
    entry: Option<&FlowValue>,
    st: &ColorState,
    now_ns: u64,
) -> Decision {
    let Some(a) = affinity else {
        return Decision::pick(st.new_flow_color());
    };
    if let Some(e) = entry {
        let fresh = now_ns.saturating_sub(e.last_seen_ns) <= a.idle_ns;
        let current = e.color == st.active || now_ns.saturating_sub(e.created_ns) <= a.max_age_ns;
        if e.epoch == a.epoch && fresh && current {
            let mut d = Decision::from_entry(Source::Soft, e);
            if stale(e, now_ns) {
                d.soft = Op::Put;
            }
            return d;
        }
    }
    let mut d = Decision::pick(st.new_flow_color());
    d.soft = Op::Put;
    d.new_flow = true;
    d
}

/// Egress: whether a TCP reset the backend sends on a flow says something about the backend
/// (`established_flags`: the flags of the flow's established entry, if it has one).
/// A reset of an established connection the client sent data on, or of a half-open one
/// (the backend refused the connection), does; a reset answering a stray packet with no
/// connection (anyone can send a bare ACK to the VIP) does not.
pub const fn reset_counts(established_flags: Option<u8>, half_open: bool) -> bool {
    match established_flags {
        Some(flags) => flags & FLOW_F_DATA != 0,
        None => half_open,
    }
}

#[cfg(test)]
mod tests;
