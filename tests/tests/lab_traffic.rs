//! End to end in the netns lab with real traffic: client → edge (switcher, XDP + TC) → blue or
//! green. Needs root; in CI a missing privilege fails instead of skipping.
//!
//! Nothing here sleeps for a guessed time: every step waits for what it needs (lines arriving
//! at a sink, a map entry, a process) with a deadline.

mod support;

use std::time::Duration;

use support::privileged;
use switcher::{
    controller::{ServiceView, StatusView},
    deploy::{Deployment, Phase},
    domain::Color,
};
use switcher_tests::{
    lab::{Host, Proc, EDGE_TO_CLIENT, EDGE_TO_GREEN, GREEN_V4, VIP_V4, VIP_V6},
    poll,
    rig::{self, OnStop, Received, Rig, TCP_PORT, UDP_PORT},
};

/// How long any one condition may take to come true.
const WAIT: Duration = Duration::from_secs(20);

fn target(v6: bool, port: u16) -> String {
    if v6 {
        format!("[{VIP_V6}]:{port}")
    } else {
        format!("{VIP_V4}:{port}")
    }
}

fn service<'a>(status: &'a StatusView, name: &str) -> &'a ServiceView {
    status
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} in status"))
}

fn reason(status: &StatusView, label: &str) -> u64 {
    status
        .reasons
        .iter()
        .find(|(r, _)| r == label)
        .map_or(0, |(_, n)| *n)
}

/// Waits until `color` has received `n` more lines of `stream` than `since`.
fn wait_more(rig: &Rig, stream: &str, color: Color, since: &Received, n: usize) -> Received {
    let base = lines(since, color);
    rig.wait_received(
        stream,
        &format!("{n} more lines of {stream} at {color} (had {base})"),
        WAIT,
        |r| lines(r, color) >= base + n,
    )
    .expect("traffic keeps arriving")
}

fn lines(r: &Received, color: Color) -> usize {
    match color {
        Color::Blue => r.blue.len(),
        Color::Green => r.green.len(),
    }
}

fn assert_running(p: &Proc, what: &str) {
    assert!(
        p.try_wait().expect("try_wait").is_none(),
        "{what}: the sender already finished, so this step saw no traffic; stderr: {}",
        p.stderr_tail(5)
    );
}

