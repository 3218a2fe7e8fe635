//! XDP ingress: find the service, pick the colour (flow pinning, drain, canary), rewrite the
//! destination to that colour's backend with incremental checksums, then forward.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::XdpContext,
};
use switcher_common::{
    backend_index,
    csum::Delta,
    decide::{self, ColorState, FlowWrite, TcpFlags},
    parse::{self, Frag, Frame, Parsed, L4},
    Backend, FlowKey, FlowValue, FragKey, FragValue, Reason, FAMILY_V4, FRAG_TTL_NS, PROTO_TCP,
    PROTO_UDP, SVC_F_REDIRECT, SVC_F_UDP_AFFINITY,
};

use crate::{
    counters, forward,
    frame::XdpFrame,
    maps::{Scratch, ACTIVE, BACKENDS, FLIP_MARKS, FLOWS, FRAGS, SCRATCH, SERVICES, SERVICE_PORTS},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> Option<u32> {
    let f = XdpFrame::new(ctx);
    // SAFETY: per-CPU scratch slot, used by this program run only (XDP runs are not preempted
    // by another XDP run on the same CPU).
    let s: &mut Scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    let p = match parse::parse(&f, &mut s.flow) {
        Ok(p) => p,
        Err(r) => return Some(pass(r)),
    };
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return Some(pass(Reason::NotService));
    }
    if let Frag::Later(id) = p.frag {
        return Some(follow_fragment(&f, &p, s, id));
    }
    let l4 = match parse::parse_l4(&f, &p) {
        Ok(l4) => l4,
        Err(r) => return Some(pass(r)),
    };
    if SERVICE_PORTS.get(u32::from(u16::from_be_bytes(l4.dport))) != Some(&1) {
        return Some(pass(Reason::NotService));
    }
    s.flow.sport_be = u16::from_ne_bytes(l4.sport);
    s.flow.dport_be = u16::from_ne_bytes(l4.dport);
    s.flow._pad = [0; 2];
    s.svc.addr = s.flow.dst;
    s.svc.port_be = s.flow.dport_be;
    s.svc.proto = p.proto;
    s.svc.family = p.family;
    // SAFETY: SERVICES values are only replaced whole by userspace (RCU); the reference stays
    // valid for this run.
    let Some(svc) = (unsafe { SERVICES.get(&s.svc) }) else {
        return Some(pass(Reason::NotService));
    };
    let active = *ACTIVE.get(svc.id)?;
    let mark = FLIP_MARKS.get_ptr_mut(svc.id)?;
    // bpf_ktime_get_ns costs more than the rest of an established-flow hit, so it is read only
    // on the paths that use the time (pin misses, flow writes, UDP affinity, cutover marks).
    let mut clock = Clock::new();
    let tcp = p.proto == PROTO_TCP;
    let affinity = svc.flags & SVC_F_UDP_AFFINITY != 0;
    // UDP without affinity never consults the flow table: skip the lookup.
    // SAFETY: the entry is copied out before any map write.
    let entry = if tcp || affinity {
        unsafe { FLOWS.get(&s.flow) }.copied()
    } else {
        None
    };
    // Only a TCP packet without a flow entry can be steered by the drain window; every other
    // decision ignores it, so the window (and the time) is not computed for them.
    let draining = if tcp && entry.is_none() {
        // SAFETY: array slot; a concurrent userspace write can at worst make us misjudge the
        // drain window for one packet, and the generation check guards the timestamp.
        ColorState::new(active, unsafe { &*mark }, svc.drain_ns, clock.now()).draining
    } else {
        None
    };
    let mut st = ColorState {
        active: active.color(),
        draining,
        canary: false,
    };
    if svc.canary_share != 0 {
        st.canary = decide::in_canary(svc.canary_share, unsafe { bpf_get_prandom_u32() });
    }
    let d = if tcp {
        decide::decide_tcp(TcpFlags::from_byte(l4.tcp_flags), entry.as_ref(), &st)
    } else {
        // Without affinity decide_udp returns before it reads the time.
        let now = if affinity { clock.now() } else { 0 };
        decide::decide_udp(affinity, svc.udp_idle_ns, entry.as_ref(), &st, now)
    };

    let backend = BACKENDS.get(backend_index(svc.id, d.color))?;
    if backend.valid == 0 || backend.family != p.family {
        return Some(pass(Reason::NoBackend));
    }
    if let FlowWrite::Put { color, state } = d.write {
        record_flow(&s.flow, svc.id, color, state, clock.now());
    }
    if let Frag::First(id) = p.frag {
        remember_fragment(&p, s, id, svc.id, d.color);
    }

    rewrite(&f, &p, Some(&l4), backend)?;
    counters::color(svc.id, d.color, f.len() as u64, d.new_flow, d.pin_miss);
    if d.pin_miss {
        counters::reason(Reason::TcpPinMiss);
    }
    // First packet a colour receives in the current flip generation: the cutover time.
    // SAFETY: array slot; racing CPUs write nearly the same timestamp, either is valid.
    unsafe {
        let m = &mut *mark;
        let c = (d.color & 1) as usize;
        if m.generation == active.generation() && m.first_ns[c] == 0 {
            m.first_ns[c] = clock.now();
        }
    }
    let redirect = svc.flags & SVC_F_REDIRECT != 0;
    Some(forward::forward(ctx, &f, &p, &s.flow, redirect))
}

