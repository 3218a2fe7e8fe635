//! The judge: an independent reading of every input (etherparse's header slices, RFC rules and
//! the datapath's documented limits, our own RFC 1071 code; nothing from switcher-common) and
//! a check of what the program made of it.
//!
//! A program's output must be byte-identical to its input, or exactly the input with
//! - ingress: the destination address (and port, when the transport header is there) replaced
//!   by a member of the service's pool;
//! - egress: a reply's source address and port replaced by the VIP and port its client talked
//!   to, or, in an ICMP error about a packet the switch sent to a member, the quoted
//!   destination (and the outer source when the member's host sent the error) replaced by the
//!   VIP;
//!
//! with every other byte equal except the checksums that cover what changed. Those must keep
//! their residual (the ones'-complement sum of what they cover, themselves included): a valid
//! checksum stays valid (and equals a from-scratch computation), a wrong one stays wrong by
//! the same amount; a zero UDP checksum over IPv4 stays zero, a non-zero one never becomes
//! zero.
//!
//! Which packets may be rewritten at all is decided by the reading alone: nothing malformed,
//! no length that lies, nothing that is not a service's, nothing the README says is passed
//! (routing headers, IPv6 UDP without checksum). Sound packets to a service *must* be
//! rewritten, except where the datapath's documented limits let it pass them (more than three
//! IPv6 extension headers, an L4 offset past 512, a UDP length shorter than the IP payload,
//! later fragments whose first fragment may have aged out or been evicted).
//!
//! Colour: the fuzz never flips, sets no canary and starts from empty tables, so every
//! decision the datapath can legitimately make (per packet, by a TCP or affinity entry, by
//! the drain rule) lands on the active colour. The oracle therefore accepts only the active
//! colour's members, for TCP and UDP alike: accepting the idle colour would hide a datapath
//! that sends some flows there.
//!
//! Known issues: a rewrite the RFC reading refuses is read again with exactly the rules the
//! datapath is known to break relaxed ([`Mode::AsDatapath`]); if it is right then, it is that
//! known issue ([`Verdict::Known`]) and nothing else. Once a fix lands, its relaxation goes.

mod check;
mod read;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use etherparse::{Icmpv4Slice, Icmpv6Slice};

use crate::{
    wire::{ICMP4, ICMP6, TCP, UDP},
    world::{ip_from, World},
};
use check::{check_bytes, check_sums, Change, Cover, Sum};
use read::{be16, read_transport, Transport, Why};
pub use read::{read_ip, Frag, IpView};

pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
/// Flows and fragments remembered for egress and later-fragment checks; past this the maps
/// are forgotten and unknown flows are given the benefit of the doubt (memory stays bounded).
const MEMORY: usize = 2_000_000;

/// How the oracle reads a packet. `Rfc` is the judgement. `AsDatapath` relaxes exactly the
/// rules the datapath is known to break (see [`Verdict::Known`]), to tell a known issue from a
/// new one: a rewrite that fails the RFC reading but is right under the relaxed one is that
/// known issue and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Rfc,
    AsDatapath,
}

/// A judgement of one run.
#[derive(Debug)]
pub enum Verdict {
    Ok(Outcome),
    /// Wrong by the RFC reading, but exactly what a known datapath issue (named) does.
    Known(&'static str),
    Violation(String),
}

/// The issues this fuzz found, each fixed since (four in switcher-common/src/parse.rs, one in
/// egress.rs). The oracle still recognises them, so a regression is named by what it is.
pub const KNOWN_HOP_BY_HOP: &str =
    "parse: a hop-by-hop header after another extension header is skipped, not refused";
pub const KNOWN_TWO_FRAGMENT_HEADERS: &str =
    "parse: with two Fragment headers the last one decides";
pub const KNOWN_EXT_PAST_PAYLOAD: &str =
    "parse: IPv6 extension headers are read past the payload length (a later fragment is then steered)";
pub const KNOWN_FIRST_FRAGMENT_UDP_LENGTH: &str =
    "parse: a first fragment's UDP length may be shorter than its own UDP bytes";
pub const KNOWN_ICMP_QUOTE_PAST_IP_END: &str =
    "egress: an ICMP error's quote is read and patched up to the frame's end, past the IP packet";

/// Where a flow was steered: the client's 5-tuple towards the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowId {
    proto: u8,
    client: IpAddr,
    cport: u16,
    vip: IpAddr,
    vport: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FragId {
    src: Vec<u8>,
    dst: Vec<u8>,
    id: u32,
    proto: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Untouched,
    Rewritten,
}

/// What the oracle remembers across packets and counts.
pub struct Oracle<'w> {
    world: &'w World,
    flows: HashMap<FlowId, SocketAddr>,
    frags: HashMap<FragId, IpAddr>,
    /// The maps were cleared once (see [`MEMORY`]): unknown flows and fragments are allowed.
    forgotten: bool,
    pub must_rewrite: u64,
    pub may_rewrite: u64,
    pub must_pass: u64,
}

