//! The systemd unit shipped in switcher-userspace/dist, and the daemon's side of it. PID 1 on
//! these machines is not systemd, so the unit is checked statically (`systemd-analyze verify`
//! and `security`) and each of its promises is checked against the real daemon in the lab:
//! - its capability bounding set is enough for a deployment with traffic, and each
//!   capability in it is needed (the daemon fails to start without it);
//! - every system call the daemon makes (traced with `perf trace`) is allowed by its
//!   `SystemCallFilter=` lines;
//! - `Type=notify`: READY=1 only once the API answers, WATCHDOG=1 at half `WATCHDOG_USEC`,
//!   STOPPING=1 on SIGTERM, over a notification socket of our own;
//! - journald-native logging when stderr is the journal, over a journal socket of our own;
//!   plain text without colour on a pipe.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{output, privileged};
use switcher::domain::Color;
use switcher_tests::{
    rig::{self, OnStop, Rig},
    services::STANDARD_CHECKS,
};

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../switcher-userspace/dist/switcher.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("read the unit")
}

/// The values of every `key=` line of the unit, in order.
fn directive(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// A lab with the standard services whose daemon was stopped (detached), for a test to
/// start its own under some wrapper.
fn rig_without_daemon(tag: &str) -> Rig {
    let mut rig = Rig::up_with(
        tag,
        &rig::standard_services("redirect", STANDARD_CHECKS),
        OnStop::Detach,
    )
    .expect("rig");
    rig.stop_daemon().expect("stop the rig's daemon");
    rig
}

/// The shipped unit with ExecStart/ExecReload pointing at the binary just built (verify
/// checks that the command exists), in a folder of its own.
fn unit_copy(dir: &Path) -> PathBuf {
    let sw = rig::bin("switcher").expect("switcher binary");
    let text = unit_text().replace("/usr/bin/switcher", &sw.display().to_string());
    std::fs::create_dir_all(dir).expect("dir");
    let p = dir.join("switcher.service");
    std::fs::write(&p, text).expect("write unit");
    p
}

#[test]
fn the_unit_verifies_and_its_exposure_is_low() {
    let dir = std::env::temp_dir().join(format!("switcher-unit-{}", std::process::id()));
    let unit = unit_copy(&dir);
    // --man=no: the man page is installed by the package (its test runs verify with it).
    let (ok, text) = output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
    );
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let (_, text) = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let level = text
        .lines()
        .find_map(|l| l.split("switcher.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(
        level <= 2.5,
        "exposure {level} (was 9.7 for the unhardened unit):\n{text}"
    );
    // The directives the daemon's design depends on.
    let unit = unit_text();
    assert_eq!(directive(&unit, "Type"), ["notify"]);
    assert_eq!(directive(&unit, "ExecReload"), ["/usr/bin/switcher reload"]);
    assert!(!directive(&unit, "WatchdogSec").is_empty());
    assert_eq!(directive(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(directive(&unit, "ProtectSystem"), ["strict"]);
}

/// `setpriv` arguments that give a root process the unit's capability bounding set (for
/// uid 0 the bounding set is what exec leaves it), minus `drop`, and NoNewPrivileges.
fn setpriv_args(drop: Option<&str>) -> Vec<String> {
    let unit = unit_text();
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| Some(c.as_str()) != drop)
        .collect();
    assert!(!caps.is_empty(), "the unit bounds no capability");
    let bounding = format!(
        "-all{}",
        caps.iter().map(|c| format!(",+{c}")).collect::<String>()
    );
    let mut args = vec!["setpriv".to_string()];
    if directive(&unit, "NoNewPrivileges") == ["yes"] {
        args.push("--no-new-privs".into());
    }
    args.extend(["--inh-caps", "-all", "--bounding-set"].map(String::from));
    args.push(bounding);
    args
}

/// The unit's CapabilityBoundingSet, as `setpriv` names them (`bpf`, `net_admin`, ...).
fn unit_capabilities() -> Vec<String> {
    directive(&unit_text(), "CapabilityBoundingSet")
        .join(" ")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// A stream of `n` UDP lines lands whole on `colour`.
fn lines_land_on(rig: &Rig, stream: &str, n: u64, colour: Color) {
    let p = rig.stream("udp", stream, n, 500).expect("stream");
    let r = rig
        .wait_stream(stream, n as usize, Duration::from_secs(20))
        .expect("received");
    let _ = p.wait_timeout(Duration::from_secs(5));
    let (lost, dup) = r.loss_and_duplicates(n);
    assert!(
        lost.is_empty() && dup.is_empty(),
        "lost {lost:?} dup {dup:?}"
    );
    let got = match colour {
        Color::Blue => r.blue.len(),
        Color::Green => r.green.len(),
    };
    assert_eq!(got as u64, n, "{stream}: all at {colour:?}");
}

#[test]
fn the_daemon_works_with_the_units_capabilities_and_needs_each_of_them() {
    if !privileged() {
        return;
    }
    let mut rig = rig_without_daemon("cap");

    let full = setpriv_args(None);
    rig.set_daemon_prefix(&full.iter().map(String::as_str).collect::<Vec<_>>());
    rig.start_daemon()
        .expect("the daemon starts with the unit's capabilities");
    let pid = rig.daemon().expect("daemon").pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim()
        .to_string();
    // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(
        eff, "000000c000001000",
        "the daemon's effective capabilities"
    );
    lines_land_on(&rig, "caps-blue", 300, Color::Blue);
    rig.flip("udp4", Color::Green).expect("flip");
    lines_land_on(&rig, "caps-green", 300, Color::Green);
    let m = rig.metrics().expect("metrics");
    assert!(m.contains("switcher_active_color"), "metrics served");
    rig.stop_daemon().expect("stops cleanly and detaches");

    for cap in unit_capabilities() {
        let fewer = setpriv_args(Some(&cap));
        rig.set_daemon_prefix(&fewer.iter().map(String::as_str).collect::<Vec<_>>());
        let started = Instant::now();
        let e = rig
            .start_daemon()
            .expect_err(&format!("the daemon must not start without CAP_{cap}"));
        let why = format!("{e:#}");
        eprintln!(
            "without CAP_{}: refused after {:?}: {}",
            cap.to_ascii_uppercase(),
            started.elapsed(),
            why.lines().last().unwrap_or_default()
        );
        // Refused by the kernel for want of the capability, not for anything else.
        assert!(
            why.contains("Operation not permitted") || why.contains("Permission denied"),
            "without CAP_{cap}: {why}"
        );
        assert!(
            rig.pins_left().expect("pins").is_empty(),
            "a daemon that failed to start left pins"
        );
    }
    rig.set_daemon_prefix(&[]);
    rig.down().expect("down");
}

#[test]
fn restarts_under_the_units_capabilities_adopt_the_datapath_and_reattach_a_dead_link() {
    if !privileged() {
        return;
    }
    let mut rig = rig_without_daemon("cpr");
    let caps = setpriv_args(None);
    rig.set_daemon_prefix(&caps.iter().map(String::as_str).collect::<Vec<_>>());
    // The unit's way: --keep-attached, so every restart adopts the pinned datapath.
    rig.start_daemon_with(OnStop::KeepAttached)
        .expect("first start with the unit's capabilities");
    rig.flip("udp4", Color::Green).expect("flip");
    let first = rig.pinned_links().expect("links");
    rig.stop_daemon()
        .expect("stop, leaving the datapath attached");
    rig.start_daemon()
        .expect("restart adopts the pinned datapath");
    let adopted = rig.pinned_links().expect("links");
    assert_eq!(
        adopted.xdp_link, first.xdp_link,
        "the same link, its program replaced"
    );
    lines_land_on(&rig, "cpr-adopted", 200, Color::Green);
    rig.stop_daemon().expect("stop");

    // Someone detaches the XDP link behind the daemon's back (as a replaced interface
    // would): the pin stays, the link is dead. The next start notices and attaches afresh.
    let pin = switcher::datapath::pins_dir(&rig.bpffs)
        .join("links")
        .join(format!("xdp-{}", rig::EDGE_TO_CLIENT));
    let (ok, text) = output(
        Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(&pin),
    );
    assert!(ok, "bpftool link detach: {text}");
    rig.start_daemon()
        .expect("a restart over a dead link attaches afresh instead of failing");
    let fresh = rig.pinned_links().expect("links");
    assert_ne!(fresh.xdp_link, first.xdp_link, "a new XDP link");
    assert!(
        rig.daemon()
            .expect("daemon")
            .stderr_tail(50)
            .contains("no longer runs on"),
        "the daemon says why it attached afresh"
    );
    lines_land_on(&rig, "cpr-fresh", 200, Color::Green);
    let m = rig.metrics().expect("metrics");
    assert!(
        m.contains(&format!(
            "switcher_xdp_attached{{interface=\"{}\",mode=\"native\"}} 1",
            rig::EDGE_TO_CLIENT
        )),
        "XDP native again"
    );
    rig.set_daemon_prefix(&[]);
    rig.stop_daemon().expect("stop");
    rig.down().expect("down");
}

/// Every group of `systemd-analyze syscall-filter`, its members as listed (syscalls and
/// nested groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let (ok, text) = output(Command::new("systemd-analyze").arg("syscall-filter"));
    assert!(ok, "systemd-analyze syscall-filter:\n{text}");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.entry(line.trim().to_string()).or_default();
        } else if let Some(g) = &current {
            let item = line.trim();
            if !item.is_empty() && !item.starts_with('#') {
                groups.entry(g.clone()).or_default().push(item.to_string());
            }
        }
    }
    groups
}

