//! The datapath against a table of packet fixtures, through BPF_PROG_TEST_RUN: for each case
//! the input packet, the expected XDP action, the exact expected output bytes (built with
//! etherparse, which computes checksums from scratch) and the counter that must move.
//! Needs root (loads BPF programs).

mod support;

use support::*;
use switcher::datapath::monotonic_ns;
use switcher::domain::Color;
use switcher_common::{FragKey, FragValue, Reason, BLUE, FAMILY_V4, GREEN, PROTO_UDP};

const SERVICES: &str = r#"
[[service]]
name = "udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "pass"
blue  = { backend = "198.18.1.2:5514" }
green = { backend = "198.18.2.2:6514" }

[[service]]
name = "tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "pass"
blue  = { backend = "198.18.1.2:1601" }
green = { backend = "198.18.2.2:2601" }

[[service]]
name = "udp6"
vip = "2001:2:0:10::10"
port = 514
protocol = "udp"
forward = "pass"
blue  = { backend = "[2001:2:0:1::2]:5514" }
green = { backend = "[2001:2:0:2::2]:6514" }

[[service]]
name = "tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
forward = "pass"
blue  = { backend = "[2001:2:0:1::2]:1601" }
green = { backend = "[2001:2:0:2::2]:2601" }
"#;

const PAYLOAD: &[u8] = b"<14>1 2026-11-24T00:00:00Z client app - - - hello switcher";

struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    /// `None`: the packet must come out untouched.
    output: Option<Vec<u8>>,
    reason: Option<Reason>,
}

fn rewritten(name: &'static str, input: Vec<u8>, output: Vec<u8>) -> Case {
    Case {
        name,
        input,
        action: XDP_PASS,
        output: Some(output),
        reason: Some(Reason::PassMode),
    }
}

fn untouched(name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
    Case {
        name,
        input,
        action: XDP_PASS,
        output: None,
        reason: Some(reason),
    }
}

fn table() -> Vec<Case> {
    let mut cases = vec![
        rewritten(
            "udp over ipv4",
            udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
            udp4("198.18.0.1", 40000, "198.18.1.2", 5514, PAYLOAD),
        ),
        rewritten(
            "udp over ipv6",
            udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, PAYLOAD),
            udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, PAYLOAD),
        ),
        rewritten(
            "tcp syn over ipv4",
            tcp4("198.18.0.1", 40001, "198.18.10.10", 601, "S", b""),
            tcp4("198.18.0.1", 40001, "198.18.1.2", 1601, "S", b""),
        ),
        rewritten(
            "tcp syn over ipv6",
            tcp6("2001:2::1", 40001, "2001:2:0:10::10", 601, "S", b""),
            tcp6("2001:2::1", 40001, "2001:2:0:1::2", 1601, "S", b""),
        ),
        rewritten(
            "udp with one 802.1Q tag",
            with_vlans(
                &udp4("198.18.0.1", 40002, "198.18.10.10", 514, PAYLOAD),
                &[(0x8100, 7)],
            ),
            with_vlans(
                &udp4("198.18.0.1", 40002, "198.18.1.2", 5514, PAYLOAD),
                &[(0x8100, 7)],
            ),
        ),
        rewritten(
            "tcp with QinQ (802.1ad + 802.1Q)",
            with_vlans(
                &tcp6("2001:2::1", 40003, "2001:2:0:10::10", 601, "S", b""),
                &[(0x88a8, 100), (0x8100, 7)],
            ),
            with_vlans(
                &tcp6("2001:2::1", 40003, "2001:2:0:1::2", 1601, "S", b""),
                &[(0x88a8, 100), (0x8100, 7)],
            ),
        ),
        rewritten(
            "ipv4 with options (IHL 7)",
            with_ipv4_options(
                &udp4("198.18.0.1", 40004, "198.18.10.10", 514, PAYLOAD),
                &[0x01, 0x01, 0x01, 0x01, 0x94, 0x04, 0x00, 0x00],
            ),
            with_ipv4_options(
                &udp4("198.18.0.1", 40004, "198.18.1.2", 5514, PAYLOAD),
                &[0x01, 0x01, 0x01, 0x01, 0x94, 0x04, 0x00, 0x00],
            ),
        ),
        rewritten(
            "udp over ipv4 with zero checksum stays zero",
            zero_udp_csum(udp4("198.18.0.1", 40005, "198.18.10.10", 514, PAYLOAD)),
            zero_udp_csum(udp4("198.18.0.1", 40005, "198.18.1.2", 5514, PAYLOAD)),
        ),
        rewritten(
            "ipv6 with hop-by-hop options",
            with_ipv6_ext(
                &udp6("2001:2::1", 40006, "2001:2:0:10::10", 514, PAYLOAD),
                0,
                &[0x01, 0x04, 0, 0, 0, 0],
            ),
            with_ipv6_ext(
                &udp6("2001:2::1", 40006, "2001:2:0:1::2", 5514, PAYLOAD),
                0,
                &[0x01, 0x04, 0, 0, 0, 0],
            ),
        ),
        untouched(
            "udp over ipv6 with zero checksum is invalid",
            zero_udp_csum(udp6("2001:2::1", 40007, "2001:2:0:10::10", 514, PAYLOAD)),
            Reason::Udp6ZeroChecksum,
        ),
        untouched(
            "other port on the VIP",
            udp4("198.18.0.1", 40008, "198.18.10.10", 515, PAYLOAD),
            Reason::NotService,
        ),
        untouched(
            "service port but tcp instead of udp",
            tcp4("198.18.0.1", 40009, "198.18.10.10", 514, "S", b""),
            Reason::NotService,
        ),
        untouched(
            "other destination",
            udp4("198.18.0.1", 40010, "198.18.10.11", 514, PAYLOAD),
            Reason::NotService,
        ),
        untouched("icmp echo to the VIP", icmp4(), Reason::NotService),
        untouched("arp", arp(), Reason::NotIp),
        untouched(
            "ipv6 routing header is not steered",
            with_ipv6_ext(
                &udp6("2001:2::1", 40011, "2001:2:0:10::10", 514, PAYLOAD),
                43,
                &[0, 0, 0, 0, 0, 0],
            ),
            Reason::Ipv6ExtUnsupported,
        ),
        untouched(
            "ipv4 header claims more bytes than the frame has",
            ip_len_plus(udp4("198.18.0.1", 40012, "198.18.10.10", 514, PAYLOAD), 1),
            Reason::MalformedL3,
        ),
        untouched(
            "udp length disagrees with ip length",
            udp_len_plus(udp4("198.18.0.1", 40013, "198.18.10.10", 514, PAYLOAD), 2),
            Reason::MalformedL4,
        ),
        // A port no service uses decides before the header is checked: such a packet is
        // passed untouched either way, and counted as the traffic it is not for.
        untouched(
            "udp length disagrees with ip length, to a port no service uses",
            udp_len_plus(udp4("198.18.0.1", 40016, "198.18.10.10", 515, PAYLOAD), 2),
            Reason::NotService,
        ),
        untouched(
            "udp over ipv6 with zero checksum, to a port no service uses",
            zero_udp_csum(udp6("2001:2::1", 40017, "2001:2:0:10::10", 515, PAYLOAD)),
            Reason::NotService,
        ),
        untouched(
            "tcp data offset below 5",
            tcp_doff(tcp4("198.18.0.1", 40014, "198.18.10.10", 601, "S", b""), 4),
            Reason::MalformedL4,
        ),
        untouched(
            "ipv4 IHL below 5",
            ihl(udp4("198.18.0.1", 40015, "198.18.10.10", 514, PAYLOAD), 4),
            Reason::MalformedL3,
        ),
    ];
    // Truncated at every byte: a frame cut anywhere before the end of the L4 header is never
    // rewritten, and is counted under the layer where it broke. BPF_PROG_TEST_RUN refuses
    // frames shorter than an Ethernet header (as no NIC delivers them), so L2 truncation is
    // exercised inside the VLAN tags.
    let tagged = with_vlans(
        &udp4("198.18.0.1", 41004, "198.18.10.10", 514, b""),
        &[(0x88a8, 100), (0x8100, 7)],
    );
    for cut in 14..22 {
        let name: &'static str =
            Box::leak(format!("QinQ frame truncated to {cut} bytes").into_boxed_str());
        cases.push(untouched(name, tagged[..cut].to_vec(), Reason::TruncatedL2));
    }
    for (name, full, l3, l4, l4_len) in [
        (
            "udp4",
            udp4("198.18.0.1", 41000, "198.18.10.10", 514, b""),
            14,
            34,
            8,
        ),
        (
            "tcp4",
            tcp4("198.18.0.1", 41001, "198.18.10.10", 601, "S", b""),
            14,
            34,
            20,
        ),
        (
            "udp6",
            udp6("2001:2::1", 41002, "2001:2:0:10::10", 514, b""),
            14,
            54,
            8,
        ),
        (
            "tcp6",
            tcp6("2001:2::1", 41003, "2001:2:0:10::10", 601, "S", b""),
            14,
            54,
            20,
        ),
    ] {
        for cut in 14..l4 + l4_len {
            let reason = if cut < l3 {
                Reason::TruncatedL2
            } else {
                // The IP length field no longer fits the frame once anything is cut.
                Reason::MalformedL3
            };
            let name: &'static str =
                Box::leak(format!("{name} truncated to {cut} bytes").into_boxed_str());
            cases.push(untouched(name, full[..cut].to_vec(), reason));
        }
    }
    cases
}

