//! Damage done to seed packets: bit flips, truncations, length fields that lie (IPv4 total
//! length and IHL, IPv6 payload length, UDP length, TCP data offset), IPv4 option and IPv6
//! extension header soup, VLAN stacks, fragmentation bits, other protocols and versions, and
//! packets retargeted at a service so the damage reaches the steering code. Afterwards the
//! checksums are sometimes made valid again, so a damaged packet can look perfectly sound.

use crate::{
    rng::Rng,
    wire::{self, get16, layout, set16, Layout, FRAGMENT},
    world::World,
};

/// The largest frame handed to BPF_PROG_TEST_RUN (XDP test runs take about a page).
pub const MAX_FRAME: usize = 1600;

#[derive(Clone, Copy, Debug)]
enum Op {
    Flip,
    Byte,
    Truncate,
    Append,
    IpLength,
    Ihl,
    UdpLength,
    TcpDataOffset,
    V4Options,
    V6Extensions,
    Vlan,
    Fragment,
    NextHeader,
    Version,
    Retarget,
    Splice,
}

const OPS: [(Op, u32); 16] = [
    (Op::Flip, 18),
    (Op::Byte, 6),
    (Op::Truncate, 7),
    (Op::Append, 4),
    (Op::IpLength, 10),
    (Op::Ihl, 4),
    (Op::UdpLength, 6),
    (Op::TcpDataOffset, 5),
    (Op::V4Options, 6),
    (Op::V6Extensions, 9),
    (Op::Vlan, 6),
    (Op::Fragment, 6),
    (Op::NextHeader, 5),
    (Op::Version, 2),
    (Op::Retarget, 8),
    (Op::Splice, 3),
];

/// Applies one to three mutations; `other` is a second packet for splicing.
pub fn mutate(rng: &mut Rng, world: &World, p: &mut Vec<u8>, other: &[u8]) -> &'static str {
    let weights: Vec<u32> = OPS.iter().map(|(_, w)| *w).collect();
    let n = 1 + rng.weighted(&[60, 30, 10]);
    let mut first = "";
    for i in 0..n {
        let op = OPS[rng.weighted(&weights)].0;
        apply(rng, world, p, other, op);
        if i == 0 {
            first = name(op);
        }
    }
    if rng.chance(35) {
        if let Some(lay) = layout(p) {
            // Make the damage look sound: valid checksums over whatever the lengths say now.
            wire::fix_ipv4_checksum(p, &lay);
            if rng.chance(70) {
                wire::fix_l4_checksum(p, &lay);
            }
        }
    }
    if p.len() < 14 {
        p.resize(14, 0);
    }
    p.truncate(MAX_FRAME);
    first
}

fn name(op: Op) -> &'static str {
    match op {
        Op::Flip => "flip",
        Op::Byte => "byte",
        Op::Truncate => "truncate",
        Op::Append => "append",
        Op::IpLength => "ip-length",
        Op::Ihl => "ihl",
        Op::UdpLength => "udp-length",
        Op::TcpDataOffset => "tcp-doff",
        Op::V4Options => "v4-options",
        Op::V6Extensions => "v6-exts",
        Op::Vlan => "vlan",
        Op::Fragment => "fragment",
        Op::NextHeader => "next-header",
        Op::Version => "version",
        Op::Retarget => "retarget",
        Op::Splice => "splice",
    }
}

/// A value near `v`, or one of the values length checks trip on.
fn lie(rng: &mut Rng, v: u16, interesting: &[u16]) -> u16 {
    match rng.weighted(&[50, 30, 20]) {
        0 => v.wrapping_add_signed(rng.range(0, 16) as i16 - 8),
        1 => *rng.pick(interesting),
        _ => rng.u16(),
    }
}