fn expand(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    match groups.get(item) {
        Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
        None if item.starts_with('@') => panic!("unknown syscall group {item}"),
        None => {
            out.insert(item.to_string());
        }
    }
}

/// What the unit's `SystemCallFilter=` lines allow, applied in order as systemd does: the
/// first (an allow list) sets the list, `~` lines remove from it, others add to it.
fn allowed_syscalls() -> BTreeSet<String> {
    let groups = syscall_groups();
    let mut allowed = BTreeSet::new();
    let lines = directive(&unit_text(), "SystemCallFilter");
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the first SystemCallFilter= line must be an allow list: {lines:?}"
    );
    for line in lines {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let mut set = BTreeSet::new();
        items
            .split_whitespace()
            .for_each(|i| expand(i, &groups, &mut set));
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// The system calls in a `perf trace -s` summary (`  name  calls  errors  total ...`).
fn traced_syscalls(summary: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in summary.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4
            && f[0]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && f[1].parse::<u64>().is_ok()
            && f[2].parse::<u64>().is_ok()
            && f[3].parse::<f64>().is_ok()
        {
            *out.entry(f[0].to_string()).or_default() += f[1].parse::<u64>().unwrap_or(0);
        }
    }
    out
}

#[test]
fn every_system_call_the_daemon_makes_is_allowed_by_the_unit() {
    if !privileged() {
        return;
    }
    let allowed = allowed_syscalls();
    assert!(allowed.contains("bpf"), "the filter must allow bpf(2)");
    let mut rig = rig_without_daemon("sys");
    let trace = rig.dir.join("perf-trace.txt");
    let trace_s = trace.display().to_string();
    rig.set_daemon_prefix(&["perf", "trace", "-s", "-o", &trace_s, "--"]);
    rig.start_daemon()
        .expect("the daemon starts under perf trace");
    // A deployment's worth of work: traffic, status, flip, metrics, a reload, a refused
    // reload, then SIGTERM with detach.
    lines_land_on(&rig, "sys-blue", 100, Color::Blue);
    rig.status().expect("status");
    rig.flip("udp4", Color::Green).expect("flip");
    lines_land_on(&rig, "sys-green", 100, Color::Green);
    rig.metrics().expect("metrics");
    let (_, out) = rig.cli(&["reload"]).expect("reload");
    assert!(out.status.success(), "reload: {out:?}");
    // ExecReload=switcher reload: an invalid file fails the command (so `systemctl reload`
    // fails), names the field, and changes nothing.
    let good = std::fs::read_to_string(&rig.config).expect("config");
    // A valid change (udp services to 515) next to an invalid one (tcp services' port).
    let bad = good
        .replace("port = 514", "port = 515")
        .replace("port = 601", "port = 70000");
    std::fs::write(&rig.config, bad).expect("bad config");
    let (_, out) = rig.cli(&["reload"]).expect("reload");
    std::fs::write(&rig.config, &good).expect("restore config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a refused reload exits 4: {err}"
    );
    assert!(err.contains("70000 is not a port"), "{err}");
    let st = rig.status().expect("status");
    assert!(
        st.services.iter().all(|s| s.port == 514 || s.port == 601),
        "the valid part was not applied either"
    );
    // SIGTERM to the daemon itself (perf would die of it, not pass it on); perf writes its
    // summary when its workload exits.
    let perf = rig.daemon().expect("perf").pid();
    let children = std::fs::read_to_string(format!("/proc/{perf}/task/{perf}/children"))
        .expect("perf's children");
    let daemon: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the daemon under perf");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    rig.daemon()
        .expect("perf")
        .wait_timeout(Duration::from_secs(20))
        .expect("wait")
        .expect("perf exits with the daemon");
    rig.stop_daemon().expect("stops cleanly");
    rig.set_daemon_prefix(&[]);
    let summary = std::fs::read_to_string(&trace).expect("perf trace summary");
    let used = traced_syscalls(&summary);
    assert!(
        used.contains_key("bpf") && used.contains_key("epoll_wait"),
        "the trace holds the daemon's calls: {used:?}\n{summary}"
    );
    let refused: Vec<_> = used.keys().filter(|s| !allowed.contains(*s)).collect();
    eprintln!(
        "{} distinct system calls traced, {} calls in all",
        used.len(),
        used.values().sum::<u64>()
    );
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= refuses system calls the daemon makes: {refused:?}"
    );
    rig.down().expect("down");
}