/// A continuous UDP stream, flipped to green and back mid-way: every line arrives exactly
/// once, both colours got some, the datapath counters match what each backend received, and
/// no checksum or receive-buffer errors hide behind the numbers.
fn udp_stream_across_flips(tag: &str, v6: bool, forward: &str) {
    let rig = Rig::up(tag, &rig::standard_services(forward, "")).expect("rig up");
    let svc = if v6 { "udp6" } else { "udp4" };
    let before: Vec<_> = [Host::Blue, Host::Green]
        .iter()
        .map(|h| rig.lab.snmp(*h).expect("snmp"))
        .collect();
    let count: u64 = 9000;
    let sender = rig
        .send(
            &target(v6, UDP_PORT),
            &[
                "--proto",
                "udp",
                "--count",
                &count.to_string(),
                "--rate",
                "3000",
                "--stream",
                "u",
                "--max-seconds",
                "30",
            ],
        )
        .expect("start sender");
    // A third of the stream on blue, a third on green, the rest on blue again.
    let third = count as usize / 3;
    let before_flip = rig
        .wait_received("u", "a third of the stream at blue", WAIT, |r| {
            r.blue.len() >= third
        })
        .expect("stream reaches blue");
    assert_running(&sender, "flip to green");
    assert!(rig.flip(svc, Color::Green).expect("flip").changed);
    wait_more(&rig, "u", Color::Green, &before_flip, third);
    assert_running(&sender, "flip back to blue");
    assert!(rig.flip(svc, Color::Blue).expect("flip back").changed);
    let sent = rig::finish_sender(&sender, Duration::from_secs(40)).expect("sender");
    assert_eq!(sent, count);

    let got = rig
        .wait_stream("u", count as usize, Duration::from_secs(10))
        .expect("read sinks");
    let (lost, dup) = got.loss_and_duplicates(count);
    let after: Vec<_> = [Host::Blue, Host::Green]
        .iter()
        .map(|h| rig.lab.snmp(*h).expect("snmp"))
        .collect();
    for (i, host) in ["blue", "green"].iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        let (rcvbuf, csum) = if v6 {
            (
                a.udp6_rcvbuf_errors - b.udp6_rcvbuf_errors,
                a.udp6_in_csum_errors - b.udp6_in_csum_errors,
            )
        } else {
            (
                a.udp_rcvbuf_errors - b.udp_rcvbuf_errors,
                a.udp_in_csum_errors - b.udp_in_csum_errors,
            )
        };
        assert_eq!(
            csum, 0,
            "{host}: UDP checksum errors: the rewrite corrupted packets"
        );
        assert_eq!(
            rcvbuf, 0,
            "{host}: receive-buffer drops (receiver overload, not switch loss)"
        );
    }
    assert!(
        lost.is_empty(),
        "{} lines lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        dup.is_empty(),
        "{} lines duplicated: {:?}",
        dup.len(),
        &dup[..dup.len().min(10)]
    );
    assert!(
        !got.blue.is_empty() && !got.green.is_empty(),
        "both colours must get traffic"
    );

    let status = rig.status().expect("status");
    let s = service(&status, svc);
    assert_eq!(
        s.blue.packets,
        got.blue.len() as u64,
        "blue counter vs blue backend"
    );
    assert_eq!(
        s.green.packets,
        got.green.len() as u64,
        "green counter vs green backend"
    );
    assert_eq!(s.active, Color::Blue);
    let flip = s.last_flip.as_ref().expect("flip recorded");
    assert!(
        flip.blue_first_after_ns.is_some(),
        "in-kernel cutover time recorded"
    );
    // The forwarding path under test really was taken: the stream is the only traffic to a
    // service here, so every one of its lines was forwarded exactly once, by that path. In
    // redirect mode a line sent before the edge had resolved a backend's neighbour entry takes
    // the kernel path: a handful at most (each colour's first lines).
    if forward == "redirect" {
        let (redirected, fallback) = (
            reason(&status, "redirected"),
            reason(&status, "fib_fallback"),
        );
        assert_eq!(redirected + fallback, count, "reasons {:?}", status.reasons);
        assert!(
            fallback <= 20,
            "{fallback} lines fell back to the kernel path"
        );
    } else {
        assert_eq!(
            reason(&status, "pass_mode"),
            count,
            "reasons {:?}",
            status.reasons
        );
    }
}

#[test]
fn udp4_flip_mid_stream_loses_nothing_redirect() {
    if privileged() {
        udp_stream_across_flips("ur", false, "redirect");
    }
}

#[test]
fn udp6_flip_mid_stream_loses_nothing_redirect() {
    if privileged() {
        udp_stream_across_flips("us", true, "redirect");
    }
}

#[test]
fn udp4_flip_mid_stream_loses_nothing_pass_mode() {
    if privileged() {
        udp_stream_across_flips("up", false, "pass");
    }
}

