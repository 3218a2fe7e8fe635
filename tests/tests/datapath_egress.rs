//! The TC egress program attached for real, for what BPF_PROG_TEST_RUN cannot show: a reply
//! generated on the host itself, which leaves a veth with CHECKSUM_PARTIAL. Such a packet's L4
//! checksum field holds only the pseudo-header sum; the device (or `skb_checksum_help`) sums the
//! segment later. The README says egress uses the kernel's checksum helpers because they handle
//! this: an address change (pseudo-header, `BPF_F_PSEUDO_HDR`) must be folded into the field,
//! a port change must not (the port is summed with the segment later).
//!
//! BPF_PROG_TEST_RUN cannot produce that case: its skb never has a partial checksum, and the
//! `__sk_buff` context it accepts has no `ip_summed`, `csum_start` or `csum_offset` to ask for
//! one. A test run therefore cannot tell the two helper flags apart (without CHECKSUM_PARTIAL
//! both fold every change into the field); `datapath_fixtures` covers the complete-checksum case.
//!
//! So here the programs are attached (TCX egress) to a veth in a private namespace, a real UDP
//! socket and a real TCP listener on the backend address answer, and a packet socket on the same
//! veth captures each reply as it leaves, after the program, with the kernel's
//! TP_STATUS_CSUMNOTREADY flag (CHECKSUM_PARTIAL). The test then completes the checksum the way
//! the device would and checks the result against etherparse's from-scratch checksum. Needs root.
//! Nothing leaves the namespace: the veth's peer is in it too, and forwards nothing.

mod support;

use std::mem::{size_of, size_of_val, zeroed};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use support::netns::Netns;
use support::packets::Wire;
use support::*;
use switcher::domain::XdpMode;

const SERVICES: &str = r#"
[[service]]
name = "udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "pass"
blue  = { backend = "198.18.1.2:5514" }

[[service]]
name = "udp6"
vip = "2001:2:0:10::10"
port = 514
protocol = "udp"
forward = "pass"
blue  = { backend = "[2001:2:0:1::2]:5514" }

[[service]]
name = "tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "pass"
blue  = { backend = "198.18.1.2:1601" }

[[service]]
name = "tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
forward = "pass"
blue  = { backend = "[2001:2:0:1::2]:1601" }
"#;

const B0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

/// A backend's namespace: b0 198.18.1.2/24, 2001:2:0:1::2/64, with the client (198.18.0.1,
/// 2001:2::1, MAC_CLIENT) one hop away on b0 and b0's peer b0p standing in for the wire.
/// The datapath is attached to b0. Fields drop in order: datapath and pins before the namespace.
struct Rig {
    /// Kept for its attachment to b0 (pinned links, removed with it).
    _datapath: TestDatapath,
    ns: Netns,
    b0: u32,
    b0p: u32,
}

impl Rig {
    fn new() -> Self {
        let ns = Netns::new();
        ns.veth("b0", B0_MAC, "b0p", MAC_CLIENT);
        ns.ip(&["addr", "add", "198.18.1.2/24", "dev", "b0"]);
        ns.ip(&["addr", "add", "2001:2:0:1::2/64", "dev", "b0", "nodad"]);
        for dev in ["b0", "b0p"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        ns.ip(&["route", "add", "198.18.0.0/24", "dev", "b0"]);
        ns.ip(&["-6", "route", "add", "2001:2::/64", "dev", "b0"]);
        for client in ["198.18.0.1", "2001:2::1"] {
            ns.neighbour(client, MAC_CLIENT, "b0");
        }
        let (b0, b0p) = (ns.ifindex("b0"), ns.ifindex("b0p"));
        let mut t = TestDatapath::new(SERVICES);
        let dp = t.dp();
        ns.run(|| dp.attach(&["b0".to_string()], XdpMode::Generic))
            .expect("attach the datapath to b0");
        Self {
            _datapath: t,
            ns,
            b0,
            b0p,
        }
    }

    /// Calls `send` inside the namespace and returns the first frame leaving b0 that `pick`
    /// accepts, as captured after the TC program, and whether it was CHECKSUM_PARTIAL.
    fn capture(&self, send: impl FnOnce() + Send, pick: impl Fn(&[u8]) -> bool + Send) -> Captured {
        let b0 = self.b0;
        self.ns.run(move || {
            let tap = PacketSocket::bind(b0);
            send();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                assert!(
                    Instant::now() < deadline,
                    "no matching frame left b0 within 5 s"
                );
                if let Some(c) = tap.recv() {
                    if c.outgoing && pick(&c.frame) {
                        return c;
                    }
                }
            }
        })
    }
}