fn zero_udp_csum(mut p: Vec<u8>) -> Vec<u8> {
    let l4 = if p[12..14] == [0x86, 0xdd] { 54 } else { 34 };
    p[l4 + 6] = 0;
    p[l4 + 7] = 0;
    p
}

fn ip_len_plus(mut p: Vec<u8>, n: u16) -> Vec<u8> {
    let t = u16::from_be_bytes([p[16], p[17]]) + n;
    p[16..18].copy_from_slice(&t.to_be_bytes());
    fix_ipv4_checksum(&mut p, 14);
    p
}

fn udp_len_plus(mut p: Vec<u8>, n: u16) -> Vec<u8> {
    let t = u16::from_be_bytes([p[38], p[39]]) + n;
    p[38..40].copy_from_slice(&t.to_be_bytes());
    p
}

fn tcp_doff(mut p: Vec<u8>, doff: u8) -> Vec<u8> {
    p[34 + 12] = (doff << 4) | (p[34 + 12] & 0x0f);
    p
}

fn ihl(mut p: Vec<u8>, ihl: u8) -> Vec<u8> {
    p[14] = 0x40 | ihl;
    p
}

fn icmp4() -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(MAC_CLIENT, MAC_EDGE)
        .ipv4(v4("198.18.0.1"), v4("198.18.10.10"), 64)
        .icmpv4_echo_request(1, 1);
    let mut v = Vec::new();
    b.write(&mut v, b"ping").expect("build");
    v
}

fn arp() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&[0xff; 6]);
    v.extend_from_slice(&MAC_CLIENT);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&MAC_CLIENT);
    v.extend_from_slice(&v4("198.18.0.1"));
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&v4("198.18.10.10"));
    v
}

