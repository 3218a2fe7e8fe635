//! The parser on hand-built packets, against etherparse as an independent oracle.

extern crate std;

use std::{vec, vec::Vec};

use super::*;

// Hand-written builders: each header is laid out byte by byte from its RFC, so these tests
// do not depend on the parser's own idea of the formats.

const SPORT: u16 = 40000;
const CSUM: u16 = 0x1234;
const PAYLOAD: &[u8] = b"hello";
const SRC4: [u8; 4] = [198, 51, 100, 7];
const DST4: [u8; 4] = [198, 18, 10, 10];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const DST6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10];
const IP4_ID: u16 = 0x1c46;
const IP4_TOS: u8 = 0x28;
/// Version 6, traffic class 0xb8, flow label 0x12345.
const IP6_WORD: u32 = 0x6b81_2345;
const GRE: u8 = 47;
const NO_NEXT: u8 = 59;
const ROUTING: u8 = 43;
const HOP_BY_HOP: u8 = 0;
const DEST_OPTS: u8 = 60;
const FRAGMENT: u8 = 44;
const SYN_ACK: u8 = 0x12;

/// Ethernet header with one tag per TPID in `tpids` (VLAN ids 100, 101).
fn eth(tpids: &[u16], ethertype: u16) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    for (i, tpid) in tpids.iter().enumerate() {
        v.extend(tpid.to_be_bytes());
        v.extend((100 + i as u16).to_be_bytes());
    }
    v.extend(ethertype.to_be_bytes());
    v
}

/// IPv4 header (checksum left zero: the parser does not check it) followed by `body`.
fn ipv4(proto: u8, opts: &[u8], frag_word: u16, body: &[u8]) -> Vec<u8> {
    let ihl = 20 + opts.len();
    let mut v = vec![0x40 | (ihl / 4) as u8, IP4_TOS];
    v.extend(((ihl + body.len()) as u16).to_be_bytes());
    v.extend(IP4_ID.to_be_bytes());
    v.extend(frag_word.to_be_bytes());
    v.extend([64, proto, 0, 0]);
    v.extend(SRC4);
    v.extend(DST4);
    v.extend(opts);
    v.extend(body);
    v
}

/// IPv6 header followed by `rest` (extension headers and L4).
fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = IP6_WORD.to_be_bytes().to_vec();
    v.extend((rest.len() as u16).to_be_bytes());
    v.extend([next, 64]);
    v.extend(SRC6);
    v.extend(DST6);
    v.extend(rest);
    v
}

/// Hop-by-hop or destination options header of `(len8 + 1) * 8` bytes, Pad1-filled.
fn opts_ext(next: u8, len8: u8) -> Vec<u8> {
    let mut v = vec![0; (len8 as usize + 1) * 8];
    v[0] = next;
    v[1] = len8;
    v
}

/// IPv6 fragment header; `offset8` in 8-byte units.
fn frag_ext(next: u8, offset8: u16, more: bool, id: u32) -> Vec<u8> {
    let mut v = vec![next, 0];
    v.extend(((offset8 << 3) | more as u16).to_be_bytes());
    v.extend(id.to_be_bytes());
    v
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = SPORT.to_be_bytes().to_vec();
    v.extend(dport.to_be_bytes());
    v.extend(((8 + payload.len()) as u16).to_be_bytes());
    v.extend(CSUM.to_be_bytes());
    v.extend(payload);
    v
}

