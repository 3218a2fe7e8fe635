//! Shared by the privileged tests: the root gate, a datapath loaded for BPF_PROG_TEST_RUN, and
//! packet builders. Expected packets are built with etherparse, which computes every checksum
//! from scratch, so comparing bytes checks our incremental updates independently.
#![allow(dead_code)]

use etherparse::{Ipv4Header, PacketBuilder, PacketHeaders, TransportHeader};
use switcher::{config::Config, datapath::BpfDatapath, domain::Color};
use switcher_common::{ColorCounters, FlipMark, Reason};
use switcher_tests::loaded::{LoadedDatapath, Program};

pub mod metrics;
pub mod netns;
pub mod packets;

/// True when the test may run: the one skip rule of every privileged test (fails in CI, a
/// visible SKIPPED line elsewhere); see `switcher_tests::privilege`.
pub use switcher_tests::privilege::privileged;

/// Runs `cmd`: its success and its stdout and stderr together.
pub fn output(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The shared [`LoadedDatapath`] with the fixtures' services, where any failure fails the
/// test at once.
pub struct TestDatapath {
    pub loaded: LoadedDatapath,
    pub cfg: Config,
}

pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_EDGE: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

impl TestDatapath {
    /// `services` is the `[[service]]` part of a config.
    pub fn new(services: &str) -> Self {
        let mut loaded = LoadedDatapath::load("test").expect("load datapath");
        let cfg = loaded.apply(services).expect("apply services");
        Self { loaded, cfg }
    }

    pub fn dp(&mut self) -> &mut BpfDatapath {
        self.loaded.dp().expect("datapath present")
    }

    pub fn id(&mut self, name: &str) -> u32 {
        self.loaded.id(name).expect("service id")
    }

    /// Runs the XDP program once on `pkt`: (action, output bytes).
    pub fn xdp(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let r = self
            .loaded
            .run(Program::Ingress, pkt, 0)
            .expect("BPF_PROG_TEST_RUN");
        (r.action, r.out)
    }

    /// Runs the TC egress program once on `pkt`: (action, output bytes).
    pub fn tc(&mut self, pkt: &[u8]) -> (i32, Vec<u8>) {
        let r = self
            .loaded
            .run(Program::Egress, pkt, 0)
            .expect("BPF_PROG_TEST_RUN");
        (r.action as i32, r.out)
    }

    pub fn reason(&mut self, r: Reason) -> u64 {
        self.loaded.reason(r).expect("reasons")
    }

    pub fn counters(&mut self, id: u32, c: Color) -> ColorCounters {
        self.loaded.counters(id, c).expect("counters")
    }

    pub fn mark(&mut self, id: u32) -> FlipMark {
        self.loaded.read(id).expect("flip mark").mark
    }
}

pub const XDP_PASS: u32 = 2;
pub const XDP_DROP: u32 = 1;

/// Bytes as lowercase hex, for comparing frames in assertions.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("v4").octets()
}

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
}

pub fn udp4(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_EDGE)
        .ipv4(v4(src), v4(dst), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

pub fn udp6(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_EDGE)
        .ipv6(v6(src), v6(dst), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

/// TCP flags as a string of letters: S(yn) A(ck) F(in) R(st) P(sh).
pub fn tcp4(src: &str, sport: u16, dst: &str, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_EDGE)
        .ipv4(v4(src), v4(dst), 64)
        .tcp(sport, dport, 1000, 64240);
    let b = tcp_flags(b, flags);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

pub fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_EDGE)
        .ipv6(v6(src), v6(dst), 64)
        .tcp(sport, dport, 1000, 64240);
    let b = tcp_flags(b, flags);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build");
    v
}

/// Sets the flags `flags` names (S, A, F, R, P) on a TCP header being built.
pub fn tcp_flags(
    mut b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    flags: &str,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            other => panic!("unknown tcp flag {other}"),
        };
    }
    b
}

/// Inserts 802.1Q/802.1ad tags (outermost first) after the MAC addresses.
pub fn with_vlans(pkt: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut v = pkt[..12].to_vec();
    for (tpid, vid) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&vid.to_be_bytes());
    }
    v.extend_from_slice(&pkt[12..]);
    v
}

/// Adds `opts` (a multiple of 4 bytes) as IPv4 options and fixes IHL, length and checksum.
pub fn with_ipv4_options(pkt: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut v = pkt[..34].to_vec();
    v.extend_from_slice(opts);
    v.extend_from_slice(&pkt[34..]);
    v[14] = 0x40 | ((20 + opts.len()) / 4) as u8;
    let tot = u16::from_be_bytes([v[16], v[17]]) + opts.len() as u16;
    v[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut v, 14);
    v
}