fn apply(rng: &mut Rng, world: &World, p: &mut Vec<u8>, other: &[u8], op: Op) {
    let lay = layout(p);
    match op {
        Op::Flip => {
            let head = p.len().min(100);
            for _ in 0..rng.range(1, 8) {
                let i = if rng.chance(80) {
                    rng.below(head)
                } else {
                    rng.below(p.len())
                };
                p[i] ^= 1 << rng.below(8);
            }
        }
        Op::Byte => {
            let i = rng.below(p.len().min(100));
            p[i] = *rng.pick(&[0, 0xff, 0x7f, 0x80, 1, 2, 5, 6, 17, 44, 60, 64]);
        }
        Op::Truncate => {
            let cut = rng.range(14, p.len().max(14));
            p.truncate(cut);
        }
        Op::Append => {
            let n = rng.range(1, 64);
            if rng.bool() {
                p.extend(vec![0; n]);
            } else {
                p.extend(rng.bytes(n));
            }
        }
        Op::IpLength => {
            if let Some(l) = lay {
                let at = l.l3 + if l.v6 { 4 } else { 2 };
                if let Some(v) = get16(p, at) {
                    let frame = (p.len() - l.l3) as u16;
                    let hdr: u16 = if l.v6 { 40 } else { 20 };
                    let candidates = [
                        0,
                        hdr,
                        hdr - 1,
                        frame,
                        frame.wrapping_add(1),
                        frame.wrapping_sub(hdr),
                        v / 2,
                    ];
                    let new = lie(rng, v, &candidates);
                    set16(p, at, new);
                }
            }
        }
        Op::Ihl => {
            if let Some(l) = lay.filter(|l| !l.v6) {
                p[l.l3] = 0x40 | rng.below(16) as u8;
            }
        }
        Op::UdpLength => {
            if let Some((l4, _)) = lay.and_then(|l| l.l4) {
                if let Some(v) = get16(p, l4 + 4) {
                    let rest = p.len().saturating_sub(l4) as u16;
                    let candidates = [0, 7, 8, rest, rest.wrapping_add(1), rest.wrapping_sub(1)];
                    let new = lie(rng, v, &candidates);
                    set16(p, l4 + 4, new);
                }
            }
        }
        Op::TcpDataOffset => {
            if let Some(b) = lay
                .and_then(|l| l.l4)
                .and_then(|(l4, _)| p.get_mut(l4 + 12))
            {
                *b = (rng.below(16) as u8) << 4 | (*b & 0x0f);
            }
        }
        Op::V4Options => {
            if let Some(l) = lay.filter(|l| !l.v6) {
                v4_options(rng, p, &l);
            }
        }
        Op::V6Extensions => {
            if let Some(l) = lay.filter(|l| l.v6) {
                v6_extension(rng, p, &l);
            }
        }
        Op::Vlan => vlan(rng, p),
        Op::Fragment => {
            if let Some(l) = lay {
                fragment(rng, p, &l);
            }
        }
        Op::NextHeader => {
            if let Some(l) = lay {
                let at = l.l3 + if l.v6 { 6 } else { 9 };
                if let Some(b) = p.get_mut(at) {
                    *b = *rng.pick(&[0, 1, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135, 253]);
                }
            }
        }
        Op::Version => {
            if let Some(l) = lay {
                if let Some(b) = p.get_mut(l.l3) {
                    *b = (*b & 0x0f) | (*rng.pick(&[0u8, 4, 5, 6, 7, 15]) << 4);
                }
            } else {
                let at = 12 + 4 * rng.below(3);
                set16(p, at, *rng.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8]));
            }
        }
        Op::Retarget => retarget(rng, world, p, lay),
        Op::Splice => {
            if !other.is_empty() {
                let a = rng.range(14, p.len().max(14)).min(p.len());
                let b = rng.below(other.len());
                p.truncate(a);
                p.extend(&other[b..]);
            }
        }
    }
}

/// Grows the IP packet's length field by `delta` bytes inserted at `at`.
fn insert(p: &mut Vec<u8>, lay: &Layout, at: usize, bytes: &[u8], keep_lengths: bool) {
    let at = at.min(p.len());
    p.splice(at..at, bytes.iter().copied());
    if keep_lengths {
        return;
    }
    let len_at = lay.l3 + if lay.v6 { 4 } else { 2 };
    if let Some(v) = get16(p, len_at) {
        set16(p, len_at, v.wrapping_add(bytes.len() as u16));
    }
}

/// Inserts IPv4 options (valid or not), adjusting the IHL (and usually the total length).
fn v4_options(rng: &mut Rng, p: &mut Vec<u8>, lay: &Layout) {
    let ihl = (p[lay.l3] & 0x0f) as usize;
    let room = 15usize.saturating_sub(ihl);
    if room == 0 {
        return;
    }
    let words = rng.range(1, room);
    let mut opts = match rng.below(3) {
        0 => vec![1; words * 4],
        1 => rng.bytes(words * 4),
        _ => {
            let mut v = vec![0x44, (words * 4) as u8, 5, 0];
            v.resize(words * 4, 0);
            v
        }
    };
    opts.truncate(words * 4);
    let at = lay.l3 + ihl * 4;
    let keep_lengths = rng.chance(15);
    insert(p, lay, at, &opts, keep_lengths);
    p[lay.l3] = 0x40 | (ihl + words) as u8;
}