/// An established TCP connection keeps delivering to blue across several flips while a new
/// connection made after the first flip goes to green; no connection sees a reset.
fn tcp_pinned_across_flips(tag: &str, v6: bool, forward: &str) {
    let rig = Rig::up(tag, &rig::standard_services(forward, "")).expect("rig up");
    let svc = if v6 { "tcp6" } else { "tcp4" };
    let client_before = rig.lab.snmp(Host::Client).expect("snmp");
    let t = target(v6, TCP_PORT);
    let long = rig
        .send(
            &t,
            &[
                "--proto",
                "tcp",
                "--count",
                "2500",
                "--rate",
                "500",
                "--stream",
                "a",
                "--max-seconds",
                "30",
            ],
        )
        .expect("start long-lived sender");
    // Connected and delivering to blue before anything flips.
    let a0 = rig
        .wait_received(
            "a",
            "the long-lived connection delivering to blue",
            WAIT,
            |r| r.blue.len() >= 200,
        )
        .expect("long-lived connection up");
    assert_running(&long, "first flip");
    assert!(rig.flip(svc, Color::Green).expect("flip").changed);
    let fresh = rig
        .send(
            &t,
            &[
                "--proto",
                "tcp",
                "--count",
                "600",
                "--rate",
                "300",
                "--stream",
                "b",
                "--framing",
                "lf",
                "--max-seconds",
                "30",
            ],
        )
        .expect("start new sender");
    // Both connections deliver while the colour flips under them twice more.
    let b0 = rig
        .wait_received("b", "the new connection delivering to green", WAIT, |r| {
            r.green.len() >= 50
        })
        .expect("new connection up");
    assert_running(&long, "flip back to blue");
    assert_running(&fresh, "flip back to blue");
    rig.flip(svc, Color::Blue).expect("flip");
    wait_more(&rig, "a", Color::Blue, &a0, 200);
    wait_more(&rig, "b", Color::Green, &b0, 100);
    assert_running(&long, "flip to green again");
    assert_running(&fresh, "flip to green again");
    rig.flip(svc, Color::Green).expect("flip");

    for (name, p) in [("long-lived", &long), ("new", &fresh)] {
        let st = p.wait_timeout(Duration::from_secs(40)).expect("wait");
        assert!(
            st.is_some_and(|s| s.success()),
            "{name} connection failed (reset?): {:?} {}",
            st,
            p.stderr_tail(10)
        );
    }
    let a = rig
        .wait_stream("a", 2500, Duration::from_secs(10))
        .expect("sinks");
    let b = rig
        .wait_stream("b", 600, Duration::from_secs(10))
        .expect("sinks");
    assert_eq!(a.loss_and_duplicates(2500), (vec![], vec![]));
    assert_eq!(b.loss_and_duplicates(600), (vec![], vec![]));
    assert_eq!(
        (a.blue.len(), a.green.len()),
        (2500, 0),
        "established connection stays on blue"
    );
    assert_eq!(
        (b.blue.len(), b.green.len()),
        (0, 600),
        "new connection goes to green"
    );

    let client_after = rig.lab.snmp(Host::Client).expect("snmp");
    assert_eq!(
        client_after.tcp_estab_resets, client_before.tcp_estab_resets,
        "client saw a reset"
    );
    assert_eq!(
        client_after.tcp_in_csum_errors, client_before.tcp_in_csum_errors,
        "reply checksums"
    );
    for h in [Host::Blue, Host::Green] {
        assert_eq!(
            rig.lab.snmp(h).expect("snmp").tcp_in_csum_errors,
            0,
            "{h:?} TCP checksum errors"
        );
    }
    let status = rig.status().expect("status");
    let s = service(&status, svc);
    assert_eq!((s.blue.new_flows, s.green.new_flows), (1, 1));
    assert_eq!(s.blue.pin_misses + s.green.pin_misses, 0);
}

#[test]
fn tcp4_established_stays_on_blue_new_goes_green() {
    if privileged() {
        tcp_pinned_across_flips("tr", false, "redirect");
    }
}

#[test]
fn tcp6_established_stays_on_blue_new_goes_green() {
    if privileged() {
        tcp_pinned_across_flips("ts", true, "pass");
    }
}