#[test]
fn fixture_table() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let mut failures = Vec::new();
    for case in table() {
        // The rewritten cases' inputs must carry valid checksums: an incremental update of a
        // wrong checksum stays wrong, and the expected bytes come from the same helpers.
        if case.output.is_some() {
            assert_checksums_valid(&strip_vlans(&case.input));
        }
        let before = case.reason.map(|r| t.reason(r));
        let (action, out) = t.xdp(&case.input);
        let want = case.output.as_ref().unwrap_or(&case.input);
        if action != case.action {
            failures.push(format!(
                "{}: action {action}, want {}",
                case.name, case.action
            ));
        }
        if &out != want {
            failures.push(format!(
                "{}: output differs\n  got  {}\n  want {}",
                case.name,
                hex(&out),
                hex(want)
            ));
        }
        if let (Some(r), Some(b)) = (case.reason, before) {
            let after = t.reason(r);
            if after != b + 1 {
                failures.push(format!(
                    "{}: counter {} went {b} -> {after}",
                    case.name,
                    r.label()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn strip_vlans(p: &[u8]) -> Vec<u8> {
    let mut v = p[..12].to_vec();
    let mut off = 12;
    while matches!(&p[off..off + 2], [0x81, 0x00] | [0x88, 0xa8]) {
        off += 4;
    }
    v.extend_from_slice(&p[off..]);
    v
}

#[test]
fn tcp_flow_stays_pinned_across_flips_and_new_syn_goes_to_active() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp4");
    let c = "198.18.0.1";
    let to_blue = |flags: &str| tcp4(c, 42000, "198.18.1.2", 1601, flags, b"x");

    let (a, out) = t.xdp(&tcp4(c, 42000, "198.18.10.10", 601, "S", b"x"));
    assert_eq!((a, out), (XDP_PASS, to_blue("S")));
    for to in [Color::Green, Color::Blue, Color::Green] {
        t.dp().flip(id, to).expect("flip");
        let (_, out) = t.xdp(&tcp4(c, 42000, "198.18.10.10", 601, "AP", b"x"));
        assert_eq!(
            out,
            to_blue("AP"),
            "established flow must stay on blue after flip to {to}"
        );
    }
    // Active is green now: a new connection goes there.
    let (_, out) = t.xdp(&tcp4(c, 42001, "198.18.10.10", 601, "S", b"x"));
    assert_eq!(out, tcp4(c, 42001, "198.18.2.2", 2601, "S", b"x"));
    // A retransmitted SYN of the blue flow keeps blue; after FIN the tuple re-picks green.
    let (_, out) = t.xdp(&tcp4(c, 42000, "198.18.10.10", 601, "S", b"x"));
    assert_eq!(out, to_blue("S"));
    let (_, out) = t.xdp(&tcp4(c, 42000, "198.18.10.10", 601, "FA", b"x"));
    assert_eq!(out, to_blue("FA"));
    let (_, out) = t.xdp(&tcp4(c, 42000, "198.18.10.10", 601, "A", b""));
    assert_eq!(
        out,
        tcp4(c, 42000, "198.18.1.2", 1601, "A", b""),
        "last ACK of the closing flow still goes to blue"
    );
    let (_, out) = t.xdp(&tcp4(c, 42000, "198.18.10.10", 601, "S", b"x"));
    assert_eq!(out, tcp4(c, 42000, "198.18.2.2", 2601, "S", b"x"));

    let blue = t.counters(id, Color::Blue);
    let green = t.counters(id, Color::Green);
    assert_eq!((blue.packets, blue.new_flows), (7, 1));
    assert_eq!((green.packets, green.new_flows), (2, 2));
}

#[test]
fn tcp_without_flow_entry_follows_drain_rule() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp6");
    t.dp().flip(id, Color::Green).expect("flip");
    // Within the drain window (60 s default) an unknown mid-connection packet goes to the
    // colour that was active before the flip, and is pinned there.
    let (_, out) = t.xdp(&tcp6("2001:2::1", 43000, "2001:2:0:10::10", 601, "A", b"x"));
    assert_eq!(
        out,
        tcp6("2001:2::1", 43000, "2001:2:0:1::2", 1601, "A", b"x")
    );
    assert_eq!(t.reason(Reason::TcpPinMiss), 1);
    let (_, out) = t.xdp(&tcp6("2001:2::1", 43000, "2001:2:0:10::10", 601, "A", b"y"));
    assert_eq!(
        out,
        tcp6("2001:2::1", 43000, "2001:2:0:1::2", 1601, "A", b"y")
    );
    assert_eq!(
        t.reason(Reason::TcpPinMiss),
        1,
        "second packet finds the entry"
    );
    assert_eq!(t.counters(id, Color::Blue).pin_misses, 1);
}

#[test]
fn udp_follows_active_per_packet_and_flip_mark_records_cutover() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp4");
    let pkt = udp4("198.18.0.1", 44000, "198.18.10.10", 514, PAYLOAD);
    let (_, out) = t.xdp(&pkt);
    assert_eq!(out, udp4("198.18.0.1", 44000, "198.18.1.2", 5514, PAYLOAD));
    let flip = t.dp().flip(id, Color::Green).expect("flip");
    assert!(flip.changed);
    assert_eq!(t.mark(id).first_ns, [0, 0]);
    let (_, out) = t.xdp(&pkt);
    assert_eq!(out, udp4("198.18.0.1", 44000, "198.18.2.2", 6514, PAYLOAD));
    let mark = t.mark(id);
    assert_eq!(mark.generation, flip.generation);
    assert_eq!(mark.first_ns[0], 0, "blue got nothing after the flip");
    assert!(
        mark.first_ns[1] >= flip.flip_ns,
        "green's first packet is after the flip write"
    );
    let again = t.dp().flip(id, Color::Green).expect("flip");
    assert!(!again.changed, "flipping to the active colour is a no-op");
}

#[test]
fn udp_affinity_keeps_a_source_on_its_color() {
    if !privileged() {
        return;
    }
    let services = SERVICES.replacen(
        "forward = \"pass\"\nblue  = { backend = \"198.18.1.2:5514\" }",
        "forward = \"pass\"\nudp_affinity_idle_ms = 60000\nblue  = { backend = \"198.18.1.2:5514\" }",
        1,
    );
    let mut t = TestDatapath::new(&services);
    let id = t.id("udp4");
    let from = |sport| udp4("198.18.0.1", sport, "198.18.10.10", 514, PAYLOAD);
    let (_, out) = t.xdp(&from(45000));
    assert_eq!(out, udp4("198.18.0.1", 45000, "198.18.1.2", 5514, PAYLOAD));
    t.dp().flip(id, Color::Green).expect("flip");
    let (_, out) = t.xdp(&from(45000));
    assert_eq!(
        out,
        udp4("198.18.0.1", 45000, "198.18.1.2", 5514, PAYLOAD),
        "source stays on blue"
    );
    let (_, out) = t.xdp(&from(45001));
    assert_eq!(
        out,
        udp4("198.18.0.1", 45001, "198.18.2.2", 6514, PAYLOAD),
        "new source goes green"
    );
}

#[test]
fn fragments_follow_their_first_fragment_across_a_flip() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp4");
    let big: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    let (f1, f2) = fragment_v4(
        &udp4("198.18.0.1", 46000, "198.18.10.10", 514, &big),
        304,
        0x4242,
    );
    let (e1, e2) = fragment_v4(
        &udp4("198.18.0.1", 46000, "198.18.1.2", 5514, &big),
        304,
        0x4242,
    );
    let (a, out) = t.xdp(&f1);
    assert_eq!((a, out), (XDP_PASS, e1));
    // Flip between the fragments: the second must still go to blue.
    t.dp().flip(id, Color::Green).expect("flip");
    let (a, out) = t.xdp(&f2);
    assert_eq!((a, out), (XDP_PASS, e2));
    assert_eq!(t.reason(Reason::FragFollowed), 1);
    // A later fragment whose first fragment never came is left alone.
    let (_, o2) = fragment_v4(
        &udp4("198.18.0.1", 46001, "198.18.10.10", 514, &big),
        304,
        0x4343,
    );
    let (_, out) = t.xdp(&o2);
    assert_eq!(out, o2);
    assert_eq!(t.reason(Reason::FragNoEntry), 1);

    // IPv6: same rule through the Fragment extension header.
    let id6 = t.id("udp6");
    let (f1, f2) = fragment_v6(
        &udp6("2001:2::1", 46002, "2001:2:0:10::10", 514, &big),
        304,
        77,
    );
    let (e1, e2) = fragment_v6(
        &udp6("2001:2::1", 46002, "2001:2:0:2::2", 6514, &big),
        304,
        77,
    );
    t.dp().flip(id6, Color::Green).expect("flip");
    assert_eq!(t.xdp(&f1).1, e1);
    t.dp().flip(id6, Color::Blue).expect("flip");
    assert_eq!(
        t.xdp(&f2).1,
        e2,
        "second v6 fragment follows the first to green"
    );
}

/// SERVICES with UDP affinity on udp4: replies over UDP are translated only for flows the
/// switch keeps an entry for.
fn services_with_udp_affinity() -> String {
    SERVICES.replace(
        "protocol = \"udp\"\nforward = \"pass\"",
        "protocol = \"udp\"\nforward = \"pass\"\nudp_affinity_idle_ms = 30000",
    )
}

#[test]
fn egress_translates_replies_of_steered_flows_only() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services_with_udp_affinity());
    let replies = [
        (
            tcp4("198.18.1.2", 1601, "198.18.0.1", 42000, "SA", b""),
            tcp4("198.18.10.10", 601, "198.18.0.1", 42000, "SA", b""),
        ),
        (
            tcp6("2001:2:0:2::2", 2601, "2001:2::1", 42000, "A", b"ok\n"),
            tcp6("2001:2:0:10::10", 601, "2001:2::1", 42000, "A", b"ok\n"),
        ),
        (
            udp4("198.18.2.2", 6514, "198.18.0.1", 40000, b"reply"),
            udp4("198.18.10.10", 514, "198.18.0.1", 40000, b"reply"),
        ),
        (
            zero_udp_csum(udp4("198.18.2.2", 6514, "198.18.0.1", 40000, b"reply")),
            zero_udp_csum(udp4("198.18.10.10", 514, "198.18.0.1", 40000, b"reply")),
        ),
    ];
    // Before the switch steered anything, a packet from a backend's address and port leaves
    // as it is: nobody may send as the VIP by sending as a backend.
    for (input, _) in &replies {
        assert_eq!(t.tc(input), (0, input.clone()));
    }
    assert_eq!(t.reason(Reason::EgressUnsteered), 4);
    assert_eq!(t.reason(Reason::EgressReversed), 0);

    // Now the clients' flows go through the switch: tcp4 to blue, tcp6 and udp4 to green.
    let (tcp4_id, tcp6_id, udp4_id) = (t.id("tcp4"), t.id("tcp6"), t.id("udp4"));
    t.xdp(&tcp4("198.18.0.1", 42000, "198.18.10.10", 601, "S", b""));
    t.dp().flip(tcp6_id, Color::Green).expect("flip");
    t.xdp(&tcp6("2001:2::1", 42000, "2001:2:0:10::10", 601, "S", b""));
    t.xdp(&tcp6("2001:2::1", 42000, "2001:2:0:10::10", 601, "A", b""));
    t.dp().flip(udp4_id, Color::Green).expect("flip");
    t.xdp(&udp4("198.18.0.1", 40000, "198.18.10.10", 514, b"hello"));
    for (input, want) in &replies {
        let (action, out) = t.tc(input);
        assert_eq!(action, 0, "TC_ACT_OK");
        assert_eq!(hex(&out), hex(want));
    }
    assert_eq!(t.reason(Reason::EgressReversed), 4);
    // The same client's flow steered to green is no licence for blue's packets.
    let from_blue = udp4("198.18.1.2", 5514, "198.18.0.1", 40000, b"reply");
    assert_eq!(t.tc(&from_blue).1, from_blue);
    // A packet from a backend port that is not a service port passes untouched.
    let other = udp4("198.18.1.2", 9999, "198.18.0.1", 40000, b"x");
    assert_eq!(t.tc(&other).1, other);

    // Resets: a backend refusing a connection (reset of a half-open flow) counts ...
    t.dp().flip(tcp4_id, Color::Green).expect("flip");
    t.xdp(&tcp4("198.18.0.1", 42001, "198.18.10.10", 601, "S", b""));
    let (_, out) = t.tc(&tcp4("198.18.2.2", 2601, "198.18.0.1", 42001, "R", b""));
    assert_eq!(
        out,
        tcp4("198.18.10.10", 601, "198.18.0.1", 42001, "R", b"")
    );
    assert_eq!(t.counters(tcp4_id, Color::Green).resets, 1);
    // ... so does one of a connection the client sent data on ...
    t.xdp(&tcp4("198.18.0.1", 42002, "198.18.10.10", 601, "S", b""));
    t.xdp(&tcp4(
        "198.18.0.1",
        42002,
        "198.18.10.10",
        601,
        "AP",
        b"<14>1 x",
    ));
    t.tc(&tcp4("198.18.2.2", 2601, "198.18.0.1", 42002, "R", b""));
    assert_eq!(t.counters(tcp4_id, Color::Green).resets, 2);
    // ... but not one answering a bare ACK nobody opened (anyone can send one to the VIP), nor
    // one ending a handshake that carried no data, nor a reset to a client never steered.
    t.xdp(&tcp4("198.18.0.1", 42003, "198.18.10.10", 601, "A", b""));
    t.tc(&tcp4("198.18.2.2", 2601, "198.18.0.1", 42003, "R", b""));
    t.xdp(&tcp4("198.18.0.1", 42004, "198.18.10.10", 601, "S", b""));
    t.xdp(&tcp4("198.18.0.1", 42004, "198.18.10.10", 601, "A", b""));
    t.tc(&tcp4("198.18.2.2", 2601, "198.18.0.1", 42004, "R", b""));
    let stray = tcp4("198.18.2.2", 2601, "198.18.0.1", 42999, "R", b"");
    assert_eq!(t.tc(&stray).1, stray);
    assert_eq!(t.counters(tcp4_id, Color::Green).resets, 2);
    assert_eq!(t.counters(tcp4_id, Color::Blue).resets, 0);

    // ICMP: a port unreachable blue's own host sends about a datagram to its UDP port counts
    // for blue; the flow is green's, so it is not translated.
    let quoted = udp4("198.18.0.1", 40000, "198.18.1.2", 5514, b"hello");
    let icmp = icmp4_error(&quoted, "198.18.1.2");
    let (action, out) = t.tc(&icmp);
    assert_eq!((action, out), (0, icmp), "ICMP passes untouched");
    assert_eq!(t.counters(udp4_id, Color::Blue).unreachables, 1);
    assert_eq!(t.counters(udp4_id, Color::Green).unreachables, 0);
    // From a router on the way (not the backend's host): not a backend refusing traffic.
    let from_router = icmp4_error(&quoted, "198.18.1.1");
    t.tc(&from_router);
    assert_eq!(t.counters(udp4_id, Color::Blue).unreachables, 1);
}