/// A frame seen by the packet socket.
struct Captured {
    frame: Vec<u8>,
    outgoing: bool,
    /// TP_STATUS_CSUMNOTREADY: the skb was CHECKSUM_PARTIAL when captured.
    partial: bool,
}

/// An AF_PACKET socket bound to one interface, with PACKET_AUXDATA on so every frame comes
/// with its tpacket_auxdata (the checksum status).
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifindex: u32) -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned at once below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid before the fields are set.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(ifindex).expect("ifindex fits i32");
        // SAFETY: sll is a live sockaddr_ll and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        let on: libc::c_int = 1;
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        for (level, name, val, len) in [
            (
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&on as *const libc::c_int).cast::<libc::c_void>(),
                size_of_val(&on),
            ),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of_val(&timeout),
            ),
        ] {
            // SAFETY: val points to a live value of len bytes.
            let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, val, len as u32) };
            assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
        }
        Self(fd)
    }

    /// The next frame, or `None` when none came within the receive timeout.
    fn recv(&self) -> Option<Captured> {
        let mut buf = vec![0u8; 4096];
        // u64 words: cmsg headers need their alignment.
        let mut control = [0u64; 16];
        // SAFETY: plain data, all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data, all-zero is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: msg describes live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "recvmsg: {e}");
            return None;
        }
        assert_eq!(
            msg.msg_flags & libc::MSG_TRUNC,
            0,
            "frame larger than the buffer"
        );
        buf.truncate(n as usize);
        let mut status = None;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
        // msg_controllen; the auxdata is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = std::ptr::read_unaligned(
                        libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>(),
                    );
                    status = Some(aux.tp_status);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let status = status.expect("PACKET_AUXDATA missing");
        Some(Captured {
            frame: buf,
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
            partial: status & libc::TP_STATUS_CSUMNOTREADY != 0,
        })
    }
}

