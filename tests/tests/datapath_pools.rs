//! Pools through BPF_PROG_TEST_RUN: each colour a pool of members behind a consistent-hashing
//! table. A flow's member is chosen by its hash; TCP pins colour and member at the SYN, so an
//! established connection keeps its exact node across flips, pool changes and health changes;
//! a member leaving moves only its own share of new flows. Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use support::*;
use switcher::datapath::{encode, Datapath, FlowPolicy, FlowSweeper};
use switcher::domain::Color;
use switcher_common::{Reason, PROTO_TCP};

const VIP: &str = "198.18.10.10";
const CLIENT: &str = "198.18.0.1";

/// udp4 and tcp4 with a pool of `n` members per colour: blue 198.18.1.2.., green 198.18.2.2..
fn services(n: u8, blue_weights: Option<&str>) -> String {
    let pool = |net: u8, port: u16| {
        (0..n)
            .map(|i| format!("\"198.18.{net}.{}:{port}\"", i + 2))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let weights = blue_weights.map_or(String::new(), |w| format!(", weights = [{w}]"));
    format!(
        r#"
[[service]]
name = "udp4"
vip = "{VIP}"
port = 514
protocol = "udp"
forward = "pass"
blue  = {{ backends = [{}]{weights} }}
green = {{ backends = [{}] }}

[[service]]
name = "tcp4"
vip = "{VIP}"
port = 601
protocol = "tcp"
forward = "pass"
blue  = {{ backends = [{}]{weights} }}
green = {{ backends = [{}] }}
"#,
        pool(1, 5514),
        pool(2, 6514),
        pool(1, 1601),
        pool(2, 2601)
    )
}

/// [`services`] with 3 members per colour, without the member `m`.
fn without(m: SocketAddr) -> String {
    without_in(&services(3, None), m)
}

/// The config `all` without the member `m`.
fn without_in(all: &str, m: SocketAddr) -> String {
    let all = all.to_string();
    let fewer = all.replacen(&format!("\"{m}\", "), "", 1);
    if fewer == all {
        all.replacen(&format!(", \"{m}\""), "", 1)
    } else {
        fewer
    }
}

/// The destination an XDP run rewrote `pkt` to.
fn dest(t: &mut TestDatapath, pkt: &[u8]) -> SocketAddr {
    let (action, out) = t.xdp(pkt);
    assert_eq!(action, XDP_PASS);
    let h = etherparse::PacketHeaders::from_ethernet_slice(&out).expect("parse output");
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = h.net else {
        panic!("not IPv4");
    };
    let port = match h.transport {
        Some(etherparse::TransportHeader::Udp(u)) => u.destination_port,
        Some(etherparse::TransportHeader::Tcp(t)) => t.destination_port,
        other => panic!("no transport: {other:?}"),
    };
    assert_checksums_valid(&out);
    SocketAddr::from((ip.destination, port))
}

fn udp(sport: u16) -> Vec<u8> {
    udp4(CLIENT, sport, VIP, 514, b"<14>1 line")
}

fn tcp(sport: u16, flags: &str) -> Vec<u8> {
    tcp4(CLIENT, sport, VIP, 601, flags, b"")
}

fn spread(t: &mut TestDatapath, flows: u16) -> BTreeMap<SocketAddr, u32> {
    let mut by = BTreeMap::new();
    for sport in 20000..20000 + flows {
        *by.entry(dest(t, &udp(sport))).or_insert(0) += 1;
    }
    by
}

/// UDP is spread over the active colour's members by flow hash: every flow keeps its member
/// (a sender's order is kept per member), and the spread is even within ±15%.
#[test]
fn flows_spread_evenly_over_the_pool_and_keep_their_member() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(3, None));
    let by = spread(&mut t, 6000);
    assert_eq!(by.len(), 3, "every member gets flows: {by:?}");
    for (m, n) in &by {
        assert_eq!(m.ip().to_string()[..9], *"198.18.1.", "blue member");
        assert!(
            (1700..=2300).contains(n),
            "{m} got {n} of 6000 flows (2000 ± 15%): {by:?}"
        );
    }
    // The same flow, again: the same member, every time.
    for sport in [20000, 20500, 25999] {
        let first = dest(&mut t, &udp(sport));
        for _ in 0..5 {
            assert_eq!(dest(&mut t, &udp(sport)), first);
        }
    }
    // Per-member counters add up to the colour's.
    let id = t.id("udp4");
    let members = t.dp().members(id, Color::Blue).expect("members");
    let total: u64 = members.iter().map(|m| m.counters.packets).sum();
    assert_eq!(total, t.counters(id, Color::Blue).packets);
    for m in &members {
        assert!((m.share - 1.0 / 3.0).abs() < 0.01, "share {m:?}");
    }
}