/// Real tools end to end: `logger` (UDP, and TCP with octet counting) to a real rsyslogd on
/// each backend, through the VIP, before and after a flip, over IPv4 and IPv6.
#[test]
fn logger_and_rsyslog_work_through_the_switch() {
    if !privileged() {
        return;
    }
    const RS_PORT: u16 = 1514;
    let mut services = String::new();
    for (name, vip, proto, blue, green) in [
        (
            "rs-udp4",
            VIP_V4.to_string(),
            "udp",
            "198.18.1.2".to_string(),
            "198.18.2.2".to_string(),
        ),
        (
            "rs-tcp4",
            VIP_V4.to_string(),
            "tcp",
            "198.18.1.2".into(),
            "198.18.2.2".into(),
        ),
        (
            "rs-tcp6",
            VIP_V6.to_string(),
            "tcp",
            "[2001:2:0:1::2]".into(),
            "[2001:2:0:2::2]".into(),
        ),
    ] {
        services.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {RS_PORT}\nprotocol = \"{proto}\"\n\
             blue = {{ backend = \"{blue}:{RS_PORT}\" }}\ngreen = {{ backend = \"{green}:{RS_PORT}\" }}\n"
        ));
    }
    let rig = Rig::up("rs", &services).expect("rig up");
    let mut files = Vec::new();
    for h in [Host::Blue, Host::Green] {
        let out = rig.dir.join(format!("rsyslog-{}.log", h.name()));
        let work = rig.dir.join(format!("rsyslog-{}", h.name()));
        std::fs::create_dir_all(&work).expect("workdir");
        rig.lab
            .start_rsyslog(h, RS_PORT, &out, &work)
            .expect("rsyslog");
        files.push(out);
    }
    let port = RS_PORT.to_string();
    let send = |vip: &str, how: &[&str], msg: &str| {
        let mut args = vec!["logger", "-n", vip, "-P", &port];
        args.extend_from_slice(how);
        args.push(msg);
        rig.lab.run(Host::Client, &args).expect("logger");
    };
    let v4 = VIP_V4.to_string();
    let v6 = VIP_V6.to_string();
    for phase in ["blue", "green"] {
        send(&v4, &["--udp"], &format!("{phase}-via-udp4"));
        send(
            &v4,
            &["--tcp", "--octet-count"],
            &format!("{phase}-via-tcp4"),
        );
        send(
            &v6,
            &["--tcp", "--octet-count"],
            &format!("{phase}-via-tcp6"),
        );
        if phase == "blue" {
            for s in ["rs-udp4", "rs-tcp4", "rs-tcp6"] {
                rig.flip(s, Color::Green).expect("flip");
            }
        }
    }
    let expect = |file: &std::path::Path, phase: &str| {
        ["udp4", "tcp4", "tcp6"].iter().all(|t| {
            std::fs::read_to_string(file).is_ok_and(|s| s.contains(&format!("{phase}-via-{t}")))
        })
    };
    // On timeout the asserts below say what is missing.
    let _ = poll::until_true(
        "rsyslog to write every line",
        Duration::from_secs(10),
        || Ok(expect(&files[0], "blue") && expect(&files[1], "green")),
    );
    let blue = std::fs::read_to_string(&files[0]).unwrap_or_default();
    let green = std::fs::read_to_string(&files[1]).unwrap_or_default();
    for t in ["udp4", "tcp4", "tcp6"] {
        assert!(
            blue.contains(&format!("blue-via-{t}")),
            "blue rsyslog missing {t}:\n{blue}"
        );
        assert!(
            green.contains(&format!("green-via-{t}")),
            "green rsyslog missing {t}:\n{green}"
        );
        assert!(
            !green.contains(&format!("blue-via-{t}")),
            "pre-flip line on green"
        );
        assert!(
            !blue.contains(&format!("green-via-{t}")),
            "post-flip line on blue"
        );
    }
}

/// A UDP stream to udp4 after a flip to green, so every line that arrives was steered by the
/// datapath (the edge has no route for the VIP: an unsteered line is lost, never delivered).
/// Returns the sender once green receives the stream.
fn green_udp_stream(rig: &Rig, stream: &str, count: u64) -> (Proc, Received) {
    assert!(rig.flip("udp4", Color::Green).expect("flip").changed);
    // 1500 lines/s for 10 s: it keeps running through every daemon change below.
    let sender = rig.stream("udp", stream, count, 1500).expect("sender");
    let r = rig
        .wait_received(stream, "the stream at green", WAIT, |r| {
            r.green.len() >= 500
        })
        .expect("stream reaches green");
    (sender, r)
}

/// Replaces the daemon while `sender` keeps sending `stream`: `stop` takes the running one
/// away; with `gap`, lines must keep arriving with no daemon at all; then a new daemon starts
/// over the pins, adopting them and swapping the programs inside the pinned links (the same
/// link ids, new program ids) while the stream runs, and lines keep arriving after it.
fn replace_daemon_under_traffic(
    rig: &mut Rig,
    sender: &Proc,
    stream: &str,
    stop: impl FnOnce(&mut Rig),
    gap: bool,
) {
    let old = rig.pinned_links().expect("pinned links");
    let r0 = rig.received(stream).expect("sinks");
    stop(rig);
    if gap {
        // Nothing runs but the pinned programs.
        wait_more(rig, stream, Color::Green, &r0, 300);
    }
    assert_running(sender, "the new daemon's start");
    rig.start_daemon()
        .expect("a new daemon adopts the pinned datapath");
    // The stream ran through the whole start, swap included.
    assert_running(sender, "the end of the new daemon's start");
    let new = rig.pinned_links().expect("pinned links");
    assert_eq!(
        (new.xdp_link, new.tc_link, new.shadow_link),
        (old.xdp_link, old.tc_link, old.shadow_link),
        "the pinned links stay (never detached)"
    );
    assert!(
        new.xdp_prog != old.xdp_prog
            && new.tc_prog != old.tc_prog
            && new.shadow_prog != old.shadow_prog,
        "the new daemon swaps its programs into the pinned links: {old:?} -> {new:?}"
    );
    let r1 = rig.received(stream).expect("sinks");
    wait_more(rig, stream, Color::Green, &r1, 300);
}