impl<'w> Oracle<'w> {
    pub fn new(world: &'w World) -> Self {
        Self {
            world,
            flows: HashMap::new(),
            frags: HashMap::new(),
            forgotten: false,
            must_rewrite: 0,
            may_rewrite: 0,
            must_pass: 0,
        }
    }

    fn remember(&mut self) {
        if self.flows.len() > MEMORY || self.frags.len() > MEMORY {
            self.flows.clear();
            self.frags.clear();
            self.forgotten = true;
        }
    }

    fn count(&mut self, expect: Result<bool, Why>) {
        match expect {
            Ok(true) => self.must_rewrite += 1,
            Ok(false) => self.may_rewrite += 1,
            Err(_) => self.must_pass += 1,
        }
    }

    /// Judges one XDP run.
    pub fn ingress(&mut self, inp: &[u8], out: &[u8], action: u32) -> Verdict {
        if action != XDP_PASS {
            return Verdict::Violation(format!("XDP action {action}, want XDP_PASS ({XDP_PASS})"));
        }
        let plan = self.ingress_plan(inp, Mode::Rfc);
        self.count(plan.as_ref().map(|p| p.must).map_err(|why| *why));
        let violation = match self.judge_ingress(&plan, inp, out) {
            Ok(None) => return Verdict::Ok(Outcome::Untouched),
            Ok(Some(to)) => {
                if let Ok(plan) = &plan {
                    self.record(plan, inp, to);
                }
                return Verdict::Ok(Outcome::Rewritten);
            }
            Err(v) => v,
        };
        // Wrong by the RFC reading: is it exactly a known issue?
        let relaxed = self.ingress_plan(inp, Mode::AsDatapath);
        let second = self.judge_ingress(&relaxed, inp, out);
        if let (Ok(r), Ok(Some(to))) = (&relaxed, &second) {
            if let Some(known) = r.ip.relaxed {
                self.record(r, inp, *to);
                return Verdict::Known(known);
            }
        }
        Verdict::Violation(explain(
            violation,
            &relaxed.map(|r| r.ip.relaxed),
            second.err(),
        ))
    }

    /// `Ok(None)`: rightly untouched; `Ok(Some(member))`: rightly rewritten to `member`.
    fn judge_ingress(
        &self,
        plan: &Result<Plan, Why>,
        inp: &[u8],
        out: &[u8],
    ) -> Result<Option<SocketAddr>, String> {
        if out == inp {
            return match plan {
                Ok(p) if p.must => Err(format!(
                    "a sound packet to service {} passed untouched",
                    p.service
                )),
                _ => Ok(None),
            };
        }
        let plan = plan
            .as_ref()
            .map_err(|why| format!("rewritten, but it must pass untouched: {why}"))?;
        if out.len() != inp.len() {
            return Err(format!("output {} bytes, input {}", out.len(), inp.len()));
        }
        // The member the program chose: read from the output, then checked against the pool.
        let ip = &plan.ip;
        let to = ip_from(ip.dst(out)).ok_or("address length")?;
        let member_port = match plan.transport {
            Some(_) => be16(out, ip.l4 + 2),
            None => 0,
        };
        match &plan.target {
            Target::Pool(members) => {
                if !members
                    .iter()
                    .any(|m| m.ip() == to && m.port() == member_port)
                {
                    return Err(format!(
                        "rewritten to {}, not a member of {}'s active pool {members:?}",
                        SocketAddr::new(to, member_port),
                        plan.service
                    ));
                }
            }
            Target::Fragment(Some(addr)) => {
                if *addr != to {
                    return Err(format!(
                        "later fragment rewritten to {to}, its first fragment went to {addr}"
                    ));
                }
            }
            Target::Fragment(None) if self.forgotten => {}
            Target::Fragment(None) => {
                return Err(
                    "later fragment rewritten, but no first fragment of its datagram was".into(),
                )
            }
        }
        let mut changes = vec![Change {
            at: ip.dst_at,
            bytes: crate::world::addr_bytes(to),
            what: "destination address",
        }];
        let mut sums: Vec<Sum> = ipv4_header_sum(ip).into_iter().collect();
        if let Some(t) = plan.transport {
            changes.push(Change {
                at: ip.l4 + 2,
                bytes: member_port.to_be_bytes().to_vec(),
                what: "destination port",
            });
            let what = if ip.proto == TCP {
                "TCP checksum"
            } else {
                "UDP checksum"
            };
            sums.push(transport_sum(ip, t.csum_at, what));
        }
        check_bytes(inp, out, &changes, &sums)?;
        check_sums(inp, out, &sums)?;
        Ok(Some(SocketAddr::new(to, member_port)))
    }

