//! The flow tables against hostile traffic and churn, through BPF_PROG_TEST_RUN: what can and
//! cannot move an established connection (README "Datapath rules"). Needs root.

mod support;

use support::*;
use switcher::datapath::{Datapath, FlowPolicy, FlowSweep, FlowSweeper};
use switcher::domain::Color;
use switcher_common::{Reason, HALF_TABLE_SIZE};

const SERVICES: &str = r#"
[[service]]
name = "tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "pass"
drain_ms = 1
blue  = { backend = "198.18.1.2:1601" }
green = { backend = "198.18.2.2:2601" }

[[service]]
name = "udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "pass"
udp_affinity_idle_ms = 60000
blue  = { backend = "198.18.1.2:5514" }
green = { backend = "198.18.2.2:6514" }
"#;

const CLIENT: &str = "198.18.0.1";
const VIP: &str = "198.18.10.10";

fn to_vip(sport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp4(CLIENT, sport, VIP, 601, flags, payload)
}

fn to_blue(sport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp4(CLIENT, sport, "198.18.1.2", 1601, flags, payload)
}

fn to_green(sport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp4(CLIENT, sport, "198.18.2.2", 2601, flags, payload)
}

/// Opens a connection through the switch: SYN, then the handshake's ACK with data.
fn connect(t: &mut TestDatapath, sport: u16) {
    t.xdp(&to_vip(sport, "S", b""));
    t.xdp(&to_vip(sport, "A", b"<14>1 first line\n"));
}

/// One pass of the daemon's flow sweeper over the test datapath's tables.
fn sweep(t: &mut TestDatapath, policy: &FlowPolicy) -> FlowSweep {
    FlowSweeper::open(&t.loaded.maps_dir())
        .expect("open the pinned tables")
        .sweep(policy)
        .expect("sweep")
}

fn pinned(t: &mut TestDatapath, id: u32) -> [u64; 2] {
    let census = t.dp().census().expect("census");
    census.pinned.get(&id).copied().unwrap_or_default()
}

/// Issue 11's SYN flood: an idle established connection, its service flipped and the drain
/// window over, then more SYNs from other sources than the half-open table holds. The
/// connection's next packet still goes to its blue member: SYNs only ever evict other
/// half-open entries, and the established one lives in a table nothing evicts from.
#[test]
fn a_syn_flood_cannot_evict_an_established_connection() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp4");
    connect(&mut t, 42000);
    assert_eq!(pinned(&mut t, id), [1, 0]);
    t.dp().flip(id, Color::Green).expect("flip");
    std::thread::sleep(std::time::Duration::from_millis(20));

    // A flood from 70 000 (source, port) pairs: more than the half-open table's size.
    let flood = HALF_TABLE_SIZE + 4464;
    let mut syn = tcp4("198.18.100.0", 1024, VIP, 601, "S", b"");
    for i in 0..flood {
        // The source address's low half (frame bytes 28..30) and port vary; the checksums
        // are left stale (the datapath updates them incrementally and does not verify them).
        let [a, b, c, d] = i.to_be_bytes();
        syn[28] = a ^ b;
        syn[29] = c;
        syn[35] = d;
        let (action, _) = t.xdp(&syn);
        assert_eq!(action, XDP_PASS);
    }
    assert!(
        t.counters(id, Color::Green).new_flows >= u64::from(flood),
        "every SYN was a new flow to green"
    );
    let (_, out) = t.xdp(&to_vip(42000, "AP", b"<14>1 after the flood\n"));
    assert_eq!(
        out,
        to_blue(42000, "AP", b"<14>1 after the flood\n"),
        "the established connection stays on blue"
    );
    assert_eq!(t.reason(Reason::TcpPinMiss), 0, "no pin miss");
    assert_eq!(pinned(&mut t, id), [1, 0]);
}