/// Every line of a finished green stream arrived exactly once, at green (none unsteered,
/// none at the other colour), the datapath counted each one (its counters survived every
/// adoption), and green's socket dropped nothing (so a loss would be the switch's).
fn assert_green_stream_complete(
    rig: &Rig,
    sender: &Proc,
    stream: &str,
    count: u64,
    green_snmp_before: &switcher_tests::lab::Snmp,
) {
    let sent = rig::finish_sender(sender, Duration::from_secs(70)).expect("sender");
    assert_eq!(sent, count);
    let got = rig
        .wait_stream(stream, count as usize, Duration::from_secs(10))
        .expect("sinks");
    let (lost, dup) = got.loss_and_duplicates(count);
    let after = rig.lab.snmp(Host::Green).expect("snmp");
    assert_eq!(
        after.udp_rcvbuf_errors - green_snmp_before.udp_rcvbuf_errors,
        0,
        "green's receive buffer overflowed: a receiver problem, not the switch"
    );
    assert!(
        lost.is_empty(),
        "{} lines lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(dup.is_empty(), "{} lines duplicated", dup.len());
    assert_eq!(got.blue.len(), 0, "lines reached blue");
    let status = rig.status().expect("status");
    let s = service(&status, "udp4");
    assert_eq!(s.active, Color::Green, "the active colour survives");
    assert_eq!(
        s.green.packets,
        got.green.len() as u64,
        "every line was steered by the datapath, whose counters survive adoption"
    );
}

/// `kill -9` of the daemon leaves the datapath pinned and attached, as a crash would: traffic
/// keeps flowing with no daemon, and a new daemon adopts it while the stream runs, swapping
/// its programs into the pinned links: no line lost, every line steered, counters kept.
#[test]
fn restarted_daemon_adopts_the_pinned_datapath() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up("ad", &rig::standard_services("redirect", "")).expect("rig up");
    let green_before = rig.lab.snmp(Host::Green).expect("snmp");
    let count = 15_000;
    let (sender, _) = green_udp_stream(&rig, "k", count);
    replace_daemon_under_traffic(
        &mut rig,
        &sender,
        "k",
        |rig| rig.kill_daemon().expect("kill -9"),
        true,
    );
    assert_green_stream_complete(&rig, &sender, "k", count, &green_before);
}

/// README: with `--keep-attached`, stopping (SIGTERM), restarting and upgrading the daemon
/// leave the datapath attached; the next daemon adopts it, swapping its programs into the
/// pinned links. A UDP stream runs through a stop, a pause with no daemon and a start, then an
/// upgrade-style restart (stop and start at once): no line is lost, every line is steered.
#[test]
fn keep_attached_stop_restart_and_upgrade_lose_no_line() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up_with(
        "ka",
        &rig::standard_services("redirect", ""),
        OnStop::KeepAttached,
    )
    .expect("rig up");
    let green_before = rig.lab.snmp(Host::Green).expect("snmp");
    let count = 15_000;
    let (sender, _) = green_udp_stream(&rig, "r", count);
    // The rig checks that the stopped daemon left its links pinned.
    let sigterm = |rig: &mut Rig| rig.stop_daemon().expect("SIGTERM with --keep-attached");
    replace_daemon_under_traffic(&mut rig, &sender, "r", sigterm, true);
    replace_daemon_under_traffic(&mut rig, &sender, "r", sigterm, false);
    assert_green_stream_complete(&rig, &sender, "r", count, &green_before);
}