    /// Remembers what egress replies and later fragments may refer to.
    fn record(&mut self, plan: &Plan, inp: &[u8], to: SocketAddr) {
        self.remember();
        let ip = &plan.ip;
        if let (Some(t), Some(client), Some(vip)) =
            (plan.transport, ip_from(ip.src(inp)), ip_from(ip.dst(inp)))
        {
            self.flows.insert(
                FlowId {
                    proto: ip.proto,
                    client,
                    cport: t.sport,
                    vip,
                    vport: t.dport,
                },
                to,
            );
        }
        if let Frag::First(id) = ip.frag {
            self.frags.insert(
                FragId {
                    src: ip.src(inp).to_vec(),
                    dst: ip.dst(inp).to_vec(),
                    id,
                    proto: ip.frag_proto,
                },
                to.ip(),
            );
        }
    }

    fn ingress_plan(&self, p: &[u8], mode: Mode) -> Result<Plan, Why> {
        let mut ip = read_ip(p, mode)?;
        if let Frag::Later(id) = ip.frag {
            // Keyed like the datapath's table: IPv6 names the datagram by the Fragment
            // header's next header, which may be a destination options header.
            let key = FragId {
                src: ip.src(p).to_vec(),
                dst: ip.dst(p).to_vec(),
                id,
                proto: ip.frag_proto,
            };
            let target = self.frags.get(&key).copied();
            if target.is_none() && !self.forgotten {
                return Err("a later fragment whose first fragment was not steered");
            }
            return Ok(Plan {
                ip,
                transport: None,
                service: "(the first fragment's)".into(),
                target: Target::Fragment(target),
                // Its first fragment's entry may have aged out (30 s) or been evicted.
                must: false,
            });
        }
        let t = read_transport(p, &mut ip, mode)?;
        let dst = ip_from(ip.dst(p)).ok_or("address length")?;
        let s = self
            .world
            .service(dst, t.dport, ip.proto)
            .ok_or("no service at this address, port and protocol")?;
        Ok(Plan {
            must: ip.may_pass.is_none(),
            ip,
            transport: Some(t),
            service: s.name.clone(),
            target: Target::Pool(s.active_members().to_vec()),
        })
    }

    /// Judges one TC run.
    pub fn egress(&mut self, inp: &[u8], out: &[u8], action: u32) -> Verdict {
        if action != TC_ACT_OK {
            return Verdict::Violation(format!("TC action {action}, want TC_ACT_OK"));
        }
        let plan = self.egress_plan(inp, Mode::Rfc);
        self.count(plan.as_ref().map(|p| p.must).map_err(|why| *why));
        let violation = match judge_egress(&plan, inp, out) {
            Ok(o) => return Verdict::Ok(o),
            Err(v) => v,
        };
        let relaxed = self.egress_plan(inp, Mode::AsDatapath);
        let second = judge_egress(&relaxed, inp, out);
        if let (Ok(r), Ok(Outcome::Rewritten)) = (&relaxed, &second) {
            if let Some(known) = r.relaxed {
                return Verdict::Known(known);
            }
        }
        Verdict::Violation(explain(
            violation,
            &relaxed.map(|r| r.relaxed),
            second.err(),
        ))
    }

