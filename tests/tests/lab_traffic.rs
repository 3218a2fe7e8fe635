//! End to end in the netns lab with real traffic: client → edge (switcher, XDP + TC) → blue or
//! green. Needs root; in CI a missing privilege fails instead of skipping.

mod support;

use std::time::{Duration, Instant};

use support::privileged;
use switcher::config::Color;
use switcher_tests::{
    lab::{Host, VIP_V4, VIP_V6},
    rig::{self, Rig, TCP_PORT, UDP_PORT},
};

fn target(v6: bool, port: u16) -> String {
    if v6 {
        format!("[{VIP_V6}]:{port}")
    } else {
        format!("{VIP_V4}:{port}")
    }
}

/// Runs `f` at `at` after `start`.
fn at(start: Instant, after: Duration) {
    if let Some(d) = (start + after).checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
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
    let start = Instant::now();
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
    at(start, Duration::from_millis(1000));
    assert!(rig.flip(svc, Color::Green).expect("flip").changed);
    at(start, Duration::from_millis(2000));
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
    let s = status
        .services
        .iter()
        .find(|s| s.name == svc)
        .expect("service in status");
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
    // The forwarding path under test really was taken.
    let reason = |label: &str| {
        status
            .reasons
            .iter()
            .find(|(r, _)| r == label)
            .map_or(0, |(_, n)| *n)
    };
    let (path, n) = if forward == "redirect" {
        ("redirected", reason("redirected"))
    } else {
        ("pass_mode", reason("pass_mode"))
    };
    assert!(n > count / 2, "{path} = {n}: reasons {:?}", status.reasons);
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
    let start = Instant::now();
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
    at(start, Duration::from_millis(1000));
    assert!(rig.flip(svc, Color::Green).expect("flip").changed);
    at(start, Duration::from_millis(1500));
    let fresh = rig
        .send(
            &t,
            &[
                "--proto",
                "tcp",
                "--count",
                "300",
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
    at(start, Duration::from_millis(2500));
    rig.flip(svc, Color::Blue).expect("flip");
    at(start, Duration::from_millis(3000));
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
        .wait_stream("b", 300, Duration::from_secs(10))
        .expect("sinks");
    assert_eq!(a.loss_and_duplicates(2500), (vec![], vec![]));
    assert_eq!(b.loss_and_duplicates(300), (vec![], vec![]));
    assert_eq!(
        (a.blue.len(), a.green.len()),
        (2500, 0),
        "established connection stays on blue"
    );
    assert_eq!(
        (b.blue.len(), b.green.len()),
        (0, 300),
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
    let s = status
        .services
        .iter()
        .find(|s| s.name == svc)
        .expect("service");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let expect = |file: &std::path::Path, phase: &str| {
        ["udp4", "tcp4", "tcp6"].iter().all(|t| {
            std::fs::read_to_string(file).is_ok_and(|s| s.contains(&format!("{phase}-via-{t}")))
        })
    };
    while !(expect(&files[0], "blue") && expect(&files[1], "green")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// The daemon leaves the datapath pinned with --keep-attached; a new daemon adopts it
/// without a gap: traffic keeps flowing while no daemon runs, flips survive, counters persist.
#[test]
fn restarted_daemon_adopts_the_pinned_datapath() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up("ad", &rig::standard_services("redirect", "")).expect("rig up");
    rig.flip("udp4", Color::Green).expect("flip");
    // Stop without detaching: kill -9 leaves everything pinned, as a crash would.
    let pid = rig.daemon().expect("daemon").pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    std::thread::sleep(Duration::from_millis(300));
    let s = rig
        .send(
            &target(false, UDP_PORT),
            &[
                "--proto", "udp", "--count", "500", "--rate", "1000", "--stream", "k",
            ],
        )
        .expect("sender");
    assert!(s
        .wait_timeout(Duration::from_secs(20))
        .expect("wait")
        .is_some_and(|s| s.success()));
    let got = rig
        .wait_stream("k", 500, Duration::from_secs(10))
        .expect("sinks");
    assert_eq!(
        (got.blue.len(), got.green.len()),
        (0, 500),
        "green keeps serving with no daemon"
    );
    let _ = rig.stop_daemon();
    rig.start_daemon().expect("restart daemon");
    let st = rig.status().expect("status");
    let svc = st.services.iter().find(|s| s.name == "udp4").expect("udp4");
    assert_eq!(
        svc.active,
        Color::Green,
        "active colour survives the restart"
    );
    assert_eq!(svc.green.packets, 500, "counters survive the restart");
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
    rig.lab
        .run(Host::Green, &["ethtool", "-K", "eth0", "gro", "off"])
        .expect("gro off");
    // The daemon refreshes the redirect targets every 2 s.
    std::thread::sleep(Duration::from_millis(2500));
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
    let reason = |st: &switcher::controller::StatusView, label: &str| {
        st.reasons
            .iter()
            .find(|(r, _)| r == label)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        reason(&after, "redirected"),
        reason(&before, "redirected"),
        "no redirect to green"
    );
    assert!(reason(&after, "fib_fallback") - reason(&before, "fib_fallback") >= 2000);
}