/// TCP header with `opts` (a multiple of 4 bytes) and the data offset they imply.
fn tcp(dport: u16, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = SPORT.to_be_bytes().to_vec();
    v.extend(dport.to_be_bytes());
    v.extend(1000u32.to_be_bytes());
    v.extend(2000u32.to_be_bytes());
    v.extend([((20 + opts.len()) / 4) as u8 * 16, flags]);
    v.extend(64240u16.to_be_bytes());
    v.extend(CSUM.to_be_bytes());
    v.extend([0, 0]);
    v.extend(opts);
    v.extend(payload);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn v4_udp() -> Vec<u8> {
    cat(&[
        &eth(&[], 0x0800),
        &ipv4(PROTO_UDP, &[], 0, &udp(514, PAYLOAD)),
    ])
}

fn v6_udp() -> Vec<u8> {
    cat(&[&eth(&[], 0x86dd), &ipv6(PROTO_UDP, &udp(514, PAYLOAD))])
}

fn key(family: u8, proto: u8) -> FlowKey {
    let mut k = FlowKey {
        proto,
        family,
        ..FlowKey::default()
    };
    if family == FAMILY_V4 {
        k.src[..4].copy_from_slice(&SRC4);
        k.dst[..4].copy_from_slice(&DST4);
    } else {
        k.src = SRC6;
        k.dst = DST6;
    }
    k
}

/// `parse`, checked against what ingress does instead (the headers, then the key only for a
/// service's packet): both must agree on every packet a test parses.
fn run(pkt: &[u8]) -> (Result<Parsed, Reason>, FlowKey) {
    let mut flow = FlowKey::default();
    let whole = parse(pkt, &mut flow);
    let headers = parse_headers(pkt);
    assert_eq!(headers, whole, "parse_headers disagrees with parse");
    if let Ok(p) = &headers {
        let words = key_words(pkt, p, [1, 2], [3, 4]).expect("key_words after parse_headers");
        let got: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut want = [flow.src, flow.dst].concat();
        want.extend([1, 2, 3, 4, flow.proto, flow.family, 0, 0]);
        assert_eq!(got, want, "key_words disagrees with parse");
    }
    (whole, flow)
}

/// Parses through L4, as ingress does for a non-later-fragment.
fn run_l4(pkt: &[u8]) -> Result<L4, Reason> {
    let p = run(pkt).0?;
    let l4 = parse_l4(pkt, &p)?;
    assert_eq!(
        dport(pkt, &p),
        Ok(l4.dport),
        "dport disagrees with parse_l4"
    );
    Ok(l4)
}

fn udp_l4(l4: usize, dport: u16) -> L4 {
    L4 {
        sport: SPORT.to_be_bytes(),
        dport: dport.to_be_bytes(),
        csum_off: l4 + 6,
        csum: CSUM,
        tcp_flags: 0,
        payload: PAYLOAD.len() as u16,
    }
}

fn tcp_l4(l4: usize, dport: u16, flags: u8) -> L4 {
    L4 {
        sport: SPORT.to_be_bytes(),
        dport: dport.to_be_bytes(),
        csum_off: l4 + 16,
        csum: CSUM,
        tcp_flags: flags,
        payload: PAYLOAD.len() as u16,
    }
}

fn v4_parsed(vlans: u8, ihl: usize, proto: u8, frag: Frag, ip_len: u16) -> Parsed {
    let l3 = 14 + 4 * vlans as usize;
    Parsed {
        family: FAMILY_V4,
        proto,
        vlans,
        l3,
        l4: l3 + ihl,
        frag,
        frag_proto: proto,
        ip_len,
        tos_flow: IP4_TOS as u32,
    }
}

fn v6_parsed(vlans: u8, exts: usize, proto: u8, frag: Frag, payload: u16) -> Parsed {
    let l3 = 14 + 4 * vlans as usize;
    Parsed {
        family: FAMILY_V6,
        proto,
        vlans,
        l3,
        l4: l3 + 40 + exts,
        frag,
        frag_proto: proto,
        ip_len: payload + 40,
        tos_flow: 0x0b81_2345,
    }
}

#[test]
fn slice_frame_reads_only_inside_the_slice() {
    let b: &[u8] = &[1, 2, 3, 4, 5];
    assert_eq!(Frame::len(b), 5);
    assert_eq!(b.read::<2>(3), Some([4, 5]));
    assert_eq!(b.read::<2>(4), None);
    assert_eq!(b.read::<0>(5), Some([]));
    assert_eq!(b.read::<1>(usize::MAX), None);
    assert!(Frame::is_empty(&b[..0]));
}

#[test]
fn ipv4_udp() {
    let pkt = v4_udp();
    let (p, flow) = run(&pkt);
    assert_eq!(p, Ok(v4_parsed(0, 20, PROTO_UDP, Frag::None, 33)));
    assert_eq!(flow, key(FAMILY_V4, PROTO_UDP));
    assert_eq!(run_l4(&pkt), Ok(udp_l4(34, 514)));
}

#[test]
fn ipv4_tcp_with_options() {
    let mss_sack_nop = [2, 4, 0x05, 0xb4, 4, 2, 1, 1];
    let seg = tcp(601, SYN_ACK, &mss_sack_nop, PAYLOAD);
    let pkt = cat(&[&eth(&[], 0x0800), &ipv4(PROTO_TCP, &[], 0x4000, &seg)]);
    let (p, flow) = run(&pkt);
    assert_eq!(p, Ok(v4_parsed(0, 20, PROTO_TCP, Frag::None, 20 + 28 + 5)));
    assert_eq!(flow, key(FAMILY_V4, PROTO_TCP));
    assert_eq!(run_l4(&pkt), Ok(tcp_l4(34, 601, SYN_ACK)));
}

#[test]
fn ipv4_header_options_move_l4() {
    // Router alert (4 bytes), then the longest header: 40 bytes of NOP/EOL options.
    for opts in [&[0x94, 4, 0, 0][..], &[1; 40][..]] {
        let ihl = 20 + opts.len();
        let pkt = cat(&[
            &eth(&[], 0x0800),
            &ipv4(PROTO_UDP, opts, 0, &udp(514, PAYLOAD)),
        ]);
        let ip_len = (ihl + 13) as u16;
        assert_eq!(
            run(&pkt).0,
            Ok(v4_parsed(0, ihl, PROTO_UDP, Frag::None, ip_len))
        );
        assert_eq!(run_l4(&pkt), Ok(udp_l4(14 + ihl, 514)));
    }
}

/// An ICMP message shorter than its 8-byte header is malformed, not a message to look into
/// (found by `prop_parse`: an ICMPv6 packet with a 1-byte payload).
#[test]
fn icmp_shorter_than_its_header_is_malformed() {
    let v6 = cat(&[&eth(&[], 0x86dd), &ipv6(PROTO_ICMPV6, &[0])]);
    assert_eq!(run(&v6).0, Err(Reason::MalformedL4));
    let v4 = cat(&[
        &eth(&[], 0x0800),
        &ipv4(PROTO_ICMP, &[], 0, &[8, 0, 0xf7, 0xff, 0, 0, 0]),
    ]);
    assert_eq!(run(&v4).0, Err(Reason::MalformedL4));
    // A later fragment carries no ICMP header: not judged by it.
    let frag = cat(&[&eth(&[], 0x0800), &ipv4(PROTO_ICMP, &[], 0x0001, &[0])]);
    assert!(matches!(run(&frag).0, Ok(p) if matches!(p.frag, Frag::Later(_))));
}

#[test]
fn ipv4_icmp_is_parsed_for_egress() {
    let echo = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
    let pkt = cat(&[&eth(&[], 0x0800), &ipv4(PROTO_ICMP, &[], 0, &echo)]);
    let (p, flow) = run(&pkt);
    assert_eq!(p, Ok(v4_parsed(0, 20, PROTO_ICMP, Frag::None, 28)));
    assert_eq!(flow, key(FAMILY_V4, PROTO_ICMP));
}

#[test]
fn one_vlan_tag() {
    let pkt = cat(&[
        &eth(&[0x8100], 0x0800),
        &ipv4(PROTO_UDP, &[], 0, &udp(514, PAYLOAD)),
    ]);
    assert_eq!(run(&pkt).0, Ok(v4_parsed(1, 20, PROTO_UDP, Frag::None, 33)));
    assert_eq!(run_l4(&pkt), Ok(udp_l4(18 + 20, 514)));
}

#[test]
fn two_vlan_tags() {
    // 802.1ad outer + 802.1Q inner, and the older double 802.1Q.
    for tpids in [[0x88a8, 0x8100], [0x8100, 0x8100]] {
        let seg = tcp(601, SYN_ACK, &[], &[]);
        let pkt = cat(&[&eth(&tpids, 0x86dd), &ipv6(PROTO_TCP, &seg)]);
        let (p, flow) = run(&pkt);
        assert_eq!(p, Ok(v6_parsed(2, 0, PROTO_TCP, Frag::None, 20)));
        assert_eq!(flow, key(FAMILY_V6, PROTO_TCP));
        assert_eq!(
            run_l4(&pkt),
            Ok(L4 {
                payload: 0,
                ..tcp_l4(22 + 40, 601, SYN_ACK)
            })
        );
    }
}

#[test]
fn third_vlan_tag_is_not_followed() {
    let pkt = cat(&[
        &eth(&[0x88a8, 0x8100, 0x8100], 0x0800),
        &ipv4(PROTO_UDP, &[], 0, &udp(514, PAYLOAD)),
    ]);
    assert_eq!(run(&pkt).0, Err(Reason::NotIp));
}

#[test]
fn non_ip_ethertypes() {
    let arp = [0u8; 28];
    for pkt in [
        cat(&[&eth(&[], 0x0806), &arp]),
        cat(&[&eth(&[0x8100], 0x0806), &arp]),
        cat(&[&eth(&[], 0x88cc), &arp]),
    ] {
        assert_eq!(run(&pkt).0, Err(Reason::NotIp));
    }
}

#[test]
fn ipv6_udp() {
    let pkt = v6_udp();
    let (p, flow) = run(&pkt);
    assert_eq!(p, Ok(v6_parsed(0, 0, PROTO_UDP, Frag::None, 13)));
    assert_eq!(flow, key(FAMILY_V6, PROTO_UDP));
    assert_eq!(run_l4(&pkt), Ok(udp_l4(54, 514)));
}

#[test]
fn ipv6_icmpv6_is_parsed_for_egress() {
    let unreach = [1, 4, 0, 0, 0, 0, 0, 0];
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(PROTO_ICMPV6, &unreach)]);
    let (p, flow) = run(&pkt);
    assert_eq!(p, Ok(v6_parsed(0, 0, PROTO_ICMPV6, Frag::None, 8)));
    assert_eq!(flow, key(FAMILY_V6, PROTO_ICMPV6));
}