/// A UDP service without affinity keeps no flow state (its cheapest path), so egress cannot
/// tell steered datagrams from others: every reply from a member's address and port, and an
/// ICMP error about a datagram to one, gets the VIP's name.
#[test]
fn a_udp_service_without_affinity_translates_every_reply() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let reply = udp6("2001:2:0:1::2", 5514, "2001:2::1", 40000, b"reply");
    let (action, out) = t.tc(&reply);
    assert_eq!(action, 0, "TC_ACT_OK");
    assert_eq!(
        hex(&out),
        hex(&udp6("2001:2:0:10::10", 514, "2001:2::1", 40000, b"reply"))
    );
    assert_eq!(t.reason(Reason::EgressReversed), 1);
    assert_eq!(t.reason(Reason::EgressUnsteered), 0);
    // The TCP service on the same host still needs a steered flow.
    let tcp = tcp6("2001:2:0:1::2", 1601, "2001:2::1", 42000, "SA", b"");
    assert_eq!(t.tc(&tcp).1, tcp);
    assert_eq!(t.reason(Reason::EgressUnsteered), 1);
    // An unreachable about a datagram to the member reaches the client about the VIP.
    let sent = udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, b"hello");
    let as_client_sent = udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, b"hello");
    let port = etherparse::Icmpv6Type::DestinationUnreachable(
        etherparse::icmpv6::DestUnreachableCode::Port,
    );
    let (_, out) = t.tc(&icmp6_error(
        port,
        "2001:2:0:1::2",
        "2001:2::1",
        &sent[14..],
    ));
    assert_eq!(
        hex(&out),
        hex(&icmp6_error(
            port,
            "2001:2:0:10::10",
            "2001:2::1",
            &as_client_sent[14..]
        ))
    );
    assert_eq!(t.reason(Reason::EgressIcmp), 1);
}

