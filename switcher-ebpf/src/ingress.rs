//! XDP ingress: find the service, decide where the packet goes (the flow tables, the drain
//! rule, the canary, the colour's pool), rewrite the destination to that member with
//! incremental checksums, then forward.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use switcher_common::{
    csum::Delta,
    decide::{self, Affinity, ColorState, Op, Source, TcpEntries, TcpFlags},
    gelf,
    parse::{self, Frag, Frame, Parsed, L4},
    port_slot, ActiveWord, Backend, Endpoint, FlipMark, FlowKey, FlowValue, FragKey, FragValue,
    Reason, ServiceValue, FAMILY_V4, FRAG_TTL_NS, PORT_NONE, PORT_SHARED, PROTO_TCP, PROTO_UDP,
    SVC_F_GELF, SVC_F_REDIRECT, SVC_F_UDP_AFFINITY,
};

use crate::{
    counters, forward,
    frame::XdpFrame,
    maps::{
        pool_member, IngressScratch, Scratch, ACTIVE, FLIP_MARKS, FLOWS, FRAGS, GELF_CHUNKS,
        HALF_FLOWS, MEMBER_LIVE, SCRATCH, SERVICES, SERVICE_BY_ID, SERVICE_PORTS, SHADOW,
        SOFT_FLOWS,
    },
};

/// Which table the packet's flow was found in (its entry is copied to `Scratch::found`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    None,
    Established,
    HalfOpen,
    Soft,
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> Option<u32> {
    let f = XdpFrame::new(ctx);
    let p = match parse::parse_headers(&f) {
        Ok(p) => p,
        Err(r) => return Some(pass(r)),
    };
    if let Frag::Later(id) = p.frag {
        let s = &mut scratch()?.work;
        // No ports: its datagram is known by its addresses and IP id.
        match parse::key_words(&f, &p, [0; 2], [0; 2]) {
            Ok(w) => put_keys(s, &w),
            Err(r) => return Some(pass(r)),
        }
        return Some(follow_fragment(&f, &p, s, id));
    }
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return Some(pass(Reason::NotService));
    }
    // The port decides first: most packets an edge sees are no service's, and pass on it.
    let dport = match parse::dport(&f, &p) {
        Ok(d) => d,
        Err(r) => return Some(pass(r)),
    };
    let slot = match SERVICE_PORTS.get(port_slot(u16::from_be_bytes(dport), p.proto, p.family)) {
        None | Some(&PORT_NONE) => return Some(pass(Reason::NotService)),
        Some(&v) => v,
    };
    let l4 = match parse::parse_l4(&f, &p) {
        Ok(l4) => l4,
        Err(r) => return Some(pass(r)),
    };
    let IngressScratch {
        work: s,
        service: svc,
    } = scratch()?;
    // The keys only now: most packets an edge sees are no service's and never need them.
    match parse::key_words(&f, &p, l4.sport, l4.dport) {
        Ok(w) => put_keys(s, &w),
        Err(r) => return Some(pass(r)),
    }
    if !service(slot, &s.svc, svc) {
        return Some(pass(Reason::NotService));
    }
    let svc: &ServiceValue = svc;
    let active = *ACTIVE.get(svc.id)?;
    let mark = FLIP_MARKS.get_ptr_mut(svc.id)?;
    let tcp = p.proto == PROTO_TCP;
    // A chunk of a chunked GELF message whose first-seen chunk was steered already goes after
    // it, whatever the colours did since: a message split across members is lost whole.
    let chunk = !tcp && svc.flags & SVC_F_GELF != 0 && gelf_key(&f, &p, &l4, s);
    let chunk_now = if chunk {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        0
    };
    let recorded = chunk && lookup_chunk(s, chunk_now);
    let (color, new_flow, pin_miss) = if recorded {
        s.backend = s.chunk.backend;
        counters::reason(Reason::GelfChunkFollowed);
        (s.chunk.color, false, false)
    } else {
        let d = steer(s, &p, &l4, svc, active, mark)?;
        (d.color, d.new_flow, d.pin_miss)
    };
    if s.backend.valid == 0 || s.backend.family != p.family {
        return Some(pass(Reason::NoBackend));
    }
    let color = if chunk && !recorded {
        record_chunk(s, svc.id, color, chunk_now)
    } else {
        color
    };
    if let Frag::First(id) = p.frag {
        remember_fragment(&p, s, id, svc.id, color);
    }

    rewrite(&f, &p, Some(&l4), &s.backend)?;
    counters::steered(
        svc.id,
        color,
        s.backend.slot,
        u64::from(p.ip_len),
        new_flow,
        pin_miss,
    );
    if pin_miss {
        counters::reason(Reason::TcpPinMiss);
    }
    // First packet a colour receives in the current flip generation: the cutover time.
    // SAFETY: array slot; racing CPUs write nearly the same timestamp, either is valid.
    unsafe {
        let m = &mut *mark;
        let c = (color & 1) as usize;
        if m.generation == active.generation() && m.first_ns[c] == 0 {
            m.first_ns[c] = bpf_ktime_get_ns();
        }
    }
    // A service being shadowed takes the kernel path, where the TC ingress program copies it.
    let redirect = svc.flags & SVC_F_REDIRECT != 0 && !(!tcp && shadowing(svc.id));
    if !redirect {
        // Settled here, not in `forward`: its call and return are the dearest part of it.
        return Some(pass(Reason::PassMode));
    }
    Some(forward::forward(ctx, &f, &p, &s.flow))
}