    fn egress_plan(&self, p: &[u8], mode: Mode) -> Result<EgressPlan, Why> {
        let mut ip = read_ip(p, mode)?;
        if let Frag::Later(_) = ip.frag {
            return Err("a later fragment (egress translates no fragment but the first)");
        }
        let first = matches!(ip.frag, Frag::First(_));
        if ip.proto == if ip.v6 { ICMP6 } else { ICMP4 } {
            let mut plan = self.icmp_plan(p, &ip, mode)?;
            plan.must &= !first;
            return Ok(plan);
        }
        let t = read_transport(p, &mut ip, mode)?;
        let src = SocketAddr::new(ip_from(ip.src(p)).ok_or("address length")?, t.sport);
        let (s, _) = self
            .world
            .member_of(src, ip.proto)
            .ok_or("not from a member of any service")?;
        let client = ip_from(ip.dst(p)).ok_or("address length")?;
        if s.vip.is_ipv4() != client.is_ipv4() {
            return Err("family differs from the service's");
        }
        let flow = FlowId {
            proto: ip.proto,
            client,
            cport: t.dport,
            vip: s.vip,
            vport: s.port,
        };
        if !s.stateless() {
            match self.flows.get(&flow) {
                Some(m) if *m == src => {}
                Some(_) => return Err("a reply from a member its flow was not steered to"),
                None if self.forgotten => {}
                None => return Err("a reply to a flow the switch never steered"),
            }
        }
        let mut sums: Vec<Sum> = ipv4_header_sum(&ip).into_iter().collect();
        sums.push(transport_sum(&ip, t.csum_at, "transport checksum"));
        Ok(EgressPlan {
            must: s.stateless() && ip.may_pass.is_none() && !first,
            relaxed: ip.relaxed,
            service: s.name.clone(),
            changes: vec![
                Change {
                    at: ip.src_at,
                    bytes: s.vip_bytes(),
                    what: "source address",
                },
                Change {
                    at: ip.l4,
                    bytes: s.port.to_be_bytes().to_vec(),
                    what: "source port",
                },
            ],
            sums,
        })
    }

    /// An ICMP error leaving towards a client, about a packet the switch sent to a member.
    fn icmp_plan(&self, p: &[u8], ip: &IpView, mode: Mode) -> Result<EgressPlan, Why> {
        // The message ends with the IP packet; the datapath reads it up to the frame's end.
        let end = match mode {
            Mode::Rfc => ip.ip_end,
            Mode::AsDatapath => p.len(),
        };
        let msg = &p[ip.l4.min(end)..end];
        let ty = if ip.v6 {
            Icmpv6Slice::from_slice(msg).map_err(|_| "ICMPv6 message cut")?;
            msg[0]
        } else {
            Icmpv4Slice::from_slice(msg).map_err(|_| "ICMP message cut")?;
            msg[0]
        };
        let translated = if ip.v6 {
            [1, 2, 3].contains(&ty)
        } else {
            [3, 11].contains(&ty)
        };
        if !translated {
            return Err("not an ICMP error type the switch translates");
        }
        let q = ip.l4 + 8;
        let (alen, qsrc, qdst, qproto, ql4, qcsum) = if ip.v6 {
            if q + 40 > end {
                return Err("quoted IPv6 header cut");
            }
            (16, q + 8, q + 24, p[q + 6], q + 40, None)
        } else {
            if q + 20 > end {
                return Err("quoted IPv4 header cut");
            }
            let qihl = (p[q] as usize & 0x0f) * 4;
            if !(20..=60).contains(&qihl) {
                return Err("quoted IPv4 header length out of range");
            }
            (
                4,
                q + 12,
                q + 16,
                p[q + 9],
                q + qihl,
                Some((q + 10, q + qihl)),
            )
        };
        if ql4 + 4 > end {
            return Err("quoted ports past the end of the IP packet");
        }
        let member = SocketAddr::new(
            ip_from(&p[qdst..qdst + alen]).ok_or("len")?,
            be16(p, ql4 + 2),
        );
        let (s, _) = self
            .world
            .member_of(member, qproto)
            .ok_or("the quoted packet was not sent to a member")?;
        if s.vip.is_ipv4() == ip.v6 {
            return Err("family differs from the service's");
        }
        let client = ip_from(&p[qsrc..qsrc + alen]).ok_or("len")?;
        let flow = FlowId {
            proto: qproto,
            client,
            cport: be16(p, ql4),
            vip: s.vip,
            vport: s.port,
        };
        if !s.stateless() {
            match self.flows.get(&flow) {
                Some(m) if *m == member => {}
                Some(_) => return Err("an error about a member its flow was not steered to"),
                None if self.forgotten => {}
                None => return Err("an error about a flow the switch never steered"),
            }
        }
        let from_member = p[ip.src_at..ip.src_at + alen] == p[qdst..qdst + alen];
        let mut changes = vec![
            Change {
                at: qdst,
                bytes: s.vip_bytes(),
                what: "quoted destination address",
            },
            Change {
                at: ql4 + 2,
                bytes: s.port.to_be_bytes().to_vec(),
                what: "quoted destination port",
            },
        ];
        if from_member {
            changes.push(Change {
                at: ip.src_at,
                bytes: s.vip_bytes(),
                what: "source address (the member's host sent the error)",
            });
        }
        let mut sums = vec![Sum {
            at: ip.l4 + 2,
            what: "ICMP checksum",
            udp: false,
            whole: ip.frag == Frag::None,
            cover: if ip.v6 {
                Cover::Pseudo {
                    src: ip.src_at,
                    dst: ip.dst_at,
                    alen,
                    proto: ICMP6,
                    from: ip.l4,
                    to: end,
                }
            } else {
                Cover::Bytes(ip.l4, end)
            },
        }];
        if !ip.v6 && from_member {
            sums.push(Sum {
                at: ip.l3 + 10,
                what: "IPv4 header checksum",
                udp: false,
                whole: true,
                cover: Cover::Bytes(ip.l3, ip.l3 + ip.ihl),
            });
        }
        if let Some((at, qend)) = qcsum {
            sums.push(Sum {
                at,
                what: "quoted IPv4 header checksum",
                udp: false,
                whole: false,
                cover: Cover::Bytes(q, qend.min(end)),
            });
        }
        let qsum_at = ql4 + if qproto == TCP { 16 } else { 6 };
        if qsum_at + 2 <= end {
            sums.push(Sum {
                at: qsum_at,
                what: "quoted transport checksum",
                udp: qproto == UDP,
                whole: false,
                cover: Cover::Quoted {
                    src: qsrc,
                    dst: qdst,
                    alen,
                    proto: qproto,
                    ports: ql4,
                },
            });
        }
        let past_ip_end = ql4 + 4 > ip.ip_end || (qsum_at + 2 <= end && qsum_at + 2 > ip.ip_end);
        Ok(EgressPlan {
            must: s.stateless() && ip.may_pass.is_none(),
            relaxed: if past_ip_end {
                Some(KNOWN_ICMP_QUOTE_PAST_IP_END)
            } else {
                ip.relaxed
            },
            service: s.name.clone(),
            changes,
            sums,
        })
    }
}