#[test]
fn ipv6_hop_by_hop_and_destination_options_are_skipped() {
    let seg = tcp(601, SYN_ACK, &[], PAYLOAD);
    let rest = cat(&[&opts_ext(DEST_OPTS, 0), &opts_ext(PROTO_TCP, 1), &seg]);
    let pkt = cat(&[&eth(&[0x8100], 0x86dd), &ipv6(HOP_BY_HOP, &rest)]);
    let (p, flow) = run(&pkt);
    assert_eq!(p, Ok(v6_parsed(1, 8 + 16, PROTO_TCP, Frag::None, 24 + 25)));
    assert_eq!(flow, key(FAMILY_V6, PROTO_TCP));
    assert_eq!(run_l4(&pkt), Ok(tcp_l4(18 + 40 + 24, 601, SYN_ACK)));
}

#[test]
fn ipv6_first_fragment() {
    // The UDP length covers the whole datagram, longer than this fragment: allowed.
    let mut dgram = udp(514, &[7; 2000]);
    dgram.truncate(1232);
    let rest = cat(&[&frag_ext(PROTO_UDP, 0, true, 0xdead_beef), &dgram]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &rest)]);
    let p = Ok(v6_parsed(0, 8, PROTO_UDP, Frag::First(0xdead_beef), 1240));
    assert_eq!(run(&pkt).0, p);
    assert_eq!(
        run_l4(&pkt),
        Ok(L4 {
            payload: 1224,
            ..udp_l4(14 + 48, 514)
        })
    );
}