/// The flow table survives adoption: a TCP connection opened while blue is active keeps
/// delivering to blue after a flip to green and a daemon restart with `--keep-attached`
/// (the new daemon swaps the programs), with no reset and no line lost, found in the flow
/// table every time (no pin misses); a new connection goes to green.
#[test]
fn established_tcp_connection_survives_adoption() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up_with(
        "fa",
        &rig::standard_services("redirect", ""),
        OnStop::KeepAttached,
    )
    .expect("rig up");
    let client_before = rig.lab.snmp(Host::Client).expect("snmp");
    // 300 lines/s for 10 s on one connection.
    let long = rig
        .stream("tcp", "a", 3000, 300)
        .expect("long-lived sender");
    let a0 = rig
        .wait_received("a", "the connection delivering to blue", WAIT, |r| {
            r.blue.len() >= 150
        })
        .expect("connection up");
    assert!(rig.flip("tcp4", Color::Green).expect("flip").changed);
    let old = rig.pinned_links().expect("pinned links");
    rig.stop_daemon().expect("SIGTERM with --keep-attached");
    assert_running(&long, "the restart");
    rig.start_daemon()
        .expect("a new daemon adopts the pinned datapath");
    assert_running(&long, "the end of the restart");
    let new = rig.pinned_links().expect("pinned links");
    assert_eq!(new.xdp_link, old.xdp_link, "same pinned link");
    assert_ne!(new.xdp_prog, old.xdp_prog, "new program swapped in");
    wait_more(&rig, "a", Color::Blue, &a0, 300);
    let fresh = rig.stream("tcp", "b", 300, 300).expect("new sender");
    for (name, p) in [("long-lived", &long), ("new", &fresh)] {
        let st = p.wait_timeout(Duration::from_secs(70)).expect("wait");
        assert!(
            st.is_some_and(|s| s.success()),
            "{name} connection failed (reset?): {:?} {}",
            st,
            p.stderr_tail(10)
        );
    }
    let a = rig
        .wait_stream("a", 3000, Duration::from_secs(10))
        .expect("sinks");
    let b = rig
        .wait_stream("b", 300, Duration::from_secs(10))
        .expect("sinks");
    assert_eq!(a.loss_and_duplicates(3000), (vec![], vec![]));
    assert_eq!(b.loss_and_duplicates(300), (vec![], vec![]));
    assert_eq!(
        (a.blue.len(), a.green.len()),
        (3000, 0),
        "the established connection stays on blue across the adoption"
    );
    assert_eq!(
        (b.blue.len(), b.green.len()),
        (0, 300),
        "a new connection goes to green"
    );
    let client_after = rig.lab.snmp(Host::Client).expect("snmp");
    assert_eq!(
        client_after.tcp_estab_resets, client_before.tcp_estab_resets,
        "client saw a reset"
    );
    let status = rig.status().expect("status");
    let s = service(&status, "tcp4");
    assert_eq!(s.active, Color::Green);
    assert_eq!((s.blue.new_flows, s.green.new_flows), (1, 1));
    assert_eq!(
        (s.blue.pin_misses, s.green.pin_misses),
        (0, 0),
        "packets of the established connection missed the flow table: it did not survive"
    );
}