/// Closed connections leave the protected table after the closing grace, idle ones after
/// the idle timeout; open ones stay.
#[test]
fn the_sweep_removes_closed_and_idle_connections_only() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp4");
    for sport in [42001, 42002, 42003] {
        connect(&mut t, sport);
    }
    t.xdp(&to_vip(42001, "AF", b""));
    t.xdp(&to_vip(42002, "R", b""));
    assert_eq!(pinned(&mut t, id), [1, 0], "only 42003 is still open");
    let swept = sweep(
        &mut t,
        &FlowPolicy {
            closing_grace_ns: 0,
            idle_ns: u64::MAX,
        },
    );
    assert_eq!((swept.seen, swept.closed, swept.idle), (3, 2, 0));
    // A closed connection's packet now finds nothing: a pin miss, to the active colour.
    let (_, out) = t.xdp(&to_vip(42001, "A", b""));
    assert_eq!(out, to_blue(42001, "A", b""));
    assert_eq!(t.reason(Reason::TcpPinMiss), 1);

    let swept = sweep(
        &mut t,
        &FlowPolicy {
            closing_grace_ns: u64::MAX,
            idle_ns: 0,
        },
    );
    assert_eq!((swept.seen, swept.closed, swept.idle), (1, 0, 1));
    assert_eq!(pinned(&mut t, id), [0, 0]);
}

/// A backend's reset of an established connection starts its closing grace, so a handshake
/// spoofed from a made-up source (which the backend resets) cannot hold a protected entry.
#[test]
fn a_reset_from_the_backend_closes_the_established_entry() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp4");
    connect(&mut t, 42004);
    assert_eq!(pinned(&mut t, id), [1, 0]);
    let (_, out) = t.tc(&tcp4("198.18.1.2", 1601, CLIENT, 42004, "R", b""));
    assert_eq!(out, tcp4(VIP, 601, CLIENT, 42004, "R", b""));
    assert_eq!(pinned(&mut t, id), [0, 0], "closing, not open");
    // Within the grace its retransmissions still reach the same member. Data reopens the
    // entry (the reset might have been spoofed), and the member's next reset closes it again.
    t.dp().flip(id, Color::Green).expect("flip");
    let (_, out) = t.xdp(&to_vip(42004, "A", b"x"));
    assert_eq!(out, to_blue(42004, "A", b"x"));
    assert_eq!(pinned(&mut t, id), [1, 0], "reopened by data");
    t.tc(&tcp4("198.18.1.2", 1601, CLIENT, 42004, "R", b""));
    assert_eq!(pinned(&mut t, id), [0, 0], "closed by the member's reset");
    let swept = sweep(
        &mut t,
        &FlowPolicy {
            closing_grace_ns: 0,
            idle_ns: u64::MAX,
        },
    );
    assert_eq!(swept.closed, 1);
}

/// A new connection on a tuple whose previous connection closed starts over: it is pinned to
/// the colour active at its SYN, not to the old connection's.
#[test]
fn a_reused_tuple_after_close_is_a_new_connection() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp4");
    connect(&mut t, 42005);
    t.xdp(&to_vip(42005, "AF", b""));
    t.dp().flip(id, Color::Green).expect("flip");
    let (_, out) = t.xdp(&to_vip(42005, "S", b""));
    assert_eq!(out, to_green(42005, "S", b""));
    let (_, out) = t.xdp(&to_vip(42005, "A", b"y"));
    assert_eq!(out, to_green(42005, "A", b"y"));
    assert_eq!(pinned(&mut t, id), [0, 1]);
}

/// A rollback moves UDP affinity at once: after `void_affinity` a sender pinned to the
/// failed colour follows the active one with its next datagram.
#[test]
fn a_rollback_moves_udp_affinity_at_once() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp4");
    let dgram = udp4(CLIENT, 45000, VIP, 514, b"line");
    t.dp().flip(id, Color::Green).expect("flip");
    assert_eq!(
        t.xdp(&dgram).1,
        udp4(CLIENT, 45000, "198.18.2.2", 6514, b"line")
    );
    // Rolled back: the flip alone leaves the sender on green (affinity) ...
    t.dp().flip(id, Color::Blue).expect("flip back");
    assert_eq!(
        t.xdp(&dgram).1,
        udp4(CLIENT, 45000, "198.18.2.2", 6514, b"line")
    );
    // ... voiding it moves the sender with its next datagram.
    t.dp().void_affinity(id).expect("void");
    assert_eq!(
        t.xdp(&dgram).1,
        udp4(CLIENT, 45000, "198.18.1.2", 5514, b"line")
    );
    // UDP affinity never counts as a pinned (draining) connection.
    assert_eq!(pinned(&mut t, id), [0, 0]);
}