enum Target {
    /// The active colour's members.
    Pool(Vec<SocketAddr>),
    /// The member address the datagram's first fragment went to (None: forgotten).
    Fragment(Option<IpAddr>),
}

struct Plan {
    ip: IpView,
    transport: Option<Transport>,
    service: String,
    target: Target,
    /// Sound and to a service: the datapath must rewrite it.
    must: bool,
}

struct EgressPlan {
    must: bool,
    /// Which known issue [`Mode::AsDatapath`] relaxed a rule for, if any.
    relaxed: Option<&'static str>,
    service: String,
    changes: Vec<Change>,
    sums: Vec<Sum>,
}

/// A violation, and why it is not one of the known issues either.
/// The IPv4 header checksum a rewrite of `ip`'s addresses must keep valid (none for IPv6).
fn ipv4_header_sum(ip: &IpView) -> Option<Sum> {
    (!ip.v6).then(|| Sum {
        at: ip.l3 + 10,
        what: "IPv4 header checksum",
        udp: false,
        whole: true,
        cover: Cover::Bytes(ip.l3, ip.l3 + ip.ihl),
    })
}

/// The TCP or UDP checksum at `at`, over the pseudo-header and the rest of the IP payload.
fn transport_sum(ip: &IpView, at: usize, what: &'static str) -> Sum {
    Sum {
        at,
        what,
        udp: ip.proto == UDP,
        whole: ip.frag == Frag::None,
        cover: Cover::Pseudo {
            src: ip.src_at,
            dst: ip.dst_at,
            alen: ip.addr_len(),
            proto: ip.proto,
            from: ip.l4,
            to: ip.ip_end,
        },
    }
}

fn explain(
    violation: String,
    relaxed: &Result<Option<&'static str>, Why>,
    second: Option<String>,
) -> String {
    let known = match (relaxed, second) {
        (Err(why), _) => format!("no known issue explains it ({why})"),
        (Ok(None), _) => "no known issue applies".to_string(),
        (Ok(Some(k)), Some(e)) => format!("not the known issue \"{k}\" either: {e}"),
        (Ok(Some(k)), None) => format!("the known issue \"{k}\" would leave it untouched"),
    };
    format!("{violation}\n  ({known})")
}

fn judge_egress(plan: &Result<EgressPlan, Why>, inp: &[u8], out: &[u8]) -> Result<Outcome, String> {
    if out == inp {
        return match plan {
            Ok(p) if p.must => Err(format!(
                "a reply of {}'s member to a steered flow left untranslated",
                p.service
            )),
            _ => Ok(Outcome::Untouched),
        };
    }
    let plan = plan
        .as_ref()
        .map_err(|why| format!("translated, but it must leave untouched: {why}"))?;
    if out.len() != inp.len() {
        return Err(format!("output {} bytes, input {}", out.len(), inp.len()));
    }
    check_bytes(inp, out, &plan.changes, &plan.sums)?;
    check_sums(inp, out, &plan.sums)?;
    Ok(Outcome::Rewritten)
}