/// README: without `--keep-attached`, SIGTERM detaches and unpins everything: the pins folder
/// is gone, no program is attached in the edge any more, and the XDP and TC links no longer
/// exist.
#[test]
fn sigterm_without_keep_attached_detaches_and_unpins_everything() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up("un", &rig::standard_services("redirect", "")).expect("rig up");
    assert_eq!(rig.on_stop(), OnStop::Detach);
    let pins = rig.pins_left().expect("pins");
    for kind in ["xdp", "tc", "tc-ingress"] {
        let want = format!("{kind}-{EDGE_TO_CLIENT}");
        assert!(
            pins.iter().any(|p| p.ends_with(&want)),
            "{want} pinned: {pins:?}"
        );
    }
    // bpftool 7.1 lists the XDP program but not tcx links: the link ids below cover both.
    let attached = rig.edge_programs().expect("bpftool net show");
    assert!(
        attached.contains(EDGE_TO_CLIENT),
        "XDP on {EDGE_TO_CLIENT}:\n{attached}"
    );
    let links = rig.pinned_links().expect("pinned links");

    // The rig fails this step itself if the daemon leaves any pin behind.
    rig.stop_daemon().expect("SIGTERM without --keep-attached");
    assert!(
        !rig.bpffs.exists(),
        "{} left: {:?}",
        rig.bpffs.display(),
        rig.pins_left()
    );
    let attached = rig.edge_programs().expect("bpftool net show");
    assert!(
        !attached.contains(EDGE_TO_CLIENT),
        "programs still attached to {EDGE_TO_CLIENT}:\n{attached}"
    );
    for id in [links.xdp_link, links.tc_link, links.shadow_link] {
        poll::until_true(
            &format!("link {id} to be released"),
            Duration::from_secs(5),
            || {
                let st = std::process::Command::new("bpftool")
                    .args(["link", "show", "id", &id.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()?;
                Ok(!st.success())
            },
        )
        .expect("link released");
    }
}

/// The actor of a CLI request is `cli:USER (pid N)`, N being the pid of the `switcher`
/// process that made it (the socket's peer credentials), as `history --json` shows.
#[test]
fn cli_requests_record_the_caller_as_actor() {
    if !privileged() {
        return;
    }
    let rig = Rig::up(
        "ac",
        &rig::standard_services("redirect", switcher_tests::services::STANDARD_CHECKS),
    )
    .expect("rig up");
    let ok = |(pid, out): (u32, std::process::Output)| {
        assert!(
            out.status.success(),
            "switcher CLI failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (pid, out)
    };
    let green = format!("{GREEN_V4}:{UDP_PORT}");
    let (deploy_pid, _) = ok(rig
        .cli(&["deploy", "udp4", "--green", &green, "--version", "v2"])
        .expect("switcher deploy"));
    let (flip_pid, _) = ok(rig
        .cli(&[
            "flip",
            "udp4",
            "--to",
            "green",
            "--force",
            "--reason",
            "actor check",
        ])
        .expect("switcher flip"));
    let (_, out) = ok(rig
        .cli(&["history", "udp4", "--json"])
        .expect("switcher history"));
    let history: Vec<Deployment> = serde_json::from_slice(&out.stdout).expect("history JSON");
    let d = history.last().expect("a deployment");
    let step = |to: Phase| {
        d.transitions
            .iter()
            .find(|t| t.to == to)
            .unwrap_or_else(|| panic!("{to:?} in {:?}", d.transitions))
    };
    assert_eq!(
        step(Phase::Deployed).actor,
        format!("cli:root (pid {deploy_pid})")
    );
    let flipped = step(Phase::Promoted);
    assert_eq!(flipped.actor, format!("cli:root (pid {flip_pid})"));
    assert!(flipped.reason.contains("actor check"), "{}", flipped.reason);
}

/// Issue 11: a second `switcher daemon` with the same `bpffs_dir` but its own socket and state
/// folder (so neither socket nor state can stop it) used to adopt the live datapath and
/// reprogram it from its own config, here one with no service at all. Now the datapath's lock
/// stops it before it touches anything, naming the running daemon's pid; `switcher detach`
/// (pointed at no daemon's socket) refuses the same way. The running daemon still has every
/// service programmed and the datapath still steers all four to blue.
#[test]
fn a_second_daemon_on_the_same_datapath_stops_and_names_the_first() {
    if !privileged() {
        return;
    }
    let rig = Rig::up("sd", &rig::standard_services("redirect", "")).expect("rig up");
    let first = rig.daemon().expect("the rig's daemon").pid();
    let before = rig.status().expect("status");
    let names = |st: &StatusView| -> Vec<(String, Color, u32)> {
        st.services
            .iter()
            .map(|s| (s.name.clone(), s.active, s.generation))
            .collect()
    };

    let second_dir = rig.dir.join("second");
    std::fs::create_dir_all(&second_dir).expect("second daemon's folder");
    let config = second_dir.join("switcher.toml");
    let text = switcher_tests::services::lab_config(EDGE_TO_CLIENT, &rig.bpffs, &second_dir, "");
    std::fs::write(&config, text).expect("second config");
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", rig.lab.ns(Host::Edge)))
        .arg(rig::bin("switcher").expect("switcher binary"))
        .args(["daemon", "--config"])
        .arg(&config);
    let second = rig.lab.spawn_command(cmd).expect("start the second daemon");
    let exited = second
        .wait_timeout(Duration::from_secs(15))
        .expect("wait for the second daemon");
    if exited.is_none() {
        let _ = second.stop();
        panic!(
            "the second daemon kept running on the first one's datapath: {}",
            second.stderr_tail(20)
        );
    }
    assert!(
        exited.is_some_and(|st| !st.success()),
        "the second daemon must exit non-zero: {exited:?}"
    );
    let err = second.stderr_tail(20);
    assert!(
        err.contains(&format!("pid {first}")) && err.contains(&rig.bpffs.display().to_string()),
        "the refusal names the running daemon's pid and the datapath: {err}"
    );
    assert!(
        !second_dir.join("switcher.sock").exists()
            && !second_dir.join("state").join("state.json").exists(),
        "the second daemon stopped before its socket and state"
    );

    // `detach` with a socket no daemon serves: only the lock can stop it.
    let out = std::process::Command::new(rig::bin("switcher").expect("switcher binary"))
        .arg("--socket")
        .arg(second_dir.join("nobody.sock"))
        .arg("detach")
        .arg("--bpffs-dir")
        .arg(&rig.bpffs)
        .output()
        .expect("switcher detach");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("pid {first}")),
        "detach must refuse while the daemon runs: {err}"
    );
    assert!(!rig.pins_left().expect("pins").is_empty(), "pins kept");

    let after = rig.status().expect("the first daemon still answers");
    assert_eq!(
        names(&after),
        names(&before),
        "every service still programmed"
    );
    // Every service still steered by the datapath: all lines at blue, counted per colour.
    for (i, (svc, proto, v6, port)) in [
        ("udp4", "udp", false, UDP_PORT),
        ("tcp4", "tcp", false, TCP_PORT),
        ("udp6", "udp", true, UDP_PORT),
        ("tcp6", "tcp", true, TCP_PORT),
    ]
    .into_iter()
    .enumerate()
    {
        let stream = format!("s{i}");
        let sender = rig
            .send(
                &target(v6, port),
                &[
                    "--proto",
                    proto,
                    "--count",
                    "200",
                    "--rate",
                    "400",
                    "--stream",
                    &stream,
                    "--max-seconds",
                    "30",
                ],
            )
            .expect("sender");
        assert_eq!(
            rig::finish_sender(&sender, Duration::from_secs(40)).expect("sender"),
            200
        );
        let got = rig
            .wait_stream(&stream, 200, Duration::from_secs(10))
            .expect("sinks");
        assert_eq!(got.loss_and_duplicates(200), (vec![], vec![]), "{svc}");
        assert_eq!((got.blue.len(), got.green.len()), (200, 0), "{svc} at blue");
        // One datagram per UDP line; TCP may carry several lines in a segment.
        let packets = |st: &StatusView| service(st, svc).blue.packets;
        let want = packets(&before) + if proto == "udp" { 200 } else { 1 };
        let now = packets(&rig.status().expect("status"));
        assert!(
            now >= want,
            "{svc}: the datapath counted {now} packets to blue, want at least {want}"
        );
    }
}

