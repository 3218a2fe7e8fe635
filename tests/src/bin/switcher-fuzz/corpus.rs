//! Seed packets, before any mutation: what real clients, backends and routers send. Ingress:
//! UDP and TCP to every service (and to other ports, protocols and addresses), over IPv4 with
//! and without options and IPv6 with and without extension headers, untagged or with one or
//! two VLAN tags, whole or cut into fragments (in order, out of order, repeated). Egress:
//! replies of members to the flows ingress steered, replies nobody asked for, and ICMP errors
//! quoting the packets ingress sent to members, from the member's host or from a router.

use std::{collections::VecDeque, net::SocketAddr};

use crate::{
    rng::Rng,
    wire::{self, Csum, Ext, Ip, TcpSpec, DEST_OPTS, ETH_IP4, ETH_IP6, HOP_BY_HOP, ROUTING},
    world::{addr_bytes, Service, World, CLIENT4, CLIENT6, ROUTER4, ROUTER6},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub dir: Dir,
    pub bytes: Vec<u8>,
    /// Which generator made it (for the summary).
    pub kind: &'static str,
}

/// Packets ingress rewrote lately: egress answers them and quotes them in ICMP errors.
const RECENT: usize = 4096;

pub struct Corpus<'w> {
    world: &'w World,
    rng: Rng,
    egress_percent: u32,
    queue: VecDeque<Case>,
    recent: VecDeque<Vec<u8>>,
}