/// Weights shift the spread: a member of weight 2 in a pool of 2+1+1 takes about half.
#[test]
fn weights_set_each_members_share() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(3, Some("2, 1, 1")));
    let by = spread(&mut t, 6000);
    let heavy: SocketAddr = "198.18.1.2:5514".parse().expect("addr");
    let n = by.get(&heavy).copied().unwrap_or(0);
    assert!(
        (2550..=3450).contains(&n),
        "weight 2 of 4 got {n} of 6000: {by:?}"
    );
}

/// A member taken out of service (its health) moves only its own flows; the others' stay
/// put. Measured over 8 members: about 1/8 of the flows move, all of them the leaver's.
#[test]
fn a_member_leaving_moves_only_its_own_share() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(8, None));
    let id = t.id("udp4");
    let flows: Vec<u16> = (30000..34000).collect();
    let before: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    let leaver: SocketAddr = "198.18.1.5:5514".parse().expect("addr");
    assert!(t
        .dp()
        .set_member_in_service(id, Color::Blue, leaver, false)
        .expect("take out"));
    let after: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    let mut moved_own = 0;
    let mut moved_other = 0;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(*a, leaver, "no flow goes to the member out of service");
        if b != a {
            if *b == leaver {
                moved_own += 1;
            } else {
                moved_other += 1;
            }
        }
    }
    let own = before.iter().filter(|b| **b == leaver).count();
    assert_eq!(moved_own, own, "every flow of the leaver moves");
    let share = (moved_own + moved_other) as f64 / flows.len() as f64;
    eprintln!(
        "one of 8 members leaving moved {:.1}% of flows ({moved_own} its own, {moved_other} others')",
        share * 100.0
    );
    assert_eq!(moved_other, 0, "no other member's flow moves");
    assert!(
        (0.09..=0.16).contains(&share),
        "about 1/8 of the flows moved: {share}"
    );
    // Back in service: its flows come back to it.
    t.dp()
        .set_member_in_service(id, Color::Blue, leaver, true)
        .expect("put back");
    let back: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    assert_eq!(back, before, "the table is the same as before");
}

/// A flip writes the service's ACTIVE word, which also says which buffer of each colour's pool
/// is live: flips after a health change must keep the buffer the change switched to (the
/// daemon keeps its own record of the word instead of reading it back), or the member out of
/// service would get traffic again after a flip away and back.
#[test]
fn flips_after_a_health_change_keep_its_rebuilt_pool() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(8, None));
    let id = t.id("udp4");
    let leaver: SocketAddr = "198.18.1.5:5514".parse().expect("addr");
    assert!(t
        .dp()
        .set_member_in_service(id, Color::Blue, leaver, false)
        .expect("take out"));
    let flows: Vec<u16> = (30000..32000).collect();
    let out: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    assert!(!out.contains(&leaver));
    for to in [Color::Green, Color::Blue, Color::Green, Color::Blue] {
        assert!(t.dp().flip(id, to).expect("flip").changed);
    }
    let after: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    assert_eq!(
        after, out,
        "blue's pool after the flips is the one without the leaver"
    );
    // And the way back: in service again, and flipped around once more.
    t.dp()
        .set_member_in_service(id, Color::Blue, leaver, true)
        .expect("put back");
    let back: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    assert!(back.contains(&leaver), "the leaver has its flows again");
    t.dp().flip(id, Color::Green).expect("flip");
    t.dp().flip(id, Color::Blue).expect("flip back");
    let again: Vec<SocketAddr> = flows.iter().map(|&p| dest(&mut t, &udp(p))).collect();
    assert_eq!(again, back);
}

