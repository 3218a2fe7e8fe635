//! Frames with chosen MAC addresses and TTL / hop limit, built by etherparse (which computes
//! every checksum from scratch): the expected output of a redirect has the FIB's MACs and a
//! decremented TTL, and the fallback fixtures need TTLs other than 64.

use etherparse::PacketBuilder;

use super::{tcp_flags, v4, v6, MAC_CLIENT, MAC_EDGE};

/// The Ethernet addresses and the TTL (hop limit) a frame is built with.
#[derive(Clone, Copy, Debug)]
pub struct Wire {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ttl: u8,
}

impl Wire {
    /// As a client sends to the edge: what the `support::udp4` family builds.
    pub const CLIENT: Wire = Wire {
        src_mac: MAC_CLIENT,
        dst_mac: MAC_EDGE,
        ttl: 64,
    };

    pub fn ttl(self, ttl: u8) -> Self {
        Self { ttl, ..self }
    }

    pub fn udp4(self, src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(v4(src), v4(dst), self.ttl)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, payload).expect("build udp4");
        v
    }

    pub fn udp6(self, src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv6(v6(src), v6(dst), self.ttl)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, payload).expect("build udp6");
        v
    }

    /// TCP with flags given as letters: S(yn) A(ck) F(in) R(st) P(sh).
    pub fn tcp4(self, src: &str, sport: u16, dst: &str, dport: u16, flags: &str) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(v4(src), v4(dst), self.ttl)
            .tcp(sport, dport, 1000, 64240);
        let mut v = Vec::new();
        tcp_flags(b, flags).write(&mut v, b"").expect("build tcp4");
        v
    }

    pub fn tcp6(self, src: &str, sport: u16, dst: &str, dport: u16, flags: &str) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv6(v6(src), v6(dst), self.ttl)
            .tcp(sport, dport, 1000, 64240);
        let mut v = Vec::new();
        tcp_flags(b, flags).write(&mut v, b"").expect("build tcp6");
        v
    }
}