/// Every `KEY=value` of the datagrams on `sock` until `until` holds for what arrived.
fn datagrams_until(
    sock: &UnixDatagram,
    timeout: Duration,
    mut until: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && !until(&got) {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn readiness_watchdog_and_stopping_go_over_the_notify_socket() {
    if !privileged() {
        return;
    }
    let rig = rig_without_daemon("ntf");
    let notify_path = rig.dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let sock = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let sw = rig::bin("switcher").expect("binary");
    let mut cmd = Command::new("nsenter");
    // systemd sets WATCHDOG_PID to the service's main pid: the daemon's, after the exec.
    cmd.arg(format!(
        "--net=/run/netns/{}",
        rig.lab.ns(switcher_tests::lab::Host::Edge)
    ))
    .args(["sh", "-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"])
    .arg(&sw)
    .args(["daemon", "--config"])
    .arg(&rig.config)
    .env("NOTIFY_SOCKET", &notify_path)
    .env("WATCHDOG_USEC", "400000");
    let started = Instant::now();
    let daemon = rig.lab.spawn_command(cmd).expect("spawn the daemon");

    let got = datagrams_until(&sock, Duration::from_secs(30), |g| {
        g.iter().any(|d| d.lines().any(|l| l == "READY=1"))
    });
    let ready = got
        .iter()
        .find(|d| d.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {got:?}\n{}", daemon.stderr_tail(20)));
    assert!(ready.contains("STATUS=serving "), "{ready}");
    // Ready means the API answers at once (no retry) and the datapath is attached.
    let (_, out) = rig.cli(&["status", "--json"]).expect("status");
    assert!(out.status.success(), "status right after READY=1: {out:?}");
    assert!(
        rig.edge_programs().expect("programs").contains("xdp"),
        "XDP attached at READY=1"
    );
    eprintln!("READY=1 after {:?}", started.elapsed());
    assert!(
        !daemon.stdout_lines().iter().any(|l| l == "READY"),
        "under a service manager READY goes to the socket, not to stdout"
    );

    // Pets every quarter of 400 ms: about 20 in 2 s.
    let t0 = Instant::now();
    let pets = datagrams_until(&sock, Duration::from_secs(2), |_| false)
        .iter()
        .filter(|d| d.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    let per_s = pets as f64 / t0.elapsed().as_secs_f64();
    eprintln!("WATCHDOG=1: {pets} in {:?}", t0.elapsed());
    assert!(
        (6.0..=15.0).contains(&per_s),
        "{pets} pets in 2 s at WATCHDOG_USEC=400000"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.pid()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("term");
    let got = datagrams_until(&sock, Duration::from_secs(10), |g| {
        g.iter().any(|d| d.lines().any(|l| l == "STOPPING=1"))
    });
    assert!(
        got.iter().any(|d| d.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 on SIGTERM: {got:?}"
    );
    let st = daemon
        .wait_timeout(Duration::from_secs(15))
        .expect("wait")
        .expect("exited after SIGTERM");
    assert!(st.success(), "{st}: {}", daemon.stderr_tail(10));
    assert!(
        rig.pins_left().expect("pins").is_empty(),
        "detached on exit"
    );
    rig.down().expect("down");
}

/// Fields of journald's native protocol (`KEY=value` lines; values with a newline use the
/// binary form: KEY, newline, 64-bit little-endian length, value, newline).
fn journal_fields(datagram: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            rest = rest.get(end + 1..).unwrap_or_default();
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let after = rest.get(end + 1..).unwrap_or_default();
            let Some(len) = after.get(..8) else { break };
            let len = u64::from_le_bytes(len.try_into().unwrap_or([0; 8])) as usize;
            let value = after.get(8..8 + len).unwrap_or_default();
            out.insert(key, String::from_utf8_lossy(value).into_owned());
            rest = after.get(8 + len + 1..).unwrap_or_default();
        }
    }
    out
}

#[test]
fn logs_go_to_the_journal_natively_and_are_plain_on_a_pipe() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::up_with(
        "jnl",
        &rig::standard_services("redirect", STANDARD_CHECKS),
        OnStop::Detach,
    )
    .expect("rig");
    // The rig's daemon logs to a pipe: plain text, no colour codes.
    let tail = rig.daemon().expect("daemon").stderr_tail(50);
    assert!(tail.contains("service programmed"), "{tail}");
    assert!(!tail.contains('\u{1b}'), "ANSI escapes on a pipe:\n{tail}");
    rig.stop_daemon().expect("stop");

    // A journal socket of our own where the daemon looks for journald's: a private mount
    // namespace binds our folder over /run/systemd/journal. JOURNAL_STREAM names the
    // daemon's stderr, as systemd sets it.
    let jdir = rig.dir.join("journal");
    std::fs::create_dir_all(&jdir).expect("journal dir");
    let sock = UnixDatagram::bind(jdir.join("socket")).expect("bind the journal socket");
    let script = format!(
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && \
         mount --bind {} /run/systemd/journal && \
         JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$@\"",
        jdir.display()
    );
    rig.set_daemon_prefix(&[
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]);
    rig.start_daemon().expect("daemon with the journal");
    let got = datagrams_until(&sock, Duration::from_secs(10), |g| {
        g.iter().any(|d| d.contains("service programmed"))
    });
    rig.stop_daemon().expect("stop");
    rig.set_daemon_prefix(&[]);
    let entry = got
        .iter()
        .map(|d| journal_fields(d.as_bytes()))
        .find(|f| {
            f.get("MESSAGE")
                .is_some_and(|m| m.contains("service programmed"))
        })
        .unwrap_or_else(|| panic!("no journal entry for 'service programmed': {got:?}"));
    assert_eq!(
        entry.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("switcher")
    );
    // INFO is journald's "notice" (5) in tracing-journald's mapping.
    assert_eq!(
        entry.get("PRIORITY").map(String::as_str),
        Some("5"),
        "{entry:?}"
    );
    // Structured fields, searchable with `journalctl SERVICE=udp4`.
    assert!(
        entry.contains_key("SERVICE") && entry.contains_key("VIP"),
        "{entry:?}"
    );
    assert!(
        !entry["MESSAGE"].contains("INFO") && !entry["MESSAGE"].contains('\u{1b}'),
        "the message carries no level, timestamp or colour of its own: {:?}",
        entry["MESSAGE"]
    );
    rig.down().expect("down");
}