#[test]
fn ipv6_later_fragment() {
    // Offset 154 (1232 bytes), last fragment: no L4 header follows.
    let rest = cat(&[&frag_ext(PROTO_UDP, 154, false, 0xdead_beef), &[7; 8]]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &rest)]);
    let (p, flow) = run(&pkt);
    assert_eq!(
        p,
        Ok(v6_parsed(0, 8, PROTO_UDP, Frag::Later(0xdead_beef), 16))
    );
    assert_eq!(flow, key(FAMILY_V6, PROTO_UDP));

    // Its payload is never read as headers, even when it looks like destination options;
    // whatever the Fragment header names, the fragment is steered by its datagram.
    let rest = cat(&[
        &frag_ext(DEST_OPTS, 154, false, 0xdead_beef),
        &opts_ext(PROTO_UDP, 0),
    ]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &rest)]);
    assert_eq!(
        run(&pkt).0,
        Ok(v6_parsed(0, 8, DEST_OPTS, Frag::Later(0xdead_beef), 16))
    );
}

#[test]
fn ipv6_fragments_with_destination_options_after_the_fragment_header_share_a_key() {
    // First fragment: Fragment (next: destination options), destination options (next: UDP),
    // then the UDP header. The later fragment has only the Fragment header.
    let first = cat(&[
        &frag_ext(DEST_OPTS, 0, true, 0x0bad_cafe),
        &opts_ext(PROTO_UDP, 0),
        &udp(514, PAYLOAD),
    ]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &first)]);
    let p = run(&pkt).0.expect("first fragment");
    assert_eq!(
        (p.proto, p.frag, p.frag_proto, p.l4),
        (PROTO_UDP, Frag::First(0x0bad_cafe), DEST_OPTS, 14 + 40 + 16)
    );
    let later = cat(&[&frag_ext(DEST_OPTS, 100, false, 0x0bad_cafe), &[9; 16]]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &later)]);
    let q = run(&pkt).0.expect("later fragment");
    assert_eq!(
        (q.frag, q.frag_proto),
        (Frag::Later(0x0bad_cafe), DEST_OPTS)
    );
}

#[test]
fn ipv6_atomic_fragment_is_not_fragmented() {
    let rest = cat(&[&frag_ext(PROTO_UDP, 0, false, 9), &udp(514, PAYLOAD)]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &rest)]);
    assert_eq!(
        run(&pkt).0,
        Ok(v6_parsed(0, 8, PROTO_UDP, Frag::None, 8 + 13))
    );
    assert_eq!(run_l4(&pkt), Ok(udp_l4(14 + 48, 514)));
}

#[test]
fn ipv6_three_extension_headers_at_most() {
    let seg = udp(514, PAYLOAD);
    let three = cat(&[
        &opts_ext(FRAGMENT, 0),
        &frag_ext(DEST_OPTS, 0, true, 5),
        &opts_ext(PROTO_UDP, 0),
        &seg,
    ]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(HOP_BY_HOP, &three)]);
    assert_eq!(
        run(&pkt).0,
        Ok(Parsed {
            // The Fragment header's next header identifies the datagram.
            frag_proto: DEST_OPTS,
            ..v6_parsed(0, 24, PROTO_UDP, Frag::First(5), 24 + 13)
        })
    );
    assert_eq!(run_l4(&pkt), Ok(udp_l4(14 + 64, 514)));
    let four = cat(&[&opts_ext(DEST_OPTS, 0), &three]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(HOP_BY_HOP, &four)]);
    assert_eq!(run(&pkt).0, Err(Reason::Ipv6ExtUnsupported));
}