impl<'w> Corpus<'w> {
    pub fn new(world: &'w World, seed: u64, egress_percent: u32) -> Self {
        Self {
            world,
            rng: Rng::new(seed),
            egress_percent,
            queue: VecDeque::new(),
            recent: VecDeque::new(),
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A packet ingress rewrote: material for replies and ICMP errors.
    pub fn observe(&mut self, rewritten: &[u8]) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(rewritten.to_vec());
    }

    pub fn next_case(&mut self) -> Case {
        if let Some(c) = self.queue.pop_front() {
            return c;
        }
        let egress = !self.recent.is_empty() && self.rng.chance(self.egress_percent);
        if egress {
            match self.rng.weighted(&[50, 15, 35]) {
                0 => self.reply(),
                1 => self.unsolicited_reply(),
                _ => self.icmp_error(),
            }
        } else {
            match self.rng.weighted(&[70, 12, 18]) {
                0 => self.service_packet(),
                1 => self.fragment_train(),
                _ => self.other_traffic(),
            }
        }
    }

    fn tags(&mut self) -> Vec<(u16, u16)> {
        let vid = |r: &mut Rng| r.u16() & 0x0fff;
        match self.rng.weighted(&[65, 22, 13]) {
            0 => vec![],
            1 => {
                let tpid = *self.rng.pick(&[0x8100, 0x8100, 0x88a8]);
                vec![(tpid, vid(&mut self.rng))]
            }
            _ => {
                let outer = *self.rng.pick(&[0x88a8, 0x88a8, 0x8100]);
                vec![(outer, vid(&mut self.rng)), (0x8100, vid(&mut self.rng))]
            }
        }
    }

    fn client(&mut self, v6: bool) -> Vec<u8> {
        let host = self.rng.range(1, 200) as u8;
        if v6 {
            let mut a = CLIENT6.to_vec();
            a.extend([0, host]);
            a
        } else {
            let mut a = CLIENT4.to_vec();
            a.push(host);
            a
        }
    }

    fn csum(&mut self, udp: bool) -> Csum {
        match self.rng.weighted(&[92, 5, 3]) {
            0 => Csum::Valid,
            1 => Csum::Wrong(self.rng.u16() | 1),
            _ if udp => Csum::Zero,
            _ => Csum::Valid,
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = match self.rng.weighted(&[20, 60, 15, 5]) {
            0 => 0,
            1 => self.rng.range(1, 200),
            2 => self.rng.range(200, 900),
            _ => self.rng.range(900, 1300),
        };
        let line = format!(
            "<{}>1 2026-11-24T00:00:{:02}Z client app {} - - fuzz line ",
            self.rng.below(192),
            self.rng.below(60),
            self.rng.u16()
        );
        let mut v: Vec<u8> = line.bytes().cycle().take(len).collect();
        if self.rng.chance(20) {
            v = self.rng.bytes(len);
        }
        v
    }

    /// IPv4 options (at most 40 bytes, padded to a multiple of 4): NOPs, router alert, record
    /// route, timestamp, or bytes.
    fn v4_options(&mut self) -> Vec<u8> {
        let mut o = match self.rng.below(5) {
            0 => vec![0x94, 4, 0, 0],
            1 => {
                let n = self.rng.range(1, 9);
                let mut v = vec![7, (3 + 4 * n) as u8, 4];
                v.extend(vec![0; 4 * n]);
                v
            }
            2 => vec![0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            3 => vec![1; self.rng.range(1, 40)],
            _ => {
                let n = self.rng.range(1, 40);
                self.rng.bytes(n)
            }
        };
        o.truncate(40);
        while o.len() % 4 != 0 {
            o.push(0);
        }
        o
    }

    fn ip(&mut self, src: Vec<u8>, dst: Vec<u8>) -> Ip {
        let mut ip = Ip::new(src, dst);
        ip.ttl = *self.rng.pick(&[64, 64, 255, 2, 1, 0]);
        ip.tos = self.rng.u8();
        ip.id = self.rng.u32();
        ip.df = self.rng.bool();
        if ip.v6() {
            if self.rng.chance(25) {
                if self.rng.chance(60) {
                    let len8 = self.rng.below(3) as u8;
                    ip.unfragmentable.push(Ext::options(HOP_BY_HOP, len8));
                }
                for _ in 0..self.rng.below(3) {
                    let len8 = self.rng.below(4) as u8;
                    ip.fragmentable.push(Ext::options(DEST_OPTS, len8));
                }
                if self.rng.chance(8) {
                    // Routing header type 4, no segments left: the switch must not steer.
                    ip.fragmentable.push(Ext {
                        kind: ROUTING,
                        body: vec![4, 0, 0, 0, 0, 0],
                    });
                }
            }
        } else if self.rng.chance(15) {
            ip.options = self.v4_options();
        }
        ip
    }

    fn tcp_options(&mut self) -> Vec<u8> {
        let mut o = Vec::new();
        if self.rng.bool() {
            o.extend([2, 4, 0x05, 0xb4]);
        }
        if self.rng.bool() {
            o.extend([1, 1, 4, 2]);
        }
        if self.rng.bool() {
            o.extend([1, 1, 8, 10]);
            o.extend(self.rng.bytes(8));
        }
        if self.rng.bool() {
            o.extend([1, 3, 3, 7]);
        }
        o
    }

    fn tcp_flags(&mut self) -> u8 {
        let f = [0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x12, 0x19, 0x01];
        match self.rng.weighted(&[25, 28, 20, 7, 4, 3, 3, 2, 1, 7]) {
            9 => self.rng.u8(),
            i => f[i],
        }
    }

    /// A transport segment from `ip`'s source to its destination.
    fn segment(&mut self, ip: &Ip, tcp: bool, sport: u16, dport: u16) -> Vec<u8> {
        let payload = self.payload();
        self.segment_with(ip, tcp, sport, dport, &payload)
    }

    fn segment_with(
        &mut self,
        ip: &Ip,
        tcp: bool,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        if tcp {
            let opts = self.tcp_options();
            let spec = TcpSpec {
                sport,
                dport,
                seq: self.rng.u32(),
                ack: self.rng.u32(),
                flags: self.tcp_flags(),
                window: self.rng.u16(),
                options: &opts,
                payload,
            };
            let mode = self.csum(false);
            wire::tcp(ip, &spec, mode)
        } else {
            let mode = self.csum(true);
            wire::udp(ip, sport, dport, payload, mode)
        }
    }

    fn frame(&mut self, tags: &[(u16, u16)], v6: bool, ip_packet: &[u8]) -> Vec<u8> {
        let mut v = wire::ethernet(tags, if v6 { ETH_IP6 } else { ETH_IP4 });
        v.extend(ip_packet);
        // What a NIC delivers: short frames padded to 60 bytes; now and then other trailers.
        if v.len() < 60 && self.rng.chance(50) {
            v.resize(60, 0);
        }
        if self.rng.chance(4) {
            let n = self.rng.range(1, 24);
            v.extend(self.rng.bytes(n));
        }
        v
    }

    fn service(&mut self) -> Service {
        self.rng.pick(&self.world.services).clone()
    }

    fn client_port(&mut self) -> u16 {
        32768 + self.rng.below(256) as u16
    }

    /// UDP or TCP to a service's VIP and port.
    fn service_packet(&mut self) -> Case {
        let s = self.service();
        let v6 = s.vip.is_ipv6();
        let src = self.client(v6);
        let ip = self.ip(src, s.vip_bytes());
        let sport = self.client_port();
        let seg = self.segment(&ip, s.tcp, sport, s.port);
        let proto = s.proto();
        let tags = self.tags();
        let bytes = self.frame(&tags, v6, &wire::ip_packet(&ip, proto, &seg));
        Case {
            dir: Dir::Ingress,
            bytes,
            kind: "service",
        }
    }

    /// A datagram to a service cut into fragments, queued in order, reversed, or with one
    /// fragment repeated. IPv6 fragments may carry destination options after the Fragment
    /// header (then the datagram is named by that header's type).
    fn fragment_train(&mut self) -> Case {
        let s = self.service();
        let v6 = s.vip.is_ipv6();
        let src = self.client(v6);
        let mut ip = self.ip(src, s.vip_bytes());
        ip.fragmentable.retain(|e| e.kind != ROUTING);
        ip.df = false;
        let sport = self.client_port();
        // Long enough for two fragments at least.
        let mut payload = self.payload();
        if payload.len() < 64 {
            payload.resize(64 + self.rng.below(200), b'.');
        }
        let seg = self.segment_with(&ip, s.tcp, sport, s.port, &payload);
        let n = self.rng.range(2, 4);
        let sizes: Vec<usize> = (0..n)
            .map(|_| 8 * self.rng.range(1, (seg.len() / 8 / n).max(1)))
            .collect();
        let tags = self.tags();
        let mut frames: Vec<Vec<u8>> = wire::fragments(&ip, s.proto(), &seg, &sizes)
            .into_iter()
            .map(|f| self.frame(&tags, v6, &f))
            .collect();
        match self.rng.weighted(&[75, 12, 13]) {
            0 => {}
            1 => frames.reverse(),
            _ => {
                let i = self.rng.below(frames.len());
                let again = frames[i].clone();
                frames.push(again);
            }
        }
        let mut cases = frames.into_iter().map(|bytes| Case {
            dir: Dir::Ingress,
            bytes,
            kind: "fragment",
        });
        let first = cases.next().expect("at least one fragment");
        self.queue.extend(cases);
        first
    }

    /// Traffic that is no service's: other ports, protocols, addresses; ICMP; ARP; other
    /// ethertypes.
    fn other_traffic(&mut self) -> Case {
        let s = self.service();
        let v6 = s.vip.is_ipv6();
        let src = self.client(v6);
        let tags = self.tags();
        let kind = self.rng.below(6);
        let bytes = match kind {
            0..=2 => {
                let mut dst = s.vip_bytes();
                let mut port = s.port;
                let mut tcp = s.tcp;
                match kind {
                    0 => port = port.wrapping_add(1 + self.rng.below(5) as u16),
                    1 => tcp = !tcp,
                    _ => *dst.last_mut().expect("address") ^= 1 + self.rng.u8() % 7,
                }
                let ip = self.ip(src, dst);
                let sport = self.client_port();
                let seg = self.segment(&ip, tcp, sport, port);
                let proto = if tcp { wire::TCP } else { wire::UDP };
                self.frame(&tags, v6, &wire::ip_packet(&ip, proto, &seg))
            }
            3 => {
                let ip = self.ip(src, s.vip_bytes());
                let (ty, proto) = if v6 {
                    (128, wire::ICMP6)
                } else {
                    (8, wire::ICMP4)
                };
                let msg = wire::icmp(&ip, ty, 0, [0, 1, 0, 1], b"ping");
                self.frame(&tags, v6, &wire::ip_packet(&ip, proto, &msg))
            }
            4 => {
                let mut v = wire::ethernet(&tags, 0x0806);
                v.extend([0, 1, 8, 0, 6, 4, 0, 1]);
                v.extend(wire::MAC_CLIENT);
                v.extend([198, 18, 0, 1, 0, 0, 0, 0, 0, 0]);
                v.extend([198, 18, 10, 10]);
                v
            }
            _ => {
                let ethertype = *self.rng.pick(&[0x88cc, 0x8847, 0x88e5, 0x9100, 0x0000]);
                let mut v = wire::ethernet(&tags, ethertype);
                let n = self.rng.range(20, 100);
                v.extend(self.rng.bytes(n));
                v
            }
        };
        Case {
            dir: Dir::Ingress,
            bytes,
            kind: "other",
        }
    }

    /// A recent rewritten packet: (IP packet bytes, its layout in the frame).
    fn recent_sent(&mut self) -> Option<(Vec<u8>, wire::Layout)> {
        let i = self.rng.below(self.recent.len());
        let p = self.recent[i].clone();
        let lay = wire::layout(&p)?;
        Some((p, lay))
    }

    /// A member's reply to a flow ingress steered to it.
    fn reply(&mut self) -> Case {
        let Some((sent, lay)) = self.recent_sent() else {
            return self.unsolicited_reply();
        };
        let Some((l4, proto)) = lay
            .l4
            .filter(|(l4, p)| (*p == wire::TCP || *p == wire::UDP) && l4 + 4 <= lay.ip_end)
        else {
            return self.unsolicited_reply();
        };
        let alen = if lay.v6 { 16 } else { 4 };
        let (src_at, dst_at) = if lay.v6 {
            (lay.l3 + 8, lay.l3 + 24)
        } else {
            (lay.l3 + 12, lay.l3 + 16)
        };
        let client = sent[src_at..src_at + alen].to_vec();
        let member = sent[dst_at..dst_at + alen].to_vec();
        let cport = wire::get16(&sent, l4).unwrap_or(0);
        let mport = wire::get16(&sent, l4 + 2).unwrap_or(0);
        let bytes = self.reply_frame(member, mport, client, cport, proto == wire::TCP);
        Case {
            dir: Dir::Egress,
            bytes,
            kind: "reply",
        }
    }

    /// A member's packet to a client it was never steered from (or from elsewhere).
    fn unsolicited_reply(&mut self) -> Case {
        let s = self.service();
        let color = self.rng.below(2);
        let members = &s.members[color];
        let member: SocketAddr = if members.is_empty() {
            s.members[color ^ 1][0]
        } else {
            *self.rng.pick(members)
        };
        let client = self.client(s.vip.is_ipv6());
        let cport = self.client_port();
        let bytes = self.reply_frame(addr_bytes(member.ip()), member.port(), client, cport, s.tcp);
        Case {
            dir: Dir::Egress,
            bytes,
            kind: "unsolicited",
        }
    }

    fn reply_frame(
        &mut self,
        src: Vec<u8>,
        sport: u16,
        dst: Vec<u8>,
        dport: u16,
        tcp: bool,
    ) -> Vec<u8> {
        let v6 = src.len() == 16;
        let mut ip = self.ip(src, dst);
        ip.fragmentable.retain(|e| e.kind != ROUTING);
        let seg = if tcp {
            let payload = if self.rng.chance(30) {
                b"ok\n".to_vec()
            } else {
                vec![]
            };
            let flags = *self.rng.pick(&[0x10, 0x10, 0x18, 0x12, 0x14, 0x04, 0x11]);
            let spec = TcpSpec {
                sport,
                dport,
                seq: self.rng.u32(),
                ack: self.rng.u32(),
                flags,
                window: 65535,
                options: &[],
                payload: &payload,
            };
            let mode = self.csum(false);
            wire::tcp(&ip, &spec, mode)
        } else {
            let mode = self.csum(true);
            wire::udp(&ip, sport, dport, b"ack\n", mode)
        };
        let proto = if tcp { wire::TCP } else { wire::UDP };
        let tags = self.tags();
        self.frame(&tags, v6, &wire::ip_packet(&ip, proto, &seg))
    }

    /// An ICMP error about a packet ingress sent to a member: from the member's host or from
    /// a router on the way; unreachable, time exceeded, too big, and types that are no error.
    fn icmp_error(&mut self) -> Case {
        let Some((sent, lay)) = self.recent_sent() else {
            return self.unsolicited_reply();
        };
        let alen = if lay.v6 { 16 } else { 4 };
        let (src_at, dst_at) = if lay.v6 {
            (lay.l3 + 8, lay.l3 + 24)
        } else {
            (lay.l3 + 12, lay.l3 + 16)
        };
        let client = sent[src_at..src_at + alen].to_vec();
        let member = sent[dst_at..dst_at + alen].to_vec();
        let from_member = self.rng.chance(65);
        let src = if from_member {
            member
        } else if lay.v6 {
            ROUTER6.to_vec()
        } else {
            ROUTER4.to_vec()
        };
        let mut quote = sent[lay.l3..lay.ip_end].to_vec();
        let header = lay.l4.map_or(lay.ip_end, |(l4, _)| l4) - lay.l3;
        let keep = match self.rng.weighted(&[40, 30, 30]) {
            // The minimum RFC 792 quotes: the IP header and 8 bytes.
            0 => header + 8,
            1 => quote.len(),
            _ => self
                .rng
                .range(header.saturating_sub(4).min(quote.len()), quote.len()),
        };
        quote.truncate(keep.min(if lay.v6 { 1232 } else { 548 }));
        let (ty, code) = if lay.v6 {
            *self
                .rng
                .pick(&[(1, 4), (1, 1), (1, 0), (2, 0), (3, 0), (128, 0), (4, 0)])
        } else {
            *self
                .rng
                .pick(&[(3, 3), (3, 1), (3, 4), (3, 13), (11, 0), (0, 0), (5, 1)])
        };
        let rest = if ty == 2 || (ty == 3 && code == 4 && !lay.v6) {
            [0, 0, 0x05, 0xdc]
        } else {
            [0; 4]
        };
        let mut ip = self.ip(src, client);
        ip.fragmentable.retain(|e| e.kind != ROUTING);
        let msg = wire::icmp(&ip, ty, code, rest, &quote);
        let proto = if lay.v6 { wire::ICMP6 } else { wire::ICMP4 };
        let tags = self.tags();
        let bytes = self.frame(&tags, lay.v6, &wire::ip_packet(&ip, proto, &msg));
        Case {
            dir: Dir::Egress,
            bytes,
            kind: "icmp",
        }
    }
}