/// Completes a CHECKSUM_PARTIAL frame as the device (or `skb_checksum_help`) would: the ones'
/// complement sum (RFC 1071) of the L4 segment, whose checksum field holds the pseudo-header
/// sum, complemented into that field (a zero result is sent as 0xffff). Summed here with its
/// own code, independent of switcher-common and of etherparse, which then checks the result.
fn complete_partial(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let be16 = |i: usize| usize::from(u16::from_be_bytes([f[i], f[i + 1]]));
    let (l4, end, proto) = match be16(12) {
        0x0800 => (14 + usize::from(f[14] & 0x0f) * 4, 14 + be16(16), f[23]),
        0x86dd => (54, 54 + be16(18), f[20]),
        other => panic!("not IP: ethertype {other:#06x}"),
    };
    let field = l4 + if proto == 6 { 16 } else { 6 };
    let mut sum: u64 = f[l4..end]
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    f[field..field + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// Source and destination (address, port) of an IP/UDP or IP/TCP frame.
fn endpoints(frame: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let h = PacketHeaders::from_ethernet_slice(frame).ok()?;
    let (src, dst) = match h.net? {
        NetHeaders::Ipv4(ip, _) => (
            std::net::IpAddr::from(ip.source),
            std::net::IpAddr::from(ip.destination),
        ),
        NetHeaders::Ipv6(ip, _) => (
            std::net::IpAddr::from(ip.source),
            std::net::IpAddr::from(ip.destination),
        ),
    };
    let (sport, dport) = match h.transport? {
        TransportHeader::Udp(u) => (u.source_port, u.destination_port),
        TransportHeader::Tcp(t) => (t.source_port, t.destination_port),
        _ => return None,
    };
    Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// The reply left b0 with CHECKSUM_PARTIAL, translated to `vip`, and completes to a valid
/// checksum.
fn assert_reply(what: &str, c: &Captured, vip: SocketAddr, client: SocketAddr) {
    assert!(
        c.partial,
        "{what}: the reply was expected to leave with CHECKSUM_PARTIAL (veth tx checksum \
         offload); without it this test proves nothing"
    );
    assert_eq!(
        endpoints(&c.frame),
        Some((vip, client)),
        "{what}: source translated to the VIP"
    );
    assert_checksums_valid(&complete_partial(&c.frame));
}

#[test]
fn udp_replies_with_checksum_partial_complete_to_a_valid_checksum() {
    if !privileged() {
        return;
    }
    let r = Rig::new();
    for (backend, vip, client) in [
        ("198.18.1.2:5514", "198.18.10.10:514", "198.18.0.1:40000"),
        (
            "[2001:2:0:1::2]:5514",
            "[2001:2:0:10::10]:514",
            "[2001:2::1]:40000",
        ),
    ] {
        let (backend, vip, client) = (sa(backend), sa(vip), sa(client));
        let send = move || {
            let s = UdpSocket::bind(backend).expect("bind the backend's UDP socket");
            s.send_to(b"ack 1\n", client).expect("send the reply");
        };
        let c = r.capture(send, |f| endpoints(f).is_some_and(|(_, d)| d == client));
        assert_reply("udp reply", &c, vip, client);

        // Control for the completion: a reply from a port of no service leaves untouched,
        // also CHECKSUM_PARTIAL, and completes to a valid checksum as well.
        let other = SocketAddr::new(backend.ip(), 9999);
        let send = move || {
            let s = UdpSocket::bind(other).expect("bind");
            s.send_to(b"x", client).expect("send");
        };
        let c = r.capture(send, |f| endpoints(f) == Some((other, client)));
        assert!(c.partial, "untouched reply is CHECKSUM_PARTIAL too");
        assert_checksums_valid(&complete_partial(&c.frame));
    }
}

#[test]
fn tcp_replies_with_checksum_partial_complete_to_a_valid_checksum() {
    if !privileged() {
        return;
    }
    let r = Rig::new();
    let b0p = r.b0p;
    for (backend, vip, client, syn) in [
        (
            "198.18.1.2:1601",
            "198.18.10.10:601",
            "198.18.0.1:42000",
            Wire {
                src_mac: MAC_CLIENT,
                dst_mac: B0_MAC,
                ttl: 64,
            }
            .tcp4("198.18.0.1", 42000, "198.18.10.10", 601, "S"),
        ),
        (
            "[2001:2:0:1::2]:1601",
            "[2001:2:0:10::10]:601",
            "[2001:2::1]:42000",
            Wire {
                src_mac: MAC_CLIENT,
                dst_mac: B0_MAC,
                ttl: 64,
            }
            .tcp6("2001:2::1", 42000, "2001:2:0:10::10", 601, "S"),
        ),
    ] {
        let (backend, vip, client) = (sa(backend), sa(vip), sa(client));
        // The SYN to the VIP comes in over the wire (written into b0p, so it arrives on b0,
        // whose XDP program steers it to the backend and records the flow); the listener's
        // SYN-ACK is the reply.
        let listener =
            r.ns.run(move || TcpListener::bind(backend))
                .expect("listen on the backend address");
        let send = move || {
            let wire = PacketSocket::bind(b0p);
            // SAFETY: syn is a live buffer of the length given.
            let n = unsafe { libc::send(wire.0.as_raw_fd(), syn.as_ptr().cast(), syn.len(), 0) };
            assert_eq!(
                usize::try_from(n).ok(),
                Some(syn.len()),
                "inject the SYN: {}",
                std::io::Error::last_os_error()
            );
        };
        let c = r.capture(send, |f| endpoints(f).is_some_and(|(_, d)| d == client));
        assert_reply("tcp syn-ack", &c, vip, client);
        drop(listener);
    }
}