#[test]
fn ipv6_routing_header_is_unsupported() {
    let routing = [PROTO_UDP, 0, 0, 0, 0, 0, 0, 0];
    let seg = udp(514, PAYLOAD);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(ROUTING, &cat(&[&routing, &seg]))]);
    assert_eq!(run(&pkt).0, Err(Reason::Ipv6ExtUnsupported));
    let rest = cat(&[&opts_ext(ROUTING, 0), &routing, &seg]);
    let pkt = cat(&[&eth(&[], 0x86dd), &ipv6(HOP_BY_HOP, &rest)]);
    assert_eq!(run(&pkt).0, Err(Reason::Ipv6ExtUnsupported));
}

#[test]
fn ipv4_first_fragment() {
    // MF set, offset 0: the UDP length is the whole datagram's, longer than this fragment.
    let mut dgram = udp(514, &[7; 2000]);
    dgram.truncate(1480);
    let pkt = cat(&[&eth(&[], 0x0800), &ipv4(PROTO_UDP, &[], 0x2000, &dgram)]);
    let (p, flow) = run(&pkt);
    assert_eq!(
        p,
        Ok(v4_parsed(
            0,
            20,
            PROTO_UDP,
            Frag::First(IP4_ID as u32),
            1500
        ))
    );
    assert_eq!(flow, key(FAMILY_V4, PROTO_UDP));
    assert_eq!(
        run_l4(&pkt),
        Ok(L4 {
            // The bytes of this fragment after the UDP header.
            payload: 1472,
            ..udp_l4(34, 514)
        })
    );
}

#[test]
fn ipv4_later_fragments() {
    // Offset 185 (1480 bytes), with and without MF; no L4 header follows.
    for frag_word in [185, 0x2000 | 185] {
        let pkt = cat(&[
            &eth(&[], 0x0800),
            &ipv4(PROTO_UDP, &[], frag_word, &[7; 520]),
        ]);
        let (p, flow) = run(&pkt);
        assert_eq!(
            p,
            Ok(v4_parsed(0, 20, PROTO_UDP, Frag::Later(IP4_ID as u32), 540))
        );
        assert_eq!(flow, key(FAMILY_V4, PROTO_UDP));
    }
}

#[test]
fn ipv4_dont_fragment_is_not_a_fragment() {
    let pkt = cat(&[
        &eth(&[], 0x0800),
        &ipv4(PROTO_UDP, &[], 0x4000, &udp(514, PAYLOAD)),
    ]);
    assert_eq!(run(&pkt).0, Ok(v4_parsed(0, 20, PROTO_UDP, Frag::None, 33)));
}

/// Valid packets of every shape the parser accepts, with their L3 offset.
fn valid_packets() -> Vec<(usize, Vec<u8>)> {
    let udp4 = udp(514, PAYLOAD);
    let tcp4 = tcp(601, SYN_ACK, &[2, 4, 0x05, 0xb4], PAYLOAD);
    let exts = cat(&[&opts_ext(DEST_OPTS, 0), &opts_ext(PROTO_UDP, 1), &udp4]);
    let first6 = cat(&[&frag_ext(PROTO_UDP, 0, true, 1), &udp4]);
    let later6 = cat(&[&frag_ext(PROTO_UDP, 3, false, 1), &[7; 24]]);
    vec![
        (
            14,
            cat(&[&eth(&[], 0x0800), &ipv4(PROTO_UDP, &[], 0, &udp4)]),
        ),
        (
            14,
            cat(&[&eth(&[], 0x0800), &ipv4(PROTO_TCP, &[], 0, &tcp4)]),
        ),
        (
            14,
            cat(&[&eth(&[], 0x0800), &ipv4(PROTO_UDP, &[1; 8], 0, &udp4)]),
        ),
        (
            14,
            cat(&[&eth(&[], 0x0800), &ipv4(PROTO_UDP, &[], 0x2000, &udp4)]),
        ),
        (
            14,
            cat(&[&eth(&[], 0x0800), &ipv4(PROTO_UDP, &[], 3, &[7; 24])]),
        ),
        (
            18,
            cat(&[&eth(&[0x8100], 0x0800), &ipv4(PROTO_UDP, &[], 0, &udp4)]),
        ),
        (
            22,
            cat(&[&eth(&[0x88a8, 0x8100], 0x86dd), &ipv6(PROTO_TCP, &tcp4)]),
        ),
        (14, cat(&[&eth(&[], 0x86dd), &ipv6(PROTO_UDP, &udp4)])),
        (14, cat(&[&eth(&[], 0x86dd), &ipv6(HOP_BY_HOP, &exts)])),
        (14, cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &first6)])),
        (14, cat(&[&eth(&[], 0x86dd), &ipv6(FRAGMENT, &later6)])),
    ]
}

