//! Checksum arithmetic against oracles that do not use this module: an RFC 1071 sum written out
//! again below, and etherparse, which builds packets and computes their checksums from scratch.
//! A test that judged the incremental update by this module's own `checksum()` would pass with
//! a `sum()` that is wrong by a constant, since both sides of the comparison would share it.

extern crate std;

use std::{vec, vec::Vec};

use etherparse::{Ipv4Header, PacketBuilder, PacketHeaders, TransportHeader};

use super::*;

/// RFC 1071, section 1, done the plain way: every 16-bit big-endian word (an odd last byte is
/// the high half of a zero-padded word) and `initial` added in 64 bits, the carries folded in
/// at the end, the result complemented.
fn rfc1071(initial: u64, data: &[u8]) -> u16 {
    let mut acc = initial;
    for (i, b) in data.iter().enumerate() {
        acc += if i % 2 == 0 {
            u64::from(*b) << 8
        } else {
            u64::from(*b)
        };
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Deterministic pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// 0x0000 and 0xffff are the same value in ones' complement: RFC 1624 eqn. 3 may yield either
/// where a full computation yields the other, and both verify.
fn same_checksum(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

// RFC 1071 section 3 example bytes: their ones'-complement sum is 0xddf2.
#[test]
fn rfc1071_example_sum() {
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(rfc1071(0, &data), !0xddf2, "the oracle itself");
    assert_eq!(fold(sum(&data)), 0xddf2);
    assert_eq!(checksum(0, &data), !0xddf2);
}

#[test]
fn checksum_agrees_with_the_independent_sum() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for len in 0..80 {
        for _ in 0..50 {
            let data = rng.bytes(len);
            // A pseudo-header's partial sum, as callers pass it: any unfolded u32.
            let initial = rng.next() as u32;
            assert_eq!(
                checksum(initial, &data),
                rfc1071(u64::from(initial), &data),
                "len {len}, initial {initial:#x}"
            );
        }
    }
}

fn ipv4_header(dst: [u8; 4], ttl: u8) -> [u8; 20] {
    let mut h = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, ttl, 0x06, 0x00, 0x00, 198, 18, 0, 1,
        dst[0], dst[1], dst[2], dst[3],
    ];
    let c = rfc1071(0, &h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    // The second oracle agrees on the header checksum.
    let (parsed, _) = Ipv4Header::from_slice(&h).expect("ipv4 header");
    assert_eq!(parsed.calc_header_checksum(), c);
    h
}

#[test]
fn incremental_matches_full_recompute_for_ipv4_dst_and_ttl() {
    let before = ipv4_header([198, 18, 10, 10], 64);
    let after = ipv4_header([198, 18, 1, 2], 63);
    let mut d = Delta::new();
    d.bytes4(&[198, 18, 10, 10], &[198, 18, 1, 2]);
    d.word(u16::from_be_bytes([64, 6]), u16::from_be_bytes([63, 6]));
    let old = u16::from_be_bytes([before[10], before[11]]);
    assert_eq!(d.apply(old), u16::from_be_bytes([after[10], after[11]]));
}

#[test]
fn incremental_matches_full_recompute_for_many_random_rewrites() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let mut pkt = rng.bytes(40);
        let new_addr: [u8; 16] = rng.bytes(16).try_into().expect("16 bytes");
        let new_port = (rng.next() as u16).to_be_bytes();
        let c0 = rfc1071(0, &pkt);
        let mut d = Delta::new();
        let old_addr: [u8; 16] = pkt[8..24].try_into().expect("16 bytes");
        d.bytes16(&old_addr, &new_addr);
        d.word(
            u16::from_be_bytes([pkt[2], pkt[3]]),
            u16::from_be_bytes(new_port),
        );
        pkt[8..24].copy_from_slice(&new_addr);
        pkt[2..4].copy_from_slice(&new_port);
        let full = rfc1071(0, &pkt);
        let inc = d.apply(c0);
        assert!(
            same_checksum(inc, full),
            "incremental {inc:#06x}, full {full:#06x}"
        );
    }
}

/// The L4 checksum etherparse computed for a whole packet it built.
fn l4_checksum(pkt: &[u8]) -> u16 {
    match PacketHeaders::from_ethernet_slice(pkt)
        .expect("parse")
        .transport
    {
        Some(TransportHeader::Udp(u)) => u.checksum,
        Some(TransportHeader::Tcp(t)) => t.checksum,
        other => panic!("no udp/tcp header: {other:?}"),
    }
}

#[test]
fn incremental_matches_etherparse_for_the_datapath_rewrites() {
    // What the datapath does to a service packet: new destination address and port, the
    // pseudo-header and port folded into the L4 checksum with `Delta`. Etherparse builds the
    // packet before and after and computes both checksums from scratch.
    let mut rng = Rng(0x0bad_cafe_dead_beef);
    let mac = [2, 0, 0, 0, 0, 1];
    for i in 0..500 {
        let payload = rng.bytes(i % 97);
        let sport = rng.next() as u16;
        let (vip_port, backend_port) = (rng.next() as u16, rng.next() as u16);
        let src4: [u8; 4] = rng.bytes(4).try_into().expect("4");
        let (vip4, backend4): ([u8; 4], [u8; 4]) = (
            rng.bytes(4).try_into().expect("4"),
            rng.bytes(4).try_into().expect("4"),
        );
        let udp4 = |dst: [u8; 4], dport: u16| {
            let mut v = vec![];
            PacketBuilder::ethernet2(mac, mac)
                .ipv4(src4, dst, 64)
                .udp(sport, dport)
                .write(&mut v, &payload)
                .expect("build udp4");
            v
        };
        let mut d = Delta::new();
        d.bytes4(&vip4, &backend4);
        d.word(vip_port, backend_port);
        let before = l4_checksum(&udp4(vip4, vip_port));
        let after = l4_checksum(&udp4(backend4, backend_port));
        // UDP/IPv4: etherparse sends a computed zero as 0xffff, as apply_udp must.
        assert_eq!(d.apply_udp(before), after, "udp4 case {i}");

        let src6: [u8; 16] = rng.bytes(16).try_into().expect("16");
        let (vip6, backend6): ([u8; 16], [u8; 16]) = (
            rng.bytes(16).try_into().expect("16"),
            rng.bytes(16).try_into().expect("16"),
        );
        let tcp6 = |dst: [u8; 16], dport: u16| {
            let mut v = vec![];
            PacketBuilder::ethernet2(mac, mac)
                .ipv6(src6, dst, 64)
                .tcp(sport, dport, 1000, 64240)
                .write(&mut v, &payload)
                .expect("build tcp6");
            v
        };
        let mut d = Delta::new();
        d.bytes16(&vip6, &backend6);
        d.word(vip_port, backend_port);
        let before = l4_checksum(&tcp6(vip6, vip_port));
        let after = l4_checksum(&tcp6(backend6, backend_port));
        assert!(
            same_checksum(d.apply(before), after),
            "tcp6 case {i}: {:#06x} vs {after:#06x}",
            d.apply(before)
        );
    }
}

#[test]
fn udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() {
    let mut d = Delta::new();
    d.word(0x1234, 0x5678);
    assert_eq!(d.apply_udp(0), 0);
    // Pick a checksum whose update lands on zero: ~(~c + ~0x1234 + 0x5678) == 0.
    let mut c = 1u16;
    while d.apply(c) != 0 {
        c = c.wrapping_add(1);
        assert_ne!(c, 0, "some checksum must update to zero");
    }
    assert_eq!(d.apply_udp(c), 0xffff);
}