/// An ICMPv4 port unreachable from `from` towards the quoted packet's source.
fn icmp4_error(quoted: &[u8], from: &str) -> Vec<u8> {
    let mut icmp = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_EDGE, MAC_CLIENT)
        .ipv4(v4(from), v4("198.18.0.1"), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut icmp, &quoted[14..])
        .expect("build icmp");
    icmp
}

/// An ICMP error about a packet the switch steered reaches the client about the VIP: the
/// quoted destination (address and port) becomes the VIP's, with the quoted IPv4 header
/// checksum and the ICMP checksum right, and the outer source too when the backend sent it.
#[test]
fn icmp_errors_about_steered_flows_reach_the_client_about_the_vip() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services_with_udp_affinity());
    // The client's datagram, steered to blue (udp4 is blue).
    t.xdp(&udp4("198.18.0.1", 40000, "198.18.10.10", 514, b"hello"));
    let sent = udp4("198.18.0.1", 40000, "198.18.1.2", 5514, b"hello");
    let as_client_sent = udp4("198.18.0.1", 40000, "198.18.10.10", 514, b"hello");
    // From the backend's host: outer source and quoted destination become the VIP.
    let (_, out) = t.tc(&icmp4_error(&sent, "198.18.1.2"));
    let mut want = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_EDGE, MAC_CLIENT)
        .ipv4(v4("198.18.10.10"), v4("198.18.0.1"), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut want, &as_client_sent[14..])
        .expect("build icmp");
    assert_eq!(hex(&out), hex(&want));
    // From a router (path MTU): only the quoted packet changes; the sender stays the router.
    let mut too_big = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_EDGE, MAC_CLIENT)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.1"), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut too_big, &sent[14..])
        .expect("build icmp");
    let (_, out) = t.tc(&too_big);
    let mut want = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_EDGE, MAC_CLIENT)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.1"), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut want, &as_client_sent[14..])
        .expect("build icmp");
    assert_eq!(hex(&out), hex(&want));
    assert_eq!(t.reason(Reason::EgressIcmp), 2);
    // Neither counts as the backend refusing traffic except the first.
    let udp4_id = t.id("udp4");
    assert_eq!(t.counters(udp4_id, Color::Blue).unreachables, 1);

    // IPv6, through a TCP connection steered to blue.
    t.xdp(&tcp6("2001:2::1", 42000, "2001:2:0:10::10", 601, "S", b""));
    let sent6 = tcp6("2001:2::1", 42000, "2001:2:0:1::2", 1601, "S", b"");
    let seen6 = tcp6("2001:2::1", 42000, "2001:2:0:10::10", 601, "S", b"");
    let unreachable = etherparse::Icmpv6Type::DestinationUnreachable(
        etherparse::icmpv6::DestUnreachableCode::Port,
    );
    let (_, out) = t.tc(&icmp6_error(
        unreachable,
        "2001:2:0:1::2",
        "2001:2::1",
        &sent6[14..],
    ));
    let want = icmp6_error(unreachable, "2001:2:0:10::10", "2001:2::1", &seen6[14..]);
    assert_eq!(hex(&out), hex(&want));
}