/// Copies the settings of the service keyed `key` to `to`, found through its port's `slot` in
/// SERVICE_PORTS; false if there is no such service.
#[inline(always)]
fn service(slot: u32, key: &Endpoint, to: &mut ServiceValue) -> bool {
    let found = if slot == PORT_SHARED {
        // SAFETY: copied out at once.
        unsafe { SERVICES.get(key) }
    } else {
        SERVICE_BY_ID
            .get(slot.wrapping_sub(1))
            .filter(|e| same_endpoint(&e.key, key))
            .map(|e| &e.value)
    };
    match found {
        Some(v) => {
            copy(v, to);
            true
        }
        None => false,
    }
}

/// This CPU's ingress scratch slot.
#[inline(always)]
fn scratch() -> Option<&'static mut IngressScratch> {
    // SAFETY: per-CPU slot, used by this program run only (XDP runs are not preempted by
    // another XDP run on the same CPU).
    Some(unsafe { &mut *SCRATCH.get_ptr_mut(0)? })
}

/// Stores the flow key's words (`parse::key_words`) as `s.flow`, and the service key they hold
/// (destination address, port, protocol, family) as `s.svc`, a whole word per store.
#[inline(always)]
fn put_keys(s: &mut Scratch, w: &[u64; 5]) {
    let flow = (&mut s.flow as *mut FlowKey).cast::<u64>();
    let svc = (&mut s.svc as *mut Endpoint).cast::<u64>();
    let t = w[4].to_ne_bytes();
    // SAFETY: `flow` (40 bytes) and `svc` (20) lie at 8-aligned offsets of SCRATCH's value
    // (asserted in maps.rs), which the kernel allocates 8-aligned.
    unsafe {
        for (i, x) in w.iter().enumerate() {
            flow.add(i).write(*x);
        }
        svc.write(w[2]);
        svc.add(1).write(w[3]);
        svc.add(2)
            .cast::<u32>()
            .write(u32::from_ne_bytes([t[2], t[3], t[4], t[5]]));
    }
}

/// `a == b` in three word compares (the derived `==` compares byte by byte).
#[inline(always)]
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    let (a, b) = (
        (a as *const Endpoint).cast::<u64>(),
        (b as *const Endpoint).cast::<u64>(),
    );
    // SAFETY: both are 20 bytes at 8-aligned addresses: a SERVICE_BY_ID value (ServiceEntry
    // is align(8), the key first) and Scratch::svc (its offset is asserted 8-aligned).
    unsafe {
        a.read() == b.read()
            && a.add(1).read() == b.add(1).read()
            && a.add(2).cast::<u32>().read() == b.add(2).cast::<u32>().read()
    }
}