/// XDP_REDIRECT into a veth whose peer has neither XDP nor GRO is dropped by the kernel after
/// the program returns. The daemon tracks which interfaces can take redirected frames, and
/// the datapath hands everything else to the kernel: nothing is lost.
#[test]
fn redirect_falls_back_to_the_kernel_when_the_target_cannot_take_xdp_frames() {
    if !privileged() {
        return;
    }
    let rig = Rig::up("gr", &rig::standard_services("redirect", "")).expect("rig up");
    assert!(
        rig.redirect_ok(EDGE_TO_GREEN).expect("REDIRECT_OK"),
        "{EDGE_TO_GREEN} starts as a redirect target (its peer has GRO)"
    );
    rig.lab
        .run(Host::Green, &["ethtool", "-K", "eth0", "gro", "off"])
        .expect("gro off");
    // The daemon refreshes the redirect targets every 2 s.
    poll::until_true(
        &format!("the daemon to drop {EDGE_TO_GREEN} from the redirect targets"),
        Duration::from_secs(10),
        || Ok(!rig.redirect_ok(EDGE_TO_GREEN)?),
    )
    .expect("redirect targets refreshed");
    rig.flip("udp4", Color::Green).expect("flip");
    let before = rig.status().expect("status");
    let s = rig
        .send(
            &target(false, UDP_PORT),
            &[
                "--proto", "udp", "--count", "2000", "--rate", "2000", "--stream", "g",
            ],
        )
        .expect("sender");
    assert!(s
        .wait_timeout(Duration::from_secs(20))
        .expect("wait")
        .is_some_and(|s| s.success()));
    let got = rig
        .wait_stream("g", 2000, Duration::from_secs(10))
        .expect("sinks");
    assert_eq!(got.loss_and_duplicates(2000), (vec![], vec![]));
    assert_eq!(got.green.len(), 2000);
    let after = rig.status().expect("status");
    assert_eq!(
        reason(&after, "redirected"),
        reason(&before, "redirected"),
        "no redirect to green"
    );
    assert!(reason(&after, "fib_fallback") - reason(&before, "fib_fallback") >= 2000);
}