/// TCP: the SYN picks a member, and the connection keeps that exact member through a flip, a
/// health change that takes its member out, and a config reload that removes its member from
/// the pool; new connections avoid the member that left.
#[test]
fn an_established_connection_keeps_its_member_through_pool_changes() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(3, None));
    let id = t.id("tcp4");
    let mut conns = BTreeMap::new();
    for sport in 40000..40030u16 {
        let m = dest(&mut t, &tcp(sport, "S"));
        assert_eq!(
            dest(&mut t, &tcp(sport, "A")),
            m,
            "handshake on the SYN's member"
        );
        conns.insert(sport, m);
    }
    let victim = conns[&40000];
    t.dp()
        .set_member_in_service(id, Color::Blue, victim, false)
        .expect("health takes it out");
    t.dp().flip(id, Color::Green).expect("flip");
    // The reload drops the victim from blue's pool altogether.
    t.cfg = t
        .loaded
        .apply(&without(victim))
        .expect("reload without the victim");
    for (&sport, &m) in &conns {
        assert_eq!(
            dest(&mut t, &tcp(sport, "AP")),
            m,
            "connection {sport} keeps its member"
        );
    }
    assert_eq!(t.reason(Reason::TcpPinMiss), 0);
    // New connections go to green's pool now.
    let m = dest(&mut t, &tcp(41000, "S"));
    assert_eq!(m.ip().to_string()[..9], *"198.18.2.", "{m}");
}

/// Preparing a pool never touches the serving colour's table: the idle colour is rebuilt
/// into its spare buffer while the active colour's flows keep their members.
#[test]
fn rebuilding_the_idle_pool_leaves_the_serving_pool_alone() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(4, None));
    let before = spread(&mut t, 2000);
    let bigger = services(4, None).replace(
        "\"198.18.2.5:6514\"",
        "\"198.18.2.5:6514\", \"198.18.2.6:6514\", \"198.18.2.7:6514\"",
    );
    t.cfg = t.loaded.apply(&bigger).expect("grow green");
    assert_eq!(spread(&mut t, 2000), before, "blue's flows did not move");
    let id = t.id("udp4");
    assert_eq!(t.dp().members(id, Color::Green).expect("green").len(), 6);
}

/// A member a reload removed keeps its replies translated (the client sees the VIP) while a
/// connection still uses it; once its last connection closed and was swept, the sweeper
/// reports it drained and the datapath lets its reverse entry go. A member a later reload
/// adds back is not let go.
#[test]
fn a_removed_member_keeps_replies_translated_until_its_last_connection_is_gone() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(3, None));
    let id = t.id("tcp4");
    let m = dest(&mut t, &tcp(40100, "S"));
    dest(&mut t, &tcp(40100, "A"));
    t.cfg = t.loaded.apply(&without(m)).expect("reload without m");

    let reply = |t: &mut TestDatapath| {
        let from_m = tcp4(&m.ip().to_string(), m.port(), CLIENT, 40100, "A", b"ok");
        let (_, out) = t.tc(&from_m);
        (out, from_m)
    };
    let (out, _) = reply(&mut t);
    assert_eq!(
        out,
        tcp4(VIP, 601, CLIENT, 40100, "A", b"ok"),
        "reply from the VIP"
    );
    let sweeper = FlowSweeper::open(&t.loaded.maps_dir()).expect("open the pinned tables");
    let now = FlowPolicy {
        closing_grace_ns: 0,
        idle_ns: u64::MAX,
    };
    assert_eq!(
        sweeper.drained_members(&now).expect("drained"),
        vec![],
        "its connection is open"
    );

    // The client closes; the sweep removes the closed entry; m is drained.
    assert_eq!(dest(&mut t, &tcp(40100, "AF")), m);
    let mut sweeper = sweeper;
    assert_eq!(sweeper.sweep(&now).expect("sweep").closed, 1);
    let walked_at = Instant::now();
    let drained = sweeper.drained_members(&now).expect("drained");
    let m_key = encode::endpoint(m.ip(), m.port(), PROTO_TCP);
    assert_eq!(drained, vec![m_key]);
    assert_eq!(
        t.dp().retire_drained(&drained, walked_at).expect("retire"),
        vec![(id, m)]
    );
    let (out, from_m) = reply(&mut t);
    assert_eq!(out, from_m, "no longer a member: left alone");

    // Removed with a connection, added back: a stale report of it drained changes nothing.
    let m2 = dest(&mut t, &tcp(40101, "S"));
    dest(&mut t, &tcp(40101, "A"));
    t.cfg = t.loaded.apply(&without(m2)).expect("reload without m2");
    t.cfg = t.loaded.apply(&services(3, None)).expect("m2 back");
    let m2_key = encode::endpoint(m2.ip(), m2.port(), PROTO_TCP);
    let walked_at = Instant::now();
    assert_eq!(
        t.dp().retire_drained(&[m2_key], walked_at).expect("retire"),
        vec![]
    );
    let from_m2 = tcp4(&m2.ip().to_string(), m2.port(), CLIENT, 40101, "A", b"");
    assert_eq!(t.tc(&from_m2).1, tcp4(VIP, 601, CLIENT, 40101, "A", b""));
    // ... and removed again after the sweeper's walk began: that walk's report is stale.
    t.cfg = t
        .loaded
        .apply(&without(m2))
        .expect("reload without m2 again");
    assert_eq!(
        t.dp().retire_drained(&[m2_key], walked_at).expect("retire"),
        vec![]
    );
    assert_eq!(t.tc(&from_m2).1, tcp4(VIP, 601, CLIENT, 40101, "A", b""));

    // While its connection lasts, m2 cannot join another service: that service's reverse
    // entry would take the connection's replies away from tcp4's VIP.
    let elsewhere = format!(
        "{}\n[[service]]\nname = \"other\"\nvip = \"198.18.10.11\"\nport = 601\n\
         protocol = \"tcp\"\nforward = \"pass\"\nblue = {{ backend = \"{m2}\" }}\n\
         green = {{ backend = \"198.18.3.2:601\" }}\n",
        without(m2)
    );
    let e = t
        .loaded
        .apply(&elsewhere)
        .expect_err("a draining member joins no other service");
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!("{m2} cannot join blue of other")),
        "{e}"
    );
    assert_eq!(t.tc(&from_m2).1, tcp4(VIP, 601, CLIENT, 40101, "A", b""));
}