/// The colour and member of a packet by the service's rules (flow tables, drain, canary,
/// pool), with the table writes they call for; the member is left in `Scratch::backend`.
/// `None`: the colour's pool could not be read (the packet is passed).
#[inline(always)]
fn steer(
    s: &mut Scratch,
    p: &Parsed,
    l4: &L4,
    svc: &ServiceValue,
    active: ActiveWord,
    mark: *mut FlipMark,
) -> Option<decide::Decision> {
    let tcp = p.proto == PROTO_TCP;
    let affinity = svc.flags & SVC_F_UDP_AFFINITY != 0;
    // UDP without affinity consults no table and needs no time: the cheapest path.
    let found = if tcp {
        lookup_tcp(s)
    } else if affinity {
        lookup_soft(s)
    } else {
        Found::None
    };
    // Flow times use the coarse clock (a jiffy's resolution is plenty for idle timeouts and
    // drain windows, and it costs a fraction of bpf_ktime_get_ns).
    let now = if tcp || affinity {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        0
    };
    // Only a TCP packet without any entry can be steered by the drain window.
    let draining = if tcp && found == Found::None {
        // SAFETY: array slot; a concurrent userspace write can at worst make us misjudge the
        // drain window for one packet, and the generation check guards the timestamp.
        ColorState::new(active, unsafe { &*mark }, svc.drain_ns, now).draining
    } else {
        None
    };
    let mut st = ColorState {
        active: active.color(),
        draining,
        canary: false,
    };
    if svc.canary_share != 0 {
        // SAFETY: plain helper call.
        st.canary = decide::in_canary(svc.canary_share, unsafe { bpf_get_prandom_u32() });
    }
    let d = if tcp {
        let entry = (found != Found::None).then_some(&s.found);
        let entries = TcpEntries {
            established: entry.filter(|_| found == Found::Established),
            half_open: entry.filter(|_| found == Found::HalfOpen),
            soft: entry.filter(|_| found == Found::Soft),
        };
        decide::decide_tcp(
            TcpFlags::from_byte(l4.tcp_flags),
            l4.payload != 0,
            entries,
            &st,
            now,
        )
    } else {
        let a = Affinity {
            idle_ns: svc.udp_idle_ns,
            max_age_ns: svc.udp_max_age_ns,
            epoch: svc.epoch,
        };
        // An entry whose member left its table (health, or a pool change) is void: the sender
        // moves with the member's share, as its new flows would.
        let entry = (found == Found::Soft)
            .then_some(&s.found)
            .filter(|e| member_live(e.backend.slot));
        decide::decide_udp(affinity.then_some(&a), entry, &st, now)
    };

    if d.source == Source::Pick {
        if !pick(svc.id, d.color, active, s) {
            // An empty pool: the caller finds no valid member and passes the packet.
            s.backend.valid = 0;
        }
    } else {
        s.backend = s.found.backend;
    }
    if s.backend.valid == 0 || s.backend.family != p.family {
        return Some(d);
    }
    if d.est != Op::Keep || d.half != Op::Keep || d.soft != Op::Keep {
        let created = if d.source == Source::Pick {
            now
        } else {
            s.found.created_ns
        };
        s.put = FlowValue {
            service_id: svc.id,
            color: d.color,
            state: d.state,
            flags: d.flags,
            _pad: 0,
            epoch: svc.epoch,
            _pad2: 0,
            last_seen_ns: now,
            created_ns: created,
            backend: s.backend,
        };
        record(s, d.est, d.half, d.soft);
    }
    Some(d)
}

/// Whether service `id`'s packets are being copied to its candidate.
#[inline(always)]
fn shadowing(id: u32) -> bool {
    SHADOW.get(id).is_some_and(|v| {
        // SAFETY: plain helper call.
        v.share != 0 && unsafe { bpf_ktime_get_coarse_ns() } <= v.until_ns
    })
}