#[test]
fn every_truncation_is_an_error() {
    for (l3, pkt) in valid_packets() {
        let p = run(&pkt).0;
        let Ok(p) = p else {
            panic!("{pkt:02x?}: {p:?}");
        };
        assert_eq!(p.l3, l3);
        if !matches!(p.frag, Frag::Later(_)) {
            assert!(parse_l4(&pkt[..], &p).is_ok(), "{pkt:02x?}");
        }
        // The IP length covers the whole frame, so every shorter frame lies about it.
        for n in 0..pkt.len() {
            let want = if n < l3 {
                Reason::TruncatedL2
            } else {
                Reason::MalformedL3
            };
            assert_eq!(run(&pkt[..n]).0, Err(want), "{n} bytes of {pkt:02x?}");
        }
    }
}

#[test]
fn ethernet_padding_is_ignored() {
    // A 33-byte IPv4 packet in a minimum-size (60-byte) frame.
    let mut pkt = v4_udp();
    pkt.resize(60, 0);
    assert_eq!(run(&pkt).0, Ok(v4_parsed(0, 20, PROTO_UDP, Frag::None, 33)));
    assert_eq!(run_l4(&pkt), Ok(udp_l4(34, 514)));
}

#[test]
fn unsupported_l4_protocols_are_not_service() {
    let body = [0u8; 16];
    let hbh_gre = cat(&[&opts_ext(GRE, 0), &body]);
    for pkt in [
        cat(&[&eth(&[], 0x0800), &ipv4(GRE, &[], 0, &body)]),
        cat(&[&eth(&[], 0x86dd), &ipv6(GRE, &body)]),
        cat(&[&eth(&[], 0x86dd), &ipv6(NO_NEXT, &body)]),
        cat(&[&eth(&[], 0x86dd), &ipv6(HOP_BY_HOP, &hbh_gre)]),
    ] {
        assert_eq!(run(&pkt).0, Err(Reason::NotService), "{pkt:02x?}");
    }
}

#[test]
fn udp_length_must_match_the_ip_packet() {
    for pkt in [v4_udp(), v6_udp()] {
        let l4 = pkt.len() - 13;
        for bad_len in [14u16, 12, 7, 0] {
            let mut pkt = pkt.clone();
            pkt[l4 + 4..l4 + 6].copy_from_slice(&bad_len.to_be_bytes());
            assert_eq!(
                run_l4(&pkt),
                Err(Reason::MalformedL4),
                "udp length {bad_len}"
            );
        }
    }
}

#[test]
fn l4_header_must_lie_inside_the_ip_packet() {
    // The IP packet ends 4 bytes into the L4 header; padding makes the frame long enough.
    for proto in [PROTO_UDP, PROTO_TCP] {
        let mut pkt = cat(&[&eth(&[], 0x0800), &ipv4(proto, &[], 0, &[0; 4])]);
        pkt.resize(60, 0);
        // A UDP length of 8 and a TCP data offset of 5: only the IP length is wrong.
        pkt[34 + 4..34 + 6].copy_from_slice(&8u16.to_be_bytes());
        pkt[34 + 12] = 0x50;
        assert!(run(&pkt).0.is_ok());
        assert_eq!(run_l4(&pkt), Err(Reason::MalformedL4));
    }
}

#[test]
fn tcp_data_offset_must_be_sane() {
    let seg = tcp(601, SYN_ACK, &[], PAYLOAD);
    let pkt = cat(&[&eth(&[], 0x0800), &ipv4(PROTO_TCP, &[], 0, &seg)]);
    // Below 5 words, and (15 words = 60 bytes) past the end of the 25-byte segment.
    for doff in [0u8, 4, 15] {
        let mut pkt = pkt.clone();
        pkt[34 + 12] = doff << 4;
        assert_eq!(run_l4(&pkt), Err(Reason::MalformedL4), "data offset {doff}");
    }
}

#[test]
fn udp_zero_checksum_is_invalid_only_over_ipv6() {
    let mut pkt = v6_udp();
    pkt[54 + 6..54 + 8].fill(0);
    assert_eq!(run_l4(&pkt), Err(Reason::Udp6ZeroChecksum));
    let mut pkt = v4_udp();
    pkt[34 + 6..34 + 8].fill(0);
    let mut want = udp_l4(34, 514);
    want.csum = 0;
    assert_eq!(run_l4(&pkt), Ok(want));
}

