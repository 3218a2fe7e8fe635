//! Property tests of the checksum arithmetic: incremental updates ([`Delta`], RFC 1624) must
//! give exactly what a from-scratch RFC 1071 sum gives, for random data and random changes, and
//! for real packets whose destination is rewritten the way the datapath does it (checked
//! against etherparse's own checksum code). A checksum that was wrong stays wrong by the same
//! amount; a zero UDP checksum over IPv4 stays zero and a computed zero is sent as 0xffff.

use etherparse::{
    Ipv4HeaderSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice, UdpHeader,
};
mod common;

use common::config;
use proptest::prelude::*;
use proptest::sample::Index;
use switcher_common::csum::{self, Delta};

/// RFC 1071, written out: 16-bit big-endian words (an odd byte padded with zero), summed in a
/// wide accumulator, carries folded at the end.
fn sum1071(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for w in data.chunks(2) {
        acc += u64::from(w[0]) << 8 | u64::from(w.get(1).copied().unwrap_or(0));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn checksum1071(data: &[u8]) -> u16 {
    !sum1071(data)
}

fn word(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

/// Equal as ones'-complement numbers (0x0000 and 0xffff are both zero).
fn ones_eq(a: u16, b: u16) -> bool {
    a % 0xffff == b % 0xffff
}

/// Even-length data whose first word is fixed and non-zero (a pseudo-header's protocol word
/// in real packets): data that sums to zero has two checksum representations, packets never
/// do.
fn data() -> impl Strategy<Value = Vec<u8>> {
    (1usize..120).prop_flat_map(|words| {
        prop::collection::vec(any::<u8>(), words * 2).prop_map(|mut v| {
            v.splice(0..0, [0x00, 0x11]);
            v
        })
    })
}

/// Word changes: (which word, after the fixed first one; new value).
fn changes() -> impl Strategy<Value = Vec<(Index, u16)>> {
    prop::collection::vec((any::<Index>(), any::<u16>()), 0..40)
}

/// Applies `changes` to `d`, recording each in a Delta.
fn change(d: &mut [u8], changes: &[(Index, u16)]) -> Delta {
    let mut delta = Delta::new();
    let words = d.len() / 2 - 1;
    for (i, new) in changes {
        let at = 2 + 2 * i.index(words);
        delta.word(word(d, at), *new);
        d[at..at + 2].copy_from_slice(&new.to_be_bytes());
    }
    delta
}

proptest! {
    #![proptest_config(config(3000))]

    /// The library's from-scratch sum is RFC 1071 (odd lengths, initial partial sums).
    #[test]
    fn full_checksum_is_rfc1071(
        pseudo in prop::collection::vec(any::<u8>(), 0..20).prop_map(|mut v| {
            v.truncate(v.len() & !1);
            v
        }),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let all = [&pseudo[..], &body[..]].concat();
        prop_assert!(ones_eq(csum::fold(csum::sum(&body)), sum1071(&body)));
        prop_assert!(ones_eq(
            csum::checksum(csum::sum(&pseudo), &body),
            checksum1071(&all)
        ));
    }

    /// Any number of word changes, recorded one by one: the patched checksum is exactly the
    /// recomputed one.
    #[test]
    fn incremental_equals_recomputed(mut d in data(), ch in changes()) {
        let before = checksum1071(&d);
        let delta = change(&mut d, &ch);
        prop_assert_eq!(delta.apply(before), checksum1071(&d));
    }

    /// The order changes are recorded in does not matter.
    #[test]
    fn order_does_not_matter(d in data(), ch in changes()) {
        let before = checksum1071(&d);
        let (mut a, mut b) = (d.clone(), d);
        let forward = change(&mut a, &ch);
        // Reversed order of distinct words (a word changed twice must keep its order).
        let mut seen = std::collections::HashSet::new();
        let words = a.len() / 2 - 1;
        let last: Vec<_> = ch
            .iter()
            .rev()
            .filter(|(i, _)| seen.insert(i.index(words)))
            .cloned()
            .collect();
        let backward = change(&mut b, &last);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(forward.apply(before), backward.apply(before));
    }

    /// Address-sized changes (bytes4, bytes16) equal the same change word by word.
    #[test]
    fn address_changes_equal_their_words(
        mut d in data().prop_filter("room for an IPv6 address", |d| d.len() >= 18),
        new4 in any::<[u8; 4]>(),
        new16 in any::<[u8; 16]>(),
        v6 in any::<bool>(),
    ) {
        let before = checksum1071(&d);
        let mut delta = Delta::new();
        if v6 {
            let old: [u8; 16] = d[2..18].try_into().expect("16 bytes");
            delta.bytes16(&old, &new16);
            d[2..18].copy_from_slice(&new16);
        } else {
            let old: [u8; 4] = d[2..6].try_into().expect("4 bytes");
            delta.bytes4(&old, &new4);
            d[2..6].copy_from_slice(&new4);
        }
        prop_assert_eq!(delta.apply(before), checksum1071(&d));
    }

    /// A wrong checksum stays wrong by exactly the same amount: the residual (sum of the data
    /// and the checksum field) does not change.
    #[test]
    fn a_wrong_checksum_stays_wrong_by_the_same_amount(
        mut d in data(),
        ch in changes(),
        error in 1u16..,
    ) {
        let wrong = checksum1071(&d).wrapping_add(error);
        let residual = |d: &[u8], c: u16| sum1071(&[d, &c.to_be_bytes()[..]].concat());
        let r_before = residual(&d, wrong);
        let delta = change(&mut d, &ch);
        let patched = delta.apply(wrong);
        prop_assert!(ones_eq(residual(&d, patched), r_before));
        prop_assert!(!ones_eq(residual(&d, patched), 0xffff), "became valid");
    }

    /// UDP over IPv4: zero ("no checksum") stays zero whatever changed; any other value is
    /// patched like a TCP checksum, except that a result of zero is sent as 0xffff.
    #[test]
    fn udp_zero_rule(mut d in data(), ch in changes(), check in any::<u16>()) {
        let delta = change(&mut d, &ch);
        prop_assert_eq!(delta.apply_udp(0), 0);
        if check != 0 {
            let udp = delta.apply_udp(check);
            prop_assert!(udp != 0);
            prop_assert!(ones_eq(udp, delta.apply(check)));
            prop_assert_eq!(udp == 0xffff, delta.apply(check) == 0);
        }
    }

    /// Real packets: rewrite the destination address and port of a UDP or TCP packet over IPv4
    /// or IPv6 the way ingress does, patch the checksums, and compare with etherparse's
    /// from-scratch checksums of the rewritten packet.
    #[test]
    fn rewritten_packets_match_etherparse(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        src in any::<[u8; 16]>(),
        dst in any::<[u8; 16]>(),
        new_dst in any::<[u8; 16]>(),
        ports in any::<(u16, u16, u16)>(),
        payload in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let (sport, dport, new_port) = ports;
        let pkt = build(v6, tcp, &src, &dst, sport, dport, &payload);
        let out = rewrite(&pkt, v6, tcp, &new_dst, new_port);
        let want = build(v6, tcp, &src, &new_dst, sport, new_port, &payload);
        prop_assert_eq!(out, want);
    }

    /// The computed-zero case of UDP over IPv4, which random payloads almost never reach: the
    /// last payload word is chosen so that the rewritten datagram's checksum computes to zero.
    #[test]
    fn udp_computed_zero_is_sent_as_ffff(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        new_dst in any::<[u8; 4]>(),
        ports in any::<(u16, u16, u16)>(),
        mut payload in prop::collection::vec(any::<u8>(), 0..100).prop_map(|mut v| {
            v.truncate(v.len() & !1);
            v
        }),
    ) {
        let (sport, dport, new_port) = ports;
        payload.extend([0, 0]);
        let pad = |a: &[u8; 4]| {
            let mut v = [0u8; 16];
            v[..4].copy_from_slice(a);
            v
        };
        // The rewritten datagram's sum with a zero last word, then the word that makes it
        // 0xffff (a checksum of zero).
        let probe = build(false, false, &pad(&src), &pad(&new_dst), sport, new_port, &payload);
        let l4 = 14 + 20;
        let mut pseudo = [&src[..], &new_dst[..], &[0, 17], &probe[l4 + 4..l4 + 6]].concat();
        pseudo.extend(&probe[l4..l4 + 6]);
        pseudo.extend(&payload);
        let s = sum1071(&pseudo);
        let last = payload.len() - 2;
        payload[last..].copy_from_slice(&(0xffff - s).to_be_bytes());
        let pkt = build(false, false, &pad(&src), &pad(&dst), sport, dport, &payload);
        let out = rewrite(&pkt, false, false, &pad(&new_dst), new_port);
        prop_assert_eq!(&out[l4 + 6..l4 + 8], &[0xff, 0xff]);
        let want = build(false, false, &pad(&src), &pad(&new_dst), sport, new_port, &payload);
        prop_assert_eq!(out, want);
    }
}

/// A packet built by etherparse (every length and checksum computed from scratch by it).
fn build(
    v6: bool,
    tcp: bool,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut v = Vec::new();
    let four = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
    match (v6, tcp) {
        (false, false) => eth
            .ipv4(four(src), four(dst), 64)
            .udp(sport, dport)
            .write(&mut v, payload),
        (false, true) => eth
            .ipv4(four(src), four(dst), 64)
            .tcp(sport, dport, 1, 1000)
            .ack(7)
            .write(&mut v, payload),
        (true, false) => eth
            .ipv6(*src, *dst, 64)
            .udp(sport, dport)
            .write(&mut v, payload),
        (true, true) => eth
            .ipv6(*src, *dst, 64)
            .tcp(sport, dport, 1, 1000)
            .ack(7)
            .write(&mut v, payload),
    }
    .expect("etherparse builds the packet");
    v
}

/// What ingress does: destination address and port replaced, IPv4 header and L4 checksums
/// patched with Delta.
fn rewrite(pkt: &[u8], v6: bool, tcp: bool, new_dst: &[u8; 16], new_port: u16) -> Vec<u8> {
    let mut out = pkt.to_vec();
    let l3 = 14;
    let l4 = if v6 { l3 + 40 } else { l3 + 20 };
    let csum_at = l4 + if tcp { 16 } else { 6 };
    let mut l4_delta = Delta::new();
    if v6 {
        let old: [u8; 16] = pkt[l3 + 24..l3 + 40].try_into().expect("16 bytes");
        l4_delta.bytes16(&old, new_dst);
        out[l3 + 24..l3 + 40].copy_from_slice(new_dst);
    } else {
        let old: [u8; 4] = pkt[l3 + 16..l3 + 20].try_into().expect("4 bytes");
        let new = [new_dst[0], new_dst[1], new_dst[2], new_dst[3]];
        let mut ip = Delta::new();
        ip.bytes4(&old, &new);
        let c = ip.apply(word(pkt, l3 + 10));
        out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        out[l3 + 16..l3 + 20].copy_from_slice(&new);
        l4_delta.bytes4(&old, &new);
    }
    l4_delta.word(word(pkt, l4 + 2), new_port);
    out[l4 + 2..l4 + 4].copy_from_slice(&new_port.to_be_bytes());
    let old = word(pkt, csum_at);
    let c = if tcp {
        l4_delta.apply(old)
    } else {
        l4_delta.apply_udp(old)
    };
    out[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    out
}

#[test]
fn the_from_scratch_side_agrees_with_etherparse() {
    // The oracle above is only as good as `sum1071`: check it against etherparse's own
    // checksums of packets etherparse built.
    for v6 in [false, true] {
        for tcp in [false, true] {
            for len in [0usize, 1, 2, 7, 64, 333] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
                let (src, dst) = ([198u8; 16], [18u8; 16]);
                let pkt = build(v6, tcp, &src, &dst, 40000, 514, &payload);
                let s = SlicedPacket::from_ethernet(&pkt).expect("slices");
                let (l3, l4) = if v6 { (14, 54) } else { (14, 34) };
                let seg = &pkt[l4..];
                let pseudo: Vec<u8> = if v6 {
                    [&pkt[l3 + 8..l3 + 40], &(seg.len() as u32).to_be_bytes()[..]].concat()
                } else {
                    [
                        &pkt[l3 + 12..l3 + 20],
                        &(seg.len() as u16).to_be_bytes()[..],
                    ]
                    .concat()
                };
                let proto = if tcp { 6u8 } else { 17 };
                let all = [&pseudo[..], &[0, proto], seg].concat();
                assert_eq!(sum1071(&all), 0xffff, "v6 {v6} tcp {tcp} len {len}");
                match s.transport {
                    Some(TransportSlice::Udp(u)) => {
                        let h: UdpHeader = u.to_header();
                        let c = if v6 {
                            h.calc_checksum_ipv6_raw(src, dst, u.payload())
                        } else {
                            h.calc_checksum_ipv4_raw([198; 4], [18; 4], u.payload())
                        };
                        assert_eq!(c.expect("fits"), u.checksum());
                    }
                    Some(TransportSlice::Tcp(t)) => {
                        let h: TcpHeader = t.to_header();
                        let c = if v6 {
                            h.calc_checksum_ipv6_raw(src, dst, t.payload())
                        } else {
                            h.calc_checksum_ipv4_raw([198; 4], [18; 4], t.payload())
                        };
                        assert_eq!(c.expect("fits"), t.checksum());
                    }
                    other => panic!("{other:?}"),
                }
                if !v6 {
                    assert_eq!(sum1071(&pkt[l3..l3 + 20]), 0xffff);
                    let h = Ipv4HeaderSlice::from_slice(&pkt[l3..])
                        .expect("IPv4 header")
                        .to_header();
                    assert_eq!(h.calc_header_checksum(), h.header_checksum);
                }
            }
        }
    }
}