/// The time of this packet, read from the kernel at most once and only if a path needs it.
struct Clock(u64);

impl Clock {
    #[inline(always)]
    fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.0 == 0 {
            // SAFETY: plain helper call.
            self.0 = unsafe { bpf_ktime_get_ns() };
        }
        self.0
    }
}

#[inline(never)]
fn record_flow(flow: &FlowKey, service_id: u32, color: u8, state: u8, now: u64) {
    let v = FlowValue {
        service_id,
        color,
        state,
        _pad: [0; 2],
        last_seen_ns: now,
    };
    if FLOWS.insert(flow, &v, 0).is_err() {
        counters::reason(Reason::TableFull);
    }
}

#[inline(always)]
fn frag_key(p: &Parsed, s: &mut Scratch, id: u32) {
    s.frag.src = s.flow.src;
    s.frag.dst = s.flow.dst;
    s.frag.id = id;
    s.frag.proto = p.proto;
    s.frag.family = p.family;
    s.frag._pad = [0; 2];
}

#[inline(never)]
fn remember_fragment(p: &Parsed, s: &mut Scratch, id: u32, service_id: u32, color: u8) {
    frag_key(p, s, id);
    let v = FragValue {
        service_id,
        color,
        _pad: [0; 3],
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    if FRAGS.insert(&s.frag, &v, 0).is_err() {
        counters::reason(Reason::TableFull);
    }
}

/// A later fragment has no ports: it goes wherever its first fragment went, so a datagram is
/// never split across colours. Only the IP destination changes (no L4 header here).
#[inline(never)]
fn follow_fragment(f: &XdpFrame, p: &Parsed, s: &mut Scratch, id: u32) -> u32 {
    frag_key(p, s, id);
    let key: &FragKey = &s.frag;
    // SAFETY: copied out.
    let Some(fv) = (unsafe { FRAGS.get(key) }).copied() else {
        return pass(Reason::FragNoEntry);
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(fv.created_ns) > FRAG_TTL_NS {
        return pass(Reason::FragNoEntry);
    }
    let Some(backend) = BACKENDS.get(backend_index(fv.service_id, fv.color)) else {
        return pass(Reason::NoBackend);
    };
    if backend.valid == 0 || backend.family != p.family {
        return pass(Reason::NoBackend);
    }
    if rewrite(f, p, None, backend).is_none() {
        return pass(Reason::MalformedL3);
    }
    counters::color(fv.service_id, fv.color, f.len() as u64, false, false);
    counters::reason(Reason::FragFollowed);
    // Later fragments always go through the kernel: it forwards them like any packet.
    XDP_PASS
}

/// Rewrites the destination address (and port, when the L4 header is here) to `b`, patching
/// the IPv4 header checksum and the TCP/UDP checksum (pseudo-header + port) incrementally.
#[inline(never)]
fn rewrite(f: &XdpFrame, p: &Parsed, l4: Option<&L4>, b: &Backend) -> Option<()> {
    let mut l4_delta = Delta::new();
    if p.family == FAMILY_V4 {
        let old: [u8; 4] = f.read::<4>(p.l3 + 16)?;
        let new = [b.addr[0], b.addr[1], b.addr[2], b.addr[3]];
        let mut ip_delta = Delta::new();
        ip_delta.bytes4(&old, &new);
        let ip_csum = parse::be16(f.read::<2>(p.l3 + 10)?);
        f.write(p.l3 + 10, ip_delta.apply(ip_csum).to_be_bytes())?;
        f.write(p.l3 + 16, new)?;
        l4_delta.bytes4(&old, &new);
    } else {
        let old: [u8; 16] = f.read::<16>(p.l3 + 24)?;
        f.write(p.l3 + 24, b.addr)?;
        l4_delta.bytes16(&old, &b.addr);
    }
    let Some(l4) = l4 else {
        return Some(());
    };
    let new_port = b.port_be.to_ne_bytes();
    l4_delta.word(parse::be16(l4.dport), parse::be16(new_port));
    let csum = if p.proto == PROTO_TCP {
        l4_delta.apply(l4.csum)
    } else {
        // IPv6 zero checksums were rejected by the parser, so this only keeps IPv4 zeros.
        l4_delta.apply_udp(l4.csum)
    };
    f.write(l4.csum_off, csum.to_be_bytes())?;
    f.write(p.l4 + 2, new_port)?;
    Some(())
}

#[inline(always)]
fn pass(r: Reason) -> u32 {
    counters::reason(r);
    XDP_PASS
}