/// The flow in the tables, in order: established, half-open, soft. The entry found is copied
/// to the scratch space before anything is written.
#[inline(always)]
fn lookup_tcp(s: &mut Scratch) -> Found {
    // SAFETY (all three): the entry is copied out at once.
    if let Some(e) = unsafe { FLOWS.get(&s.flow) } {
        copy(e, &mut s.found);
        return Found::Established;
    }
    if let Some(e) = unsafe { HALF_FLOWS.get(&s.flow) } {
        copy(e, &mut s.found);
        return Found::HalfOpen;
    }
    lookup_soft(s)
}

#[inline(always)]
fn lookup_soft(s: &mut Scratch) -> Found {
    // SAFETY: copied out at once.
    match unsafe { SOFT_FLOWS.get(&s.flow) } {
        Some(e) => {
            copy(e, &mut s.found);
            Found::Soft
        }
        None => Found::None,
    }
}

/// Copies a map entry out: a plain assignment lowers to the builtin memmove (a byte loop);
/// the entries are 8-aligned, so this is a few word loads and stores.
#[inline(always)]
fn copy<T>(from: &T, to: &mut T) {
    // SAFETY: both are valid, aligned and distinct (a map entry and a scratch slot).
    unsafe { core::ptr::copy_nonoverlapping(from, to, 1) }
}

/// Whether the member with counter slot `slot` is in its pool's table in use.
#[inline(always)]
fn member_live(slot: u16) -> bool {
    MEMBER_LIVE.get(u32::from(slot)).is_some_and(|v| *v != 0)
}

/// The member of `color`'s pool this flow's hash falls on.
#[inline(always)]
fn pick(id: u32, color: u8, active: ActiveWord, s: &mut Scratch) -> bool {
    match pool_member(id, color, active, &s.flow) {
        Some(b) => {
            copy_member(b, &mut s.backend);
            true
        }
        None => false,
    }
}

/// `*to = *from` for a pool member, as three 8-byte words: the plain assignment became a call
/// to the builtin memmove (a byte loop) once `pick` was inlined. Volatile, so LLVM cannot turn
/// the words back into that call.
#[inline(always)]
fn copy_member(from: &Backend, to: &mut Backend) {
    let (from, to) = (
        (from as *const Backend).cast::<u64>(),
        (to as *mut Backend).cast::<u64>(),
    );
    for i in 0..size_of::<Backend>() / 8 {
        // SAFETY: both are 8-aligned whole Backends: a Pool's member (Pool values are 8-aligned
        // array entries, `member` an 8-aligned offset, Backend a whole number of words) and
        // Scratch::backend (asserted in maps.rs).
        unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
    }
}

/// Writes the decision's table operations for the flow, `Scratch::put` being the entry. The
/// completion of a handshake inserts the established entry before it drops the half-open
/// one: if the protected table is full, the connection stays (evictably) half-open.
#[inline(never)]
fn record(s: &mut Scratch, est: Op, half: Op, soft: Op) {
    let mut established = true;
    match est {
        Op::Put => {
            if FLOWS.insert(&s.flow, &s.put, 0).is_err() {
                counters::reason(Reason::TableFull);
                established = false;
            }
        }
        Op::Delete => {
            let _ = FLOWS.remove(&s.flow);
        }
        Op::Keep => {}
    }
    match half {
        Op::Put => {
            if HALF_FLOWS.insert(&s.flow, &s.put, 0).is_err() {
                counters::reason(Reason::TableFull);
            }
        }
        Op::Delete if established => {
            let _ = HALF_FLOWS.remove(&s.flow);
        }
        _ => {}
    }
    match soft {
        Op::Put => {
            if SOFT_FLOWS.insert(&s.flow, &s.put, 0).is_err() {
                counters::reason(Reason::TableFull);
            }
        }
        Op::Delete => {
            let _ = SOFT_FLOWS.remove(&s.flow);
        }
        Op::Keep => {}
    }
}