/// Inserts an IPv6 extension header of any type (hop-by-hop, destination options, routing,
/// fragment, AH, ESP, mobility, experimental, no next header) anywhere in the chain, with an
/// honest or lying length.
fn v6_extension(rng: &mut Rng, p: &mut Vec<u8>, lay: &Layout) {
    // Walk the chain to pick an insertion point: (offset of a next-header byte, header start).
    let mut points = vec![(lay.l3 + 6, lay.l3 + 40)];
    let mut next = p[lay.l3 + 6];
    let mut off = lay.l3 + 40;
    for _ in 0..6 {
        if ![0u8, 43, 60, FRAGMENT].contains(&next) || off + 2 > p.len() {
            break;
        }
        let len = if next == FRAGMENT {
            8
        } else {
            (p[off + 1] as usize + 1) * 8
        };
        next = p[off];
        points.push((off, off + len));
        off += len;
    }
    let (nh_at, at) = *rng.pick(&points);
    if at > p.len() {
        return;
    }
    let kind = *rng.pick(&[0u8, 60, 60, 43, FRAGMENT, 51, 50, 135, 253, 59]);
    let mut h = if kind == FRAGMENT {
        let offset8 = if rng.bool() {
            0
        } else {
            rng.range(1, 200) as u16
        };
        let word = (offset8 << 3) | (rng.u16() & 7);
        let mut v = vec![p[nh_at], 0];
        v.extend(word.to_be_bytes());
        v.extend(rng.u32().to_be_bytes());
        v
    } else {
        let len8 = rng.below(4);
        let mut v = vec![p[nh_at], len8 as u8];
        v.extend(vec![0; (len8 + 1) * 8 - 2]);
        if kind == 0 || kind == 60 {
            v[2] = 1;
            v[3] = ((len8 + 1) * 8 - 4) as u8;
        }
        v
    };
    if rng.chance(15) {
        // The length byte lies.
        h[1] = rng.u8();
    }
    p[nh_at] = kind;
    let keep_lengths = rng.chance(15);
    insert(p, lay, at, &h, keep_lengths);
}

/// Adds or removes a VLAN tag (802.1Q, 802.1ad, the old 0x9100, or nonsense).
fn vlan(rng: &mut Rng, p: &mut Vec<u8>) {
    let tagged = matches!(get16(p, 12), Some(0x8100 | 0x88a8 | 0x9100));
    if tagged && rng.bool() && p.len() >= 18 {
        p.drain(12..16);
        return;
    }
    let tpid: u16 = *rng.pick(&[0x8100, 0x8100, 0x88a8, 0x9100, 0x8101]);
    let mut tag = tpid.to_be_bytes().to_vec();
    tag.extend((rng.u16() & 0x0fff).to_be_bytes());
    p.splice(12..12, tag);
}

/// Fragmentation bits: IPv4 MF and offset; IPv6 a Fragment header's offset and M.
fn fragment(rng: &mut Rng, p: &mut [u8], lay: &Layout) {
    if !lay.v6 {
        let more = u16::from(rng.bool()) << 13;
        let offset = if rng.bool() {
            0
        } else {
            rng.range(1, 0x1fff) as u16
        };
        let df = get16(p, lay.l3 + 6).unwrap_or(0) & 0x4000;
        set16(p, lay.l3 + 6, df | more | offset);
        return;
    }
    // The first Fragment header in the chain, if any.
    let mut next = p[lay.l3 + 6];
    let mut off = lay.l3 + 40;
    for _ in 0..6 {
        if off + 8 > p.len() {
            return;
        }
        match next {
            FRAGMENT => {
                let offset8 = if rng.bool() {
                    0
                } else {
                    rng.range(1, 0x1fff) as u16
                };
                set16(p, off + 2, (offset8 << 3) | u16::from(rng.bool()));
                return;
            }
            0 | 60 | 43 => {
                next = p[off];
                off += (p[off + 1] as usize + 1) * 8;
            }
            _ => return,
        }
    }
}

/// Points the packet at a service: its VIP and port (and protocol), so that damage elsewhere
/// meets the steering code.
fn retarget(rng: &mut Rng, world: &World, p: &mut [u8], lay: Option<Layout>) {
    let Some(l) = lay else {
        return;
    };
    let candidates: Vec<_> = world
        .services
        .iter()
        .filter(|s| s.vip.is_ipv6() == l.v6)
        .collect();
    if candidates.is_empty() {
        return;
    }
    let s = *rng.pick(&candidates);
    let vip = s.vip_bytes();
    let dst = l.l3 + if l.v6 { 24 } else { 16 };
    if dst + vip.len() <= p.len() {
        p[dst..dst + vip.len()].copy_from_slice(&vip);
    }
    if let Some((l4, proto)) = l.l4 {
        if proto == s.proto() || rng.chance(20) {
            set16(p, l4 + 2, s.port);
        }
    }
}