/// The `[[service]]` blocks of SERVICES whose name is in `names`, as a full config.
fn services_named(names: &[&str]) -> switcher::config::Config {
    let blocks: Vec<&str> = SERVICES
        .split("[[service]]")
        .filter(|b| names.iter().any(|n| b.contains(&format!("name = \"{n}\""))))
        .collect();
    let text = format!(
        "[daemon]\ninterfaces = [\"lo\"]\n[[service]]{}",
        blocks.join("[[service]]")
    );
    switcher::config::Config::parse(&text).expect("subset config")
}

#[test]
fn port_slots_follow_the_configured_services() {
    use switcher_common::{port_slot, FAMILY_V6, PORT_NONE, PORT_SHARED, PROTO_TCP};
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let ports = t
        .dp()
        .dir()
        .join("maps")
        .join(switcher_common::names::SERVICE_PORTS);
    let slot = |port: u16, proto: u8, family: u8| -> u32 {
        let data = aya::maps::MapData::from_pin(&ports).expect("SERVICE_PORTS pin");
        let m: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("array");
        m.get(&port_slot(port, proto, family), 0)
            .expect("read SERVICE_PORTS")
    };
    // The id + 1 of the only service on (port, proto, family), as a direct slot holds it.
    let only = |t: &mut TestDatapath, port: u16, proto: u8, family: u8| -> u32 {
        let all = t.dp().services().expect("services");
        let ids: Vec<u32> = all
            .iter()
            .filter(|(k, _)| k.port() == port && k.proto == proto && k.family == family)
            .map(|(_, v)| v.id)
            .collect();
        assert_eq!(ids.len(), 1, "one service on {port}/{proto}/{family}");
        ids[0] + 1
    };
    let v4 = udp4("198.18.0.1", 44000, "198.18.10.10", 514, PAYLOAD);
    let v6 = udp6("2001:2::1", 44000, "2001:2:0:10::10", 514, PAYLOAD);
    let other_vip = udp4("198.18.0.1", 44000, "198.18.10.11", 514, PAYLOAD);
    let v4_steered = udp4("198.18.0.1", 44000, "198.18.1.2", 5514, PAYLOAD);
    let v6_steered = udp6("2001:2::1", 44000, "2001:2:0:1::2", 5514, PAYLOAD);
    let not_service = |t: &mut TestDatapath, pkt: &[u8]| {
        let before = t.reason(Reason::NotService);
        assert_eq!(t.xdp(pkt).1, pkt, "passed untouched");
        assert_eq!(t.reason(Reason::NotService), before + 1);
    };

    // UDP and TCP, IPv4 and IPv6 on one port are separate slots, each to its only service;
    // a packet to another VIP on a direct slot is no service.
    assert_eq!(
        slot(514, PROTO_UDP, FAMILY_V4),
        only(&mut t, 514, PROTO_UDP, FAMILY_V4)
    );
    assert_eq!(
        slot(514, PROTO_UDP, FAMILY_V6),
        only(&mut t, 514, PROTO_UDP, FAMILY_V6)
    );
    assert_eq!(
        slot(601, PROTO_TCP, FAMILY_V4),
        only(&mut t, 601, PROTO_TCP, FAMILY_V4)
    );
    assert_eq!(slot(514, PROTO_TCP, FAMILY_V4), PORT_NONE);
    assert_eq!(slot(515, PROTO_UDP, FAMILY_V4), PORT_NONE);
    assert_eq!(t.xdp(&v4).1, v4_steered, "udp4 through its direct slot");
    assert_eq!(t.xdp(&v6).1, v6_steered, "udp6 through its direct slot");
    not_service(&mut t, &other_vip);

    // A canary share written to a service on a direct slot: the entry holds it and the slot
    // leads to it again afterwards.
    let direct = slot(514, PROTO_UDP, FAMILY_V4);
    t.dp().set_canary(direct - 1, 0x4000).expect("canary");
    let by_id = t
        .dp()
        .dir()
        .join("maps")
        .join(switcher_common::names::SERVICE_BY_ID);
    let data = aya::maps::MapData::from_pin(&by_id).expect("SERVICE_BY_ID pin");
    let entries: aya::maps::Array<_, switcher_common::ServiceEntry> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("array");
    let e = entries.get(&(direct - 1), 0).expect("entry");
    assert_eq!((e.value.canary_share, e.key.port()), (0x4000, 514));
    assert_eq!(slot(514, PROTO_UDP, FAMILY_V4), direct);
    t.dp().set_canary(direct - 1, 0).expect("canary off");
    assert_eq!(t.xdp(&v4).1, v4_steered);

    // A second IPv4 VIP on 514/udp: the slot leads through the hash, to each.
    let text = format!(
        "[daemon]\ninterfaces = [\"lo\"]\n{SERVICES}\n[[service]]\nname = \"udp4b\"\n\
         vip = \"198.18.10.11\"\nport = 514\nprotocol = \"udp\"\nforward = \"pass\"\n\
         blue = {{ backend = \"198.18.1.3:5514\" }}\n"
    );
    let cfg = switcher::config::Config::parse(&text).expect("config with udp4b");
    t.dp().apply(&cfg.services).expect("apply");
    assert_eq!(slot(514, PROTO_UDP, FAMILY_V4), PORT_SHARED);
    assert_eq!(t.xdp(&v4).1, v4_steered, "udp4 through the hash");
    assert_eq!(
        t.xdp(&other_vip).1,
        udp4("198.18.0.1", 44000, "198.18.1.3", 5514, PAYLOAD),
        "udp4b through the hash"
    );
    assert_eq!(t.xdp(&v6).1, v6_steered);

    // No IPv4 service on 514/udp left: that slot is closed, the IPv6 one stays.
    let cfg = services_named(&["tcp4", "tcp6", "udp6"]);
    t.dp().apply(&cfg.services).expect("apply");
    assert_eq!(slot(514, PROTO_UDP, FAMILY_V4), PORT_NONE);
    not_service(&mut t, &v4);
    not_service(&mut t, &other_vip);
    assert_eq!(t.xdp(&v6).1, v6_steered);

    // Back: direct again.
    let cfg = services_named(&["udp4", "tcp4", "udp6", "tcp6"]);
    t.dp().apply(&cfg.services).expect("apply");
    assert_eq!(
        slot(514, PROTO_UDP, FAMILY_V4),
        only(&mut t, 514, PROTO_UDP, FAMILY_V4)
    );
    assert_eq!(t.xdp(&v4).1, v4_steered);
    not_service(&mut t, &other_vip);
}