pub fn fix_ipv4_checksum(pkt: &mut [u8], l3: usize) {
    let ihl = (pkt[l3] & 0x0f) as usize * 4;
    let (h, _) = Ipv4Header::from_slice(&pkt[l3..l3 + ihl]).expect("ipv4 header");
    let c = h.calc_header_checksum();
    pkt[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Splits an unfragmented IPv4 packet (no options) into two fragments, the first carrying
/// `first_payload` bytes (a multiple of 8) of the IP payload.
pub fn fragment_v4(pkt: &[u8], first_payload: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_payload % 8, 0);
    let (eth, ip) = pkt.split_at(14);
    let (hdr, payload) = ip.split_at(20);
    let make = |part: &[u8], offset: usize, more: bool| {
        let mut v = eth.to_vec();
        v.extend_from_slice(hdr);
        v.extend_from_slice(part);
        let tot = (20 + part.len()) as u16;
        v[16..18].copy_from_slice(&tot.to_be_bytes());
        v[18..20].copy_from_slice(&id.to_be_bytes());
        let frag = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
        v[20..22].copy_from_slice(&frag.to_be_bytes());
        fix_ipv4_checksum(&mut v, 14);
        v
    };
    (
        make(&payload[..first_payload], 0, true),
        make(&payload[first_payload..], first_payload, false),
    )
}

/// Inserts an IPv6 extension header of `next_hdr_type` right after the fixed header.
/// `body` is the header without its first two bytes (next header, length).
pub fn with_ipv6_ext(pkt: &[u8], ext_type: u8, body: &[u8]) -> Vec<u8> {
    assert_eq!((body.len() + 2) % 8, 0);
    let next = pkt[20];
    let mut v = pkt[..54].to_vec();
    v[20] = ext_type;
    v.push(next);
    v.push(((body.len() + 2) / 8 - 1) as u8);
    v.extend_from_slice(body);
    v.extend_from_slice(&pkt[54..]);
    let plen = u16::from_be_bytes([v[18], v[19]]) + (body.len() + 2) as u16;
    v[18..20].copy_from_slice(&plen.to_be_bytes());
    v
}

/// Splits an unfragmented IPv6 packet into two fragments with a Fragment header each.
pub fn fragment_v6(pkt: &[u8], first_payload: usize, id: u32) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_payload % 8, 0);
    let next = pkt[20];
    let payload = &pkt[54..];
    let make = |part: &[u8], offset: usize, more: bool| {
        let mut v = pkt[..54].to_vec();
        v[20] = 44;
        v.push(next);
        v.push(0);
        let fo = ((offset / 8) as u16) << 3 | more as u16;
        v.extend_from_slice(&fo.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(part);
        let plen = (8 + part.len()) as u16;
        v[18..20].copy_from_slice(&plen.to_be_bytes());
        v
    };
    (
        make(&payload[..first_payload], 0, true),
        make(&payload[first_payload..], first_payload, false),
    )
}

/// Recomputes every checksum of an unfragmented packet with etherparse and compares.
pub fn assert_checksums_valid(pkt: &[u8]) {
    let h = PacketHeaders::from_ethernet_slice(pkt).expect("parse output packet");
    let payload = h.payload.slice();
    match (&h.net, &h.transport) {
        (Some(etherparse::NetHeaders::Ipv4(ip, _)), t) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            match t {
                Some(TransportHeader::Udp(u)) if u.checksum != 0 => assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(ip, payload).expect("udp csum"),
                    "UDP checksum"
                ),
                Some(TransportHeader::Tcp(tcp)) => assert_eq!(
                    tcp.checksum,
                    tcp.calc_checksum_ipv4(ip, payload).expect("tcp csum"),
                    "TCP checksum"
                ),
                _ => {}
            }
        }
        (Some(etherparse::NetHeaders::Ipv6(ip, _)), t) => match t {
            Some(TransportHeader::Udp(u)) => assert_eq!(
                u.checksum,
                u.calc_checksum_ipv6(ip, payload).expect("udp csum"),
                "UDP/IPv6 checksum"
            ),
            Some(TransportHeader::Tcp(tcp)) => assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv6(ip, payload).expect("tcp csum"),
                "TCP/IPv6 checksum"
            ),
            _ => {}
        },
        other => panic!("unexpected headers {other:?}"),
    }
}