/// Fills `Scratch::gelf` if the UDP payload starts with the header of a chunk of a
/// multi-chunk GELF message.
#[inline(always)]
fn gelf_key(f: &XdpFrame, p: &Parsed, l4: &L4, s: &mut Scratch) -> bool {
    if usize::from(l4.payload) < gelf::CHUNK_HEADER_LEN {
        return false;
    }
    // The UDP header is 8 bytes; the payload length was checked against the IP packet.
    let Some(h) = f.read::<{ gelf::CHUNK_HEADER_LEN }>(p.l4 + 8) else {
        return false;
    };
    let Some(c) = gelf::chunk(&h) else {
        return false;
    };
    s.gelf.src = s.flow.src;
    s.gelf.dst = s.flow.dst;
    s.gelf.message_id = c.message_id;
    s.gelf.dport_be = s.flow.dport_be;
    s.gelf.family = p.family;
    s.gelf._pad = 0;
    true
}

/// Copies the message's entry to `Scratch::chunk` if one still steers its chunks.
#[inline(never)]
fn lookup_chunk(s: &mut Scratch, now: u64) -> bool {
    // SAFETY: copied out at once.
    match unsafe { GELF_CHUNKS.get(&s.gelf) } {
        Some(v) if gelf::follows(v.created_ns, now) => {
            copy(v, &mut s.chunk);
            true
        }
        _ => false,
    }
}

/// Records where the message's first-seen chunk goes (`Scratch::backend`, `color`). If
/// another CPU recorded the message in the meantime, this chunk follows that entry instead:
/// its colour is returned and its member left in `Scratch::backend`.
#[inline(never)]
fn record_chunk(s: &mut Scratch, service_id: u32, color: u8, now: u64) -> u8 {
    s.chunk = FragValue {
        service_id,
        color,
        _pad: [0; 3],
        created_ns: now,
        backend: s.backend,
    };
    if GELF_CHUNKS
        .insert(&s.gelf, &s.chunk, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return color;
    }
    // SAFETY: copied out at once.
    let existing = unsafe { GELF_CHUNKS.get(&s.gelf) }.copied();
    match existing {
        // The key holds the family, so the winner's member has this packet's family.
        Some(v) if gelf::follows(v.created_ns, now) => {
            s.backend = v.backend;
            counters::reason(Reason::GelfChunkFollowed);
            v.color
        }
        // An expired entry of an earlier message with the same id: replaced.
        _ => {
            if GELF_CHUNKS
                .insert(&s.gelf, &s.chunk, u64::from(BPF_ANY))
                .is_err()
            {
                counters::reason(Reason::TableFull);
            }
            color
        }
    }
}

#[inline(always)]
fn frag_key(p: &Parsed, s: &mut Scratch, id: u32) {
    s.frag.src = s.flow.src;
    s.frag.dst = s.flow.dst;
    s.frag.id = id;
    s.frag.proto = p.frag_proto;
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
        // SAFETY: plain helper call.
        created_ns: unsafe { bpf_ktime_get_ns() },
        backend: s.backend,
    };
    if FRAGS.insert(&s.frag, &v, 0).is_err() {
        counters::reason(Reason::TableFull);
    }
}

/// A later fragment has no ports: it goes to the member its first fragment went to, so a
/// datagram is never split. Only the IP destination changes (no L4 header here).
#[inline(never)]
fn follow_fragment(f: &XdpFrame, p: &Parsed, s: &mut Scratch, id: u32) -> u32 {
    frag_key(p, s, id);
    let key: &FragKey = &s.frag;
    // SAFETY: copied out.
    let Some(fv) = (unsafe { FRAGS.get(key) }).copied() else {
        return pass(Reason::FragNoEntry);
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(fv.created_ns) > FRAG_TTL_NS {
        return pass(Reason::FragNoEntry);
    }
    s.backend = fv.backend;
    if s.backend.valid == 0 || s.backend.family != p.family {
        return pass(Reason::NoBackend);
    }
    if rewrite(f, p, None, &s.backend).is_none() {
        return pass(Reason::MalformedL3);
    }
    counters::steered(
        fv.service_id,
        fv.color,
        s.backend.slot,
        u64::from(p.ip_len),
        false,
        false,
    );
    counters::reason(Reason::FragFollowed);
    // Later fragments always go through the kernel: it forwards them like any packet.
    XDP_PASS
}

/// Rewrites the destination address (and port, when the L4 header is here) to `b`, patching
/// the IPv4 header checksum and the TCP/UDP checksum (pseudo-header + port) incrementally.
#[inline(always)]
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