/// An ICMPv6 error from `src` to `dst` quoting `quoted` (an IPv6 packet without Ethernet).
fn icmp6_error(ty: etherparse::Icmpv6Type, src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_EDGE, MAC_CLIENT)
        .ipv6(v6(src), v6(dst), 64)
        .icmpv6(ty)
        .write(&mut v, quoted)
        .expect("build icmpv6");
    v
}

#[test]
fn egress_counts_icmpv6_unreachables_per_colour() {
    if !privileged() {
        return;
    }
    // With affinity the switch keeps UDP flow state, so an error about a flow it did not
    // steer passes untouched (see `a_udp_service_without_affinity_translates_every_reply`).
    let mut t = TestDatapath::new(&services_with_udp_affinity());
    let id = t.id("udp6");
    let unreachable = |code| etherparse::Icmpv6Type::DestinationUnreachable(code);
    // Green's backend refuses a datagram the switch sent it.
    let to_green = udp6("2001:2::1", 40000, "2001:2:0:2::2", 6514, b"hello");
    let port_unreachable = icmp6_error(
        unreachable(etherparse::icmpv6::DestUnreachableCode::Port),
        "2001:2:0:2::2",
        "2001:2::1",
        &to_green[14..],
    );
    let (action, out) = t.tc(&port_unreachable);
    assert_eq!(
        (action, hex(&out)),
        (0, hex(&port_unreachable)),
        "ICMPv6 passes untouched"
    );
    assert_eq!(
        t.counters(id, Color::Green).unreachables,
        1,
        "port unreachable from green's backend counts for green"
    );
    assert_eq!(
        t.counters(id, Color::Blue).unreachables,
        0,
        "and not for blue"
    );
    // Every destination-unreachable code counts (a firewall's "prohibited" too) ...
    let prohibited = icmp6_error(
        unreachable(etherparse::icmpv6::DestUnreachableCode::Prohibited),
        "2001:2:0:2::2",
        "2001:2::1",
        &to_green[14..],
    );
    assert_eq!(t.tc(&prohibited), (0, prohibited.clone()));
    assert_eq!(
        t.counters(id, Color::Green).unreachables,
        2,
        "administratively prohibited counts"
    );
    // ... but not other ICMPv6 errors (packet too big is path MTU, not a refusal), nor an
    // unreachable about a port no backend uses.
    let too_big = icmp6_error(
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 },
        "2001:2:0:2::2",
        "2001:2::1",
        &to_green[14..],
    );
    assert_eq!(t.tc(&too_big), (0, too_big.clone()));
    let elsewhere = udp6("2001:2::1", 40000, "2001:2:0:2::2", 7777, b"hello");
    t.tc(&icmp6_error(
        unreachable(etherparse::icmpv6::DestUnreachableCode::Port),
        "2001:2:0:2::2",
        "2001:2::1",
        &elsewhere[14..],
    ));
    assert_eq!(
        t.counters(id, Color::Green).unreachables,
        2,
        "packet too big and unreachables about other ports do not count"
    );
    assert_eq!(t.counters(id, Color::Blue).unreachables, 0);
}

/// The FRAGS map, opened from its pin as any userspace tool would.
fn frags_map(t: &TestDatapath) -> aya::maps::HashMap<aya::maps::MapData, FragKey, FragValue> {
    let pin = t.loaded.maps_dir().join(switcher_common::names::FRAGS);
    let data = aya::maps::MapData::from_pin(&pin).expect("FRAGS pin");
    let map = aya::maps::Map::from_map_data(data).expect("FRAGS map type");
    aya::maps::HashMap::try_from(map).expect("FRAGS as a hash map")
}

fn frag_key_v4(src: &str, dst: &str, id: u32) -> FragKey {
    let mut k = FragKey {
        id,
        proto: PROTO_UDP,
        family: FAMILY_V4,
        ..FragKey::default()
    };
    k.src[..4].copy_from_slice(&v4(src));
    k.dst[..4].copy_from_slice(&v4(dst));
    k
}

const SECOND_NS: u64 = 1_000_000_000;