/// Issue 11 item 5: a removed service's established entries are swept, and its id is not
/// given to a new service while its fragment entries may still name it.
#[test]
fn a_removed_service_leaves_nothing_a_new_service_inherits() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let old = t.id("tcp4");
    connect(&mut t, 42006);
    assert_eq!(pinned(&mut t, old), [1, 0]);
    let other = SERVICES.replace(
        "name = \"tcp4\"\nvip = \"198.18.10.10\"",
        "name = \"tcp4b\"\nvip = \"198.18.10.11\"",
    );
    t.cfg = t.loaded.apply(&other).expect("apply");
    let new = t.id("tcp4b");
    assert_ne!(new, old, "the removed service's id is quarantined");
    assert_eq!(pinned(&mut t, new), [0, 0]);
    let swept = sweep(&mut t, &FlowPolicy::default());
    assert_eq!(swept.service_gone, 1);
    // The old VIP is no service any more: its connection's packets pass untouched.
    let late = to_vip(42006, "A", b"z");
    assert_eq!(t.xdp(&late).1, late);
}

/// Issue 11 item 10: the byte counters count IP length (what the README says), not the frame:
/// a VLAN tag and Ethernet padding are not traffic to the service.
#[test]
fn byte_counters_count_the_ip_length() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("udp4");
    let plain = udp4(CLIENT, 45100, VIP, 514, b"line");
    let ip_len = u64::from(u16::from_be_bytes([plain[16], plain[17]]));
    let mut framed = with_vlans(&plain, &[(0x8100, 7)]);
    framed.extend_from_slice(&[0u8; 20]);
    let (action, _) = t.xdp(&framed);
    assert_eq!(action, XDP_PASS);
    let c = t.counters(id, Color::Blue);
    assert_eq!((c.packets, c.bytes), (1, ip_len));
    let members = t.dp().members(id, Color::Blue).expect("members");
    assert_eq!(members[0].counters.bytes, ip_len);
}

/// A UDP sender that never goes idle still follows a flip once its affinity entry is older
/// than `udp_affinity_max_age_ms`; before that it stays on its colour.
#[test]
fn udp_affinity_to_an_old_colour_ends_at_its_maximum_age() {
    if !privileged() {
        return;
    }
    let services = SERVICES.replace(
        "udp_affinity_idle_ms = 60000",
        "udp_affinity_idle_ms = 60000\nudp_affinity_max_age_ms = 300",
    );
    let mut t = TestDatapath::new(&services);
    let id = t.id("udp4");
    let dgram = udp4(CLIENT, 45200, VIP, 514, b"line");
    let on_blue = udp4(CLIENT, 45200, "198.18.1.2", 5514, b"line");
    let on_green = udp4(CLIENT, 45200, "198.18.2.2", 6514, b"line");
    let start = std::time::Instant::now();
    assert_eq!(t.xdp(&dgram).1, on_blue);
    t.dp().flip(id, Color::Green).expect("flip");
    assert_eq!(t.xdp(&dgram).1, on_blue, "affinity keeps it on blue");
    // Keep sending (never idle) until well past the maximum age.
    let mut last = on_blue.clone();
    while start.elapsed() < std::time::Duration::from_millis(500) {
        last = t.xdp(&dgram).1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        last, on_green,
        "past its maximum age the sender follows the flip"
    );
    assert_eq!(t.xdp(&dgram).1, on_green, "and stays on the active colour");
}

/// A reset spoofed with a live connection's tuple marks its entry closing; the client's next
/// data reopens it, so the sweep keeps the connection on its member.
#[test]
fn data_after_a_spoofed_reset_keeps_the_connection() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(SERVICES);
    let id = t.id("tcp4");
    connect(&mut t, 42010);
    t.xdp(&to_vip(42010, "R", b""));
    assert_eq!(pinned(&mut t, id), [0, 0], "closing");
    let (_, out) = t.xdp(&to_vip(42010, "AP", b"<14>1 still here\n"));
    assert_eq!(out, to_blue(42010, "AP", b"<14>1 still here\n"));
    assert_eq!(pinned(&mut t, id), [1, 0], "open again");
    let swept = sweep(
        &mut t,
        &FlowPolicy {
            closing_grace_ns: 0,
            idle_ns: u64::MAX,
        },
    );
    assert_eq!((swept.seen, swept.closed), (1, 0));
    t.dp().flip(id, Color::Green).expect("flip");
    let (_, out) = t.xdp(&to_vip(42010, "AP", b"x"));
    assert_eq!(out, to_blue(42010, "AP", b"x"), "still on its member");
}