#[test]
fn ip_headers_that_lie_are_malformed() {
    let set16 = |mut pkt: Vec<u8>, at: usize, v: u16| {
        pkt[at..at + 2].copy_from_slice(&v.to_be_bytes());
        pkt
    };
    let set8 = |mut pkt: Vec<u8>, at: usize, v: u8| {
        pkt[at] = v;
        pkt
    };
    let cases = [
        ("v4 total length past the frame", set16(v4_udp(), 16, 34)),
        ("v4 total length below the header", set16(v4_udp(), 16, 19)),
        ("v4 IHL below 5", set8(v4_udp(), 14, 0x44)),
        ("v4 header longer than the packet", set8(v4_udp(), 14, 0x4f)),
        ("v4 ethertype, version 6", set8(v4_udp(), 14, 0x65)),
        ("v6 payload length past the frame", set16(v6_udp(), 18, 14)),
        ("v6 jumbogram (payload length 0)", set16(v6_udp(), 18, 0)),
        ("v6 ethertype, version 4", set8(v6_udp(), 14, 0x4b)),
    ];
    for (what, pkt) in cases {
        assert_eq!(run(&pkt).0, Err(Reason::MalformedL3), "{what}");
    }
}

#[test]
fn l4_offset_is_bounded() {
    // Hop-by-hop options up to L4 offset 510 pass, the next size (518) is refused.
    let seg = udp(514, PAYLOAD);
    let pkt = cat(&[
        &eth(&[], 0x86dd),
        &ipv6(HOP_BY_HOP, &cat(&[&opts_ext(PROTO_UDP, 56), &seg])),
    ]);
    assert_eq!(
        run(&pkt).0,
        Ok(v6_parsed(0, 456, PROTO_UDP, Frag::None, 456 + 13))
    );
    assert_eq!(run_l4(&pkt), Ok(udp_l4(510, 514)));
    let pkt = cat(&[
        &eth(&[], 0x86dd),
        &ipv6(HOP_BY_HOP, &cat(&[&opts_ext(PROTO_UDP, 57), &seg])),
    ]);
    assert_eq!(run(&pkt).0, Err(Reason::Ipv6ExtUnsupported));

    // parse_l4 enforces the bound on its own: a valid header at 512 is read, at 513 not.
    for (l4, want) in [(512, Ok(udp_l4(512, 514))), (513, Err(Reason::MalformedL4))] {
        let mut frame = vec![0u8; l4];
        frame.extend(&seg);
        let p = Parsed {
            l3: 0,
            l4,
            ip_len: frame.len() as u16,
            ..v4_parsed(0, 20, PROTO_UDP, Frag::None, 0)
        };
        assert_eq!(parse_l4(&frame[..], &p), want, "L4 offset {l4}");
    }
}

#[test]
fn ipv4_clears_a_reused_flow_key() {
    // The datapath parses into a per-CPU scratch key that still holds the last packet's.
    let mut flow = FlowKey {
        src: [0xff; 16],
        dst: [0xff; 16],
        ..FlowKey::default()
    };
    let pkt = v4_udp();
    assert!(parse(&pkt[..], &mut flow).is_ok());
    assert_eq!(flow, key(FAMILY_V4, PROTO_UDP));
}

/// etherparse as an independent oracle: it builds packets (writing every length and
/// next-header field itself) and slices them; our offsets and fields must agree with its.
fn etherparse_view(pkt: &[u8]) -> (Parsed, L4, FlowKey) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice, VlanSlice};

    let s = SlicedPacket::from_ethernet(pkt).expect("etherparse slices the packet");
    let at = |part: &[u8]| part.as_ptr() as usize - pkt.as_ptr() as usize;
    let vlans = match s.vlan {
        None => 0,
        Some(VlanSlice::SingleVlan(_)) => 1,
        Some(VlanSlice::DoubleVlan(_)) => 2,
    };
    let mut flow = FlowKey::default();
    let (family, l3, ip_len, tos_flow) = match s.net.expect("an IP packet") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            flow.src[..4].copy_from_slice(&h.source());
            flow.dst[..4].copy_from_slice(&h.destination());
            let tos = (h.dcp().value() << 2) | h.ecn().value();
            (FAMILY_V4, at(h.slice()), h.total_len(), tos as u32)
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            flow.src = h.source();
            flow.dst = h.destination();
            let tf = ((h.traffic_class() as u32) << 20) | h.flow_label().value();
            (FAMILY_V6, at(h.slice()), h.payload_length() + 40, tf)
        }
    };
    let (proto, l4_off, l4) = match s.transport.expect("TCP or UDP") {
        TransportSlice::Udp(u) => {
            let off = at(u.slice());
            let l4 = L4 {
                sport: u.source_port().to_be_bytes(),
                dport: u.destination_port().to_be_bytes(),
                csum_off: off + 6,
                csum: u.checksum(),
                tcp_flags: 0,
                payload: u.payload().len() as u16,
            };
            (PROTO_UDP, off, l4)
        }
        TransportSlice::Tcp(t) => {
            let off = at(t.slice());
            let bits = [
                t.fin(),
                t.syn(),
                t.rst(),
                t.psh(),
                t.ack(),
                t.urg(),
                t.ece(),
                t.cwr(),
            ];
            let flags = bits.iter().rev().fold(0u8, |f, &b| (f << 1) | b as u8);
            let l4 = L4 {
                sport: t.source_port().to_be_bytes(),
                dport: t.destination_port().to_be_bytes(),
                csum_off: off + 16,
                csum: t.checksum(),
                tcp_flags: flags,
                payload: t.payload().len() as u16,
            };
            (PROTO_TCP, off, l4)
        }
        other => panic!("unexpected transport {other:?}"),
    };
    flow.proto = proto;
    flow.family = family;
    let p = Parsed {
        family,
        proto,
        vlans,
        l3,
        l4: l4_off,
        frag: Frag::None,
        frag_proto: proto,
        ip_len,
        tos_flow,
    };
    (p, l4, flow)
}