#[test]
fn fragment_entry_stops_steering_after_30_seconds() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp4");
    let big: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    let (f1, f2) = fragment_v4(
        &udp4("198.18.0.1", 46100, "198.18.10.10", 514, &big),
        304,
        0x5151,
    );
    let (e1, e2) = fragment_v4(
        &udp4("198.18.0.1", 46100, "198.18.1.2", 5514, &big),
        304,
        0x5151,
    );
    let t0 = monotonic_ns().expect("clock");
    assert_eq!(t.xdp(&f1), (XDP_PASS, e1));
    let t1 = monotonic_ns().expect("clock");

    // The entry the first fragment left: its key, its colour, and a CLOCK_MONOTONIC stamp
    // (bpf_ktime_get_ns), so userspace can age it.
    let mut frags = frags_map(&t);
    let entries: Vec<(FragKey, FragValue)> =
        frags.iter().collect::<Result<_, _>>().expect("read FRAGS");
    let key = frag_key_v4("198.18.0.1", "198.18.10.10", 0x5151);
    assert_eq!(entries.len(), 1, "one datagram, one entry: {entries:?}");
    let (k, v) = entries[0];
    assert_eq!(k, key);
    assert_eq!((v.service_id, v.color), (id, BLUE));
    assert!(
        (t0..=t1).contains(&v.created_ns),
        "created_ns {} not within the run ({t0}..={t1})",
        v.created_ns
    );
    let aged = |secs: u64| FragValue {
        created_ns: monotonic_ns().expect("clock") - secs * SECOND_NS,
        ..v
    };

    // 31 s old: the README's 30 s are over, the later fragment is left alone.
    frags.insert(key, aged(31), 0).expect("age the entry");
    let blue_before = t.counters(id, Color::Blue).packets;
    assert_eq!(t.xdp(&f2), (XDP_PASS, f2.clone()), "expired: untouched");
    assert_eq!(t.reason(Reason::FragNoEntry), 1);
    assert_eq!(t.reason(Reason::FragFollowed), 0);
    assert_eq!(t.counters(id, Color::Blue).packets, blue_before);

    // Control: the same entry 29 s old still steers it.
    frags.insert(key, aged(29), 0).expect("age the entry");
    assert_eq!(t.xdp(&f2), (XDP_PASS, e2), "29 s old: still followed");
    assert_eq!(t.reason(Reason::FragFollowed), 1);
    assert_eq!(t.counters(id, Color::Blue).packets, blue_before + 1);
}

#[test]
fn ipv6_fragments_behind_destination_options_stay_on_one_colour() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp6");
    let big: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    // PadN options: a Destination Options header (60) before the Fragment header, and, for
    // the second datagram, a Hop-by-Hop header (0) before that: three extension headers, as
    // many as the parser walks.
    let pad = [0x01, 0x04, 0, 0, 0, 0];
    let dst_opts = |p: Vec<u8>| with_ipv6_ext(&p, 60, &pad);
    let hbh_dst_opts = |p: Vec<u8>| with_ipv6_ext(&with_ipv6_ext(&p, 60, &pad), 0, &pad);
    let mut followed = 0;
    for (frag_id, sport, headers) in [
        (91, 46200, &dst_opts as &dyn Fn(Vec<u8>) -> Vec<u8>),
        (92, 46201, &hbh_dst_opts),
    ] {
        let (f1, f2) = fragment_v6(
            &udp6("2001:2::1", sport, "2001:2:0:10::10", 514, &big),
            304,
            frag_id,
        );
        let (e1, e2) = fragment_v6(
            &udp6("2001:2::1", sport, "2001:2:0:2::2", 6514, &big),
            304,
            frag_id,
        );
        let (f1, f2, e1, e2) = (headers(f1), headers(f2), headers(e1), headers(e2));
        t.dp().flip(id, Color::Green).expect("flip");
        assert_eq!(t.xdp(&f1), (XDP_PASS, e1), "first fragment to green");
        // Flip between the fragments: the later one still follows its first to green.
        t.dp().flip(id, Color::Blue).expect("flip");
        assert_eq!(
            t.xdp(&f2),
            (XDP_PASS, e2),
            "later fragment follows to green"
        );
        followed += 1;
        assert_eq!(t.reason(Reason::FragFollowed), followed);
    }
    assert_eq!(t.counters(id, Color::Green).packets, 4);
    assert_eq!(t.counters(id, Color::Blue).packets, 0);
}

#[test]
fn full_fragment_table_evicts_and_counts_no_table_full() {
    if !privileged() {
        return;
    }
    // FRAGS is an LRU hash: when it is full a new datagram's entry evicts old ones (the kernel
    // frees a batch of the least recently used), so the insert succeeds and `table_full` is not
    // counted. (That counter moves only when an LRU insert itself fails.)
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp4");
    let pin = t.loaded.maps_dir().join(switcher_common::names::FRAGS);
    let max = aya::maps::MapInfo::from_pin(&pin)
        .expect("FRAGS info")
        .max_entries();
    let mut frags = frags_map(&t);
    let now = monotonic_ns().expect("clock");
    let filler = |i: u32| {
        let [_, _, hi, lo] = i.to_be_bytes();
        (
            frag_key_v4(&format!("198.19.{hi}.{lo}"), "198.18.10.10", i),
            FragValue {
                service_id: id,
                color: GREEN,
                created_ns: now,
                ..FragValue::default()
            },
        )
    };
    for i in 0..max {
        let (k, v) = filler(i);
        frags.insert(k, v, 0).expect("fill FRAGS");
    }
    // A quarter more than it holds: an LRU map takes them by evicting.
    let refused = (max..max + max / 4)
        .filter(|&i| {
            let (k, v) = filler(i);
            frags.insert(k, v, 0).is_err()
        })
        .count();
    let held = frags.keys().count() as u32;
    // Full: the extra entries displaced older ones. (Not exactly `max`: the LRU keeps some free
    // nodes on per-CPU lists, and evicts in batches.)
    assert!(
        held <= max && held >= max / 2,
        "FRAGS holds {held} of {max} entries"
    );

    let big: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    let (f1, f2) = fragment_v4(
        &udp4("198.18.0.1", 46300, "198.18.10.10", 514, &big),
        304,
        0x6161,
    );
    let (e1, e2) = fragment_v4(
        &udp4("198.18.0.1", 46300, "198.18.1.2", 5514, &big),
        304,
        0x6161,
    );
    assert_eq!(t.xdp(&f1), (XDP_PASS, e1), "steered although FRAGS is full");
    assert_eq!(t.reason(Reason::TableFull), 0, "the LRU evicted instead");
    let entry = frags
        .get(&frag_key_v4("198.18.0.1", "198.18.10.10", 0x6161), 0)
        .expect("the new datagram's entry is in FRAGS");
    assert_eq!((entry.service_id, entry.color), (id, BLUE));
    assert_eq!(t.xdp(&f2), (XDP_PASS, e2), "later fragment followed");
    assert_eq!(t.reason(Reason::FragFollowed), 1);
    assert!(frags.keys().count() as u32 <= max);
    assert_eq!(
        refused, 0,
        "userspace inserts into the full LRU map evict too"
    );
}
