//! Brings a lab up, checks it works, and checks that teardown leaves nothing behind.
//! Needs root; without root it fails under CI (CI=...) and is skipped otherwise.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switcher_tests::lab::{self, Host, Lab, BLUE_V4, BLUE_V6, EDGE_CLIENT_V4};

/// Whether the test may run; without root it is skipped locally but fails under CI.
fn privileged() -> Result<bool> {
    match lab::require_root() {
        Ok(()) => Ok(true),
        Err(e) if std::env::var_os("CI").is_some() => {
            Err(e.context("CI must run the lab tests as root"))
        }
        Err(e) => {
            eprintln!("skipping lab test: {e:#}");
            Ok(false)
        }
    }
}

#[test]
fn lab_up_ping_snmp_down() -> Result<()> {
    if !privileged()? {
        return Ok(());
    }
    let mut lab = Lab::up(&Lab::unique_prefix("smoke"))?;
    let names: Vec<String> = Host::ALL.iter().map(|h| lab.ns(*h).to_owned()).collect();

    lab.run(
        Host::Client,
        &["ping", "-c1", "-W1", &EDGE_CLIENT_V4.to_string()],
    )?;
    let snmp = lab.snmp(Host::Client)?;
    // The ping above is ICMP; the named UDP/TCP counters of a fresh namespace are all zero.
    assert_eq!(snmp.udp_in_datagrams, 0, "{snmp:?}");
    assert!(snmp.get("IcmpInEchoReps").unwrap_or(0) >= 1, "{snmp:?}");

    // Ignores SIGTERM, so down() must escalate to SIGKILL; its `sleep` child is untracked and
    // must be killed by the namespace sweep.
    let stubborn = lab.spawn_ready(
        Host::Blue,
        "sh",
        &["-c", "trap '' TERM; echo READY; sleep 600; echo done"],
        "READY",
        Duration::from_secs(5),
    )?;

    let started = Instant::now();
    lab.down()?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "down took {:?}",
        started.elapsed()
    );
    assert!(
        stubborn.try_wait()?.is_some(),
        "tracked process still running after down()"
    );
    lab.down()?; // idempotent

    let left = lab::netns_list()?;
    for name in &names {
        assert!(
            !left.contains(name),
            "namespace {name} still exists: {left:?}"
        );
    }
    Ok(())
}

#[test]
fn rsyslog_receives_udp_and_tcp() -> Result<()> {
    if !privileged()? {
        return Ok(());
    }
    let mut lab = Lab::up(&Lab::unique_prefix("rsl"))?;
    let dir = std::env::temp_dir().join(format!("{}-rsyslog", lab.prefix()));
    let out = dir.join("out.log");
    let port = 5514;
    let rsyslog = lab.start_rsyslog(Host::Blue, port, &out, &dir)?;

    let v4 = SocketAddr::from((BLUE_V4, port));
    let v6 = SocketAddr::from((BLUE_V6, port));
    lab::in_netns(lab.ns(Host::Client), || -> Result<()> {
        let udp4 = UdpSocket::bind("0.0.0.0:0")?;
        udp4.send_to(b"<13>Jan  1 00:00:00 client smoke: udp4 line", v4)?;
        let udp6 = UdpSocket::bind("[::]:0")?;
        udp6.send_to(b"<13>Jan  1 00:00:00 client smoke: udp6 line", v6)?;
        let mut tcp = TcpStream::connect_timeout(&v6, Duration::from_secs(2))?;
        tcp.write_all(b"<13>Jan  1 00:00:00 client smoke: tcp6 line\n")?;
        Ok(())
    })??;

    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    rsyslog.stop()?;
    lab.down()?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;

    for want in ["smoke: udp4 line", "smoke: udp6 line", "smoke: tcp6 line"] {
        assert!(
            text.lines().any(|l| l.ends_with(want)),
            "{want:?} missing in:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), 3, "unexpected extra lines:\n{text}");
    Ok(())
}