#[test]
fn agrees_with_etherparse() {
    use etherparse::{
        IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header,
        Ipv6RawExtHeader, PacketBuilder, TcpOptionElement, VlanId,
    };

    macro_rules! build {
        ($b:expr) => {{
            let b = $b;
            let mut v = Vec::with_capacity(b.size(PAYLOAD.len()));
            b.write(&mut v, PAYLOAD)
                .expect("etherparse writes the packet");
            v
        }};
    }
    let mac = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let vid = |v| VlanId::try_new(v).expect("VLAN id");
    let tcp_opts = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::SelectiveAcknowledgementPermitted,
    ];
    let mut v4_opts = Ipv4Header::new(0, 64, IpNumber::UDP, SRC4, DST4).expect("IPv4");
    v4_opts.options = Ipv4Options::try_from(&[0x94, 4, 0, 0][..]).expect("options");
    let v6_exts = IpHeaders::Ipv6(
        Ipv6Header {
            traffic_class: 0xb8,
            flow_label: Ipv6FlowLabel::try_new(0x12345).expect("flow label"),
            hop_limit: 64,
            source: SRC6,
            destination: DST6,
            ..Ipv6Header::default()
        },
        Ipv6Extensions {
            hop_by_hop_options: Some(
                Ipv6RawExtHeader::new_raw(IpNumber(0), &[0; 6]).expect("hop-by-hop"),
            ),
            destination_options: Some(
                Ipv6RawExtHeader::new_raw(IpNumber(0), &[0; 14]).expect("dest options"),
            ),
            ..Ipv6Extensions::default()
        },
    );
    let packets = [
        build!(PacketBuilder::ethernet2(mac.0, mac.1)
            .ipv4(SRC4, DST4, 64)
            .udp(SPORT, 514)),
        build!(PacketBuilder::ethernet2(mac.0, mac.1)
            .single_vlan(vid(100))
            .ipv4(SRC4, DST4, 64)
            .tcp(SPORT, 601, 1000, 64240)
            .syn()
            .ack(2000)
            .options(&tcp_opts)
            .expect("TCP options")),
        build!(PacketBuilder::ethernet2(mac.0, mac.1)
            .double_vlan(vid(100), vid(101))
            .ipv6(SRC6, DST6, 64)
            .udp(SPORT, 514)),
        build!(PacketBuilder::ethernet2(mac.0, mac.1)
            .ip(IpHeaders::Ipv4(v4_opts, Default::default()))
            .udp(SPORT, 514)),
        build!(PacketBuilder::ethernet2(mac.0, mac.1)
            .ip(v6_exts)
            .tcp(SPORT, 601, 1000, 64240)
            .psh()
            .ack(2000)),
    ];
    for pkt in packets {
        let (want_p, want_l4, want_flow) = etherparse_view(&pkt);
        let (p, flow) = run(&pkt);
        assert_eq!(p, Ok(want_p), "{pkt:02x?}");
        assert_eq!(flow, want_flow, "{pkt:02x?}");
        assert_eq!(run_l4(&pkt), Ok(want_l4), "{pkt:02x?}");
    }
}

#[test]
fn dport_refuses_what_it_cannot_read() {
    let pkt = v4_udp();
    let p = parse(&pkt[..], &mut FlowKey::default()).expect("a valid packet");
    // Cut inside the destination port: no port, a malformed L4 header.
    assert_eq!(dport(&pkt[..p.l4 + 3], &p), Err(Reason::MalformedL4));
    assert_eq!(dport(&pkt[..p.l4 + 4], &p), Ok([2, 2]));
    // Beyond the bound the verifier needs, whatever the frame holds.
    let far = Parsed {
        l4: MAX_L4_OFF + 1,
        ..p
    };
    let long = vec![0u8; MAX_L4_OFF + 64];
    assert_eq!(dport(&long[..], &far), Err(Reason::MalformedL4));
}