/// A member taken out by health, then removed from the config and later added back, starts
/// in service like any new member: the old verdict does not keep it out of the table.
#[test]
fn a_member_that_left_and_came_back_starts_in_service() {
    if !privileged() {
        return;
    }
    let mut t = TestDatapath::new(&services(3, None));
    let id = t.id("tcp4");
    let victim = dest(&mut t, &tcp(40200, "S"));
    t.dp()
        .set_member_in_service(id, Color::Blue, victim, false)
        .expect("health takes it out");
    let share = |t: &mut TestDatapath| {
        t.dp()
            .members(id, Color::Blue)
            .expect("members")
            .into_iter()
            .find(|m| m.addr == victim)
            .map(|m| m.share)
    };
    assert_eq!(share(&mut t), Some(0.0));
    t.cfg = t.loaded.apply(&without(victim)).expect("removed");
    assert_eq!(share(&mut t), None);
    t.cfg = t.loaded.apply(&services(3, None)).expect("back");
    let back = share(&mut t).expect("a member again");
    assert!(back > 0.3, "in service again: share {back}");
}

/// UDP affinity keeps a sender on its member only while the member is in its pool's table:
/// taken out by health or removed by a reload, the sender moves with the member's share at
/// its next datagram (not after its idle time), and stays where it moved.
#[test]
fn udp_affinity_follows_a_member_only_while_it_is_in_the_table() {
    if !privileged() {
        return;
    }
    let with_affinity = services(3, None).replacen(
        "forward = \"pass\"\n",
        "forward = \"pass\"\nudp_affinity_idle_ms = 60000\n",
        1,
    );
    let mut t = TestDatapath::new(&with_affinity);
    let id = t.id("udp4");
    let m = dest(&mut t, &udp(45300));
    assert_eq!(dest(&mut t, &udp(45300)), m);
    t.dp()
        .set_member_in_service(id, Color::Blue, m, false)
        .expect("health takes it out");
    let moved = dest(&mut t, &udp(45300));
    assert_ne!(moved, m, "a sender does not stay on a dead member");
    t.dp()
        .set_member_in_service(id, Color::Blue, m, true)
        .expect("back in");
    assert_eq!(dest(&mut t, &udp(45300)), moved, "and stays where it moved");

    t.cfg = t
        .loaded
        .apply(&without_in(&with_affinity, moved))
        .expect("reload without it");
    let again = dest(&mut t, &udp(45300));
    assert_ne!(again, moved, "nor on a removed one");
    assert_eq!(dest(&mut t, &udp(45300)), again);
}
