//! Section 3, cutover under load: numbered syslog lines over UDP, over long-lived TCP
//! connections and over a new TCP connection every few ms, while each contender that can flip
//! is flipped blue -> green -> blue many times. The sinks stamp every line with its arrival
//! time (CLOCK_MONOTONIC, the clock of the flip commands and of the kernel's flip marks), so
//! every flip gets: time to the first line at the new colour, time to the last line at the old
//! one, and the delivered rate per colour over time for the plot.
//!
//! What fails the section, per contender. For nftables and nginx the point of the comparison
//! is to report what they lose, so their losses, duplicates, resets, failed connections and
//! flips that do not move the traffic are results, not errors. switcher's claim is that a flip
//! loses nothing and breaks nothing, so for it each of those is a failure. In detail:
//! - every contender (the run itself is invalid): a sender that did not finish, that printed
//!   no summary or sent nothing; the UDP sender exiting non-zero, or the TCP sender exiting
//!   with anything but 2 (log-sender's "a TCP connection failed", which is a result for
//!   nftables and nginx); a sender without errors that did not send every line it was asked
//!   for (cut short: the traffic did not span the flips); a UDP or long-lived TCP line whose
//!   seq the sender was never asked to send (the accounting is wrong); no flip that found
//!   the UDP or the new-connection traffic at the colour it was about to leave (the flip
//!   times would be over nothing).
//! - switcher, in addition: either sender exiting non-zero or reporting send errors; any line
//!   lost, duplicated or unexpected (arrived though its write failed); any TCP reset or failed
//!   connect seen by the client (the kernel's EstabResets and AttemptFails, the new-connection
//!   client, log-sender's connection errors), or a backend sending a RST to the client (the
//!   backends' own RST counters also count the daemon's health probes); a long-lived
//!   connection whose lines reached both colours (pinned flows must not move); a flip after
//!   which the traffic stayed at the old colour (the majority of the lines in the second half
//!   of the interval); no in-kernel cutover time for any flip.
//!
//! Lines the senders were asked for but could not send (a connection the contender broke)
//! count as lost: for UDP and long-lived TCP every seq below `--count` is expected once.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switcher::{datapath::monotonic_ns, domain::Color};
use switcher_tests::{
    lab::{in_netns, Host, Snmp, CLIENT_V4, HOST_IF},
    rig,
};

use crate::{
    contenders::{Kind, Stage, TCP_PORT, UDP_PORT},
    plot,
    report::Table,
    traffic::{nft_counter, nft_load},
    Opts,
};

const KINDS: [Kind; 3] = [Kind::SwitcherRedirect, Kind::Nft, Kind::Nginx];
const UDP_RATE: u64 = 2000;
const TCP_RATE: u64 = 1000;
const TCP_CONNECTIONS: u64 = 4;
/// A new TCP connection (one line each) every this often.
const NEW_CONN_EVERY: Duration = Duration::from_millis(20);
const BUCKET: Duration = Duration::from_millis(100);
const WARMUP: Duration = Duration::from_secs(1);
const TAIL: Duration = Duration::from_secs(1);

struct Params {
    flips: u32,
    interval: Duration,
}

/// Which traffic a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Traffic {
    Udp,
    TcpLong,
    TcpNew,
}

impl Traffic {
    const ALL: [Traffic; 3] = [Traffic::Udp, Traffic::TcpLong, Traffic::TcpNew];

    fn key(self) -> &'static str {
        match self {
            Traffic::Udp => "udp",
            Traffic::TcpLong => "tcp_long_lived",
            Traffic::TcpNew => "tcp_new_connections",
        }
    }

    fn of_stream(stream: &str) -> Option<Traffic> {
        match stream {
            "u" => Some(Traffic::Udp),
            "n" => Some(Traffic::TcpNew),
            s if s.starts_with("t-c") || s == "t" => Some(Traffic::TcpLong),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Line {
    t: u64,
    color: Color,
    traffic: Traffic,
    seq: u64,
    /// Which long-lived connection (`t-cK`) carried it.
    conn: Option<u32>,
}

/// Every stamped line of one sink file.
fn read_lines(file: &Path, color: Color) -> Result<Vec<Line>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut out = Vec::new();
    for l in text.lines() {
        let mut t = None;
        let mut stream = None;
        let mut seq = None;
        for tok in l.split_whitespace() {
            if let Some(v) = tok.strip_prefix("t=") {
                t = Some(
                    v.parse::<u64>()
                        .with_context(|| format!("bad stamp in {l:?}"))?,
                );
            } else if let Some(v) = tok.strip_prefix("stream=") {
                stream = Some(v);
            } else if let Some(v) = tok.strip_prefix("seq=") {
                seq = Some(
                    v.parse::<u64>()
                        .with_context(|| format!("bad seq in {l:?}"))?,
                );
            }
        }
        let (Some(t), Some(stream), Some(seq)) = (t, stream, seq) else {
            bail!("{}: unstamped or unnumbered line {l:?}", file.display());
        };
        if let Some(traffic) = Traffic::of_stream(stream) {
            let conn = stream.strip_prefix("t-c").and_then(|k| k.parse().ok());
            out.push(Line {
                t,
                color,
                traffic,
                seq,
                conn,
            });
        }
    }
    Ok(out)
}

/// What the new-connection client did.
#[derive(Debug, Default, Clone)]
struct NewConns {
    /// Seqs whose line was written; a failed connect or write consumes a seq without sending.
    sent: BTreeSet<u64>,
    connect_failures: u64,
    resets: u64,
}

/// Opens a new connection every [`NEW_CONN_EVERY`], writes one numbered line, closes; until
/// `stop` or `deadline`. Runs in the client's namespace.
fn new_connections(
    ns: &str,
    target: SocketAddr,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<NewConns> {
    in_netns(ns, || {
        let mut r = NewConns::default();
        let start = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let due = start + NEW_CONN_EVERY * (i as u32);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let seq = i;
            i += 1;
            let mut s = match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(s) => s,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        r.resets += 1;
                    }
                    r.connect_failures += 1;
                    continue;
                }
            };
            let line = format!("<14>1 - lab bench - - - stream=n seq={seq}\n");
            if s.write_all(line.as_bytes()).is_err() {
                r.resets += 1;
                continue;
            }
            r.sent.insert(seq);
            // Wait for the peer's close, so a reset is seen and counted.
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::ConnectionReset {
                            r.resets += 1;
                        }
                        break;
                    }
                }
            }
        }
        r
    })
}

pub fn run(opts: &Opts) -> Result<Value> {
    let p = if opts.quick {
        Params {
            flips: 6,
            interval: Duration::from_millis(400),
        }
    } else {
        Params {
            flips: 20,
            interval: Duration::from_millis(500),
        }
    };
    println!(
        "\nCutover under load: {} flips, {} ms apart; UDP {UDP_RATE} lines/s, {TCP_CONNECTIONS} long-lived TCP connections {TCP_RATE} lines/s, a new TCP connection every {} ms",
        p.flips,
        p.interval.as_millis(),
        NEW_CONN_EVERY.as_millis()
    );
    let mut stage = Stage::up("cut")?;
    install_rst_counters(&stage)?;
    let mut rows = Vec::new();
    for kind in KINDS {
        stage
            .start(kind)
            .with_context(|| format!("starting {}", kind.label()))?;
        let row =
            one(&mut stage, kind, &p).with_context(|| format!("cutover with {}", kind.label()));
        stage.stop()?;
        rows.push(row?);
    }
    drop(stage);
    print!("{}", table(&rows).text("  "));
    let png = opts.out.join("cutover.png");
    let panels: Vec<plot::Panel> = rows
        .iter()
        .map(plot::Panel::from_cutover)
        .collect::<Result<_>>()?;
    plot::cutover(&png, &panels)?;
    println!("  plot: {}", png.display());
    Ok(json!({
        "flips": p.flips,
        "interval_ms": p.interval.as_millis() as u64,
        "udp_lines_per_s": UDP_RATE,
        "tcp_long_lived": { "connections": TCP_CONNECTIONS, "lines_per_s": TCP_RATE },
        "tcp_new_connection_every_ms": NEW_CONN_EVERY.as_millis() as u64,
        "plot": png.display().to_string(),
        "contenders": rows,
    }))
}

fn one(stage: &mut Stage, kind: Kind, p: &Params) -> Result<Value> {
    let [blue_file, green_file] = stage.start_sinks(kind.key())?;
    let total = WARMUP + p.interval * p.flips + TAIL;
    let secs = total.as_secs_f64();
    let max_secs = (secs as u64 + 15).to_string();
    let sender = rig::bin("log-sender")?.display().to_string();
    let udp_t = stage.target(UDP_PORT).to_string();
    let tcp_t = stage.target(TCP_PORT);
    let client_snmp0 = stage.lab.snmp(Host::Client)?;
    let backend_rsts0 = backend_rsts(stage)?;
    let client_rsts0 = backend_rsts_to_client(stage)?;
    let t_start = monotonic_ns()?;
    let asked = [
        ("udp", (UDP_RATE as f64 * secs) as u64),
        ("tcp", (TCP_RATE as f64 * secs) as u64),
    ];
    let udp = stage.lab.spawn(
        Host::Client,
        &sender,
        &[
            "--target",
            &udp_t,
            "--proto",
            "udp",
            "--stream",
            "u",
            "--rate",
            &UDP_RATE.to_string(),
            "--count",
            &asked[0].1.to_string(),
            "--max-seconds",
            &max_secs,
        ],
    )?;
    let tcp = stage.lab.spawn(
        Host::Client,
        &sender,
        &[
            "--target",
            &tcp_t.to_string(),
            "--proto",
            "tcp",
            "--stream",
            "t",
            "--connections",
            &TCP_CONNECTIONS.to_string(),
            "--rate",
            &TCP_RATE.to_string(),
            "--count",
            &asked[1].1.to_string(),
            "--max-seconds",
            &max_secs,
        ],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let ns = stage.lab.ns(Host::Client).to_owned();
        let stop = Arc::clone(&stop);
        let deadline = Instant::now() + total + Duration::from_secs(5);
        std::thread::spawn(move || new_connections(&ns, tcp_t, &stop, deadline))
    };

    std::thread::sleep(WARMUP);
    let mut flips: Vec<(Color, u64, Option<u64>)> = Vec::new();
    let mut kernel_us: Vec<Option<f64>> = Vec::new();
    let start = Instant::now();
    let mut last = start - p.interval;
    let result = (|| -> Result<()> {
        for k in 0..p.flips {
            // On schedule, but never closer than half an interval to the previous flip: a
            // stalled loop must not bunch flips together.
            let due = (start + p.interval * k).max(last + p.interval / 2);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            if let Some(&(to, _, Some(kf))) = flips.last() {
                kernel_us.push(stage.first_after_ns(kf, to)?.map(|ns| ns as f64 / 1000.0));
            }
            let to = if k % 2 == 0 {
                Color::Green
            } else {
                Color::Blue
            };
            last = Instant::now();
            let (t, kf) = stage.flip(to)?;
            flips.push((to, t, kf));
        }
        std::thread::sleep(p.interval);
        if let Some(&(to, _, Some(kf))) = flips.last() {
            kernel_us.push(stage.first_after_ns(kf, to)?.map(|ns| ns as f64 / 1000.0));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let conns = match prober.join() {
        Ok(r) => r,
        Err(_) => bail!("new-connection client panicked"),
    };
    result?;
    let conns = conns?;
    let mut summaries = BTreeMap::new();
    let mut senders = serde_json::Map::new();
    for ((name, s), (_, asked)) in [("udp", &udp), ("tcp", &tcp)].into_iter().zip(asked) {
        let Some(st) = s.wait_timeout(total + Duration::from_secs(20))? else {
            bail!("log-sender ({name}) did not finish: the measurement is invalid");
        };
        let summary = rig::sender_summary(s).with_context(|| {
            format!("log-sender ({name}) exited with {st}: the measurement is invalid")
        })?;
        senders.insert(
            name.into(),
            json!({
                "exit_code": st.code(),
                "asked": asked,
                "sent": summary["sent"],
                "errors": summary["errors"],
                "stderr": if st.success() {
                    Value::Null
                } else {
                    json!(s.stderr_tail(5).trim().replace('\n', " | "))
                },
            }),
        );
        summaries.insert(name, summary);
    }
    // The sinks flush every 100 ms; SIGTERM flushes the rest.
    std::thread::sleep(Duration::from_millis(300));
    stage.stop_sinks()?;
    let client_snmp1 = stage.lab.snmp(Host::Client)?;
    let backend_rsts1 = backend_rsts(stage)?;
    let client_rsts1 = backend_rsts_to_client(stage)?;
    let t_end = monotonic_ns()?;

    let mut lines = read_lines(&blue_file, Color::Blue)?;
    lines.extend(read_lines(&green_file, Color::Green)?);
    if lines.is_empty() {
        bail!("no line reached either sink: the measurement is invalid");
    }
    // The seqs each generator should have delivered: log-sender was asked for 0..count (a
    // line it could not send counts as lost); the new-connection client keeps the seqs it
    // actually wrote.
    let sent_count = |name: &str| summaries[name]["sent"].as_u64().unwrap_or(0);
    let sent_seqs = |t: Traffic| -> BTreeSet<u64> {
        match t {
            Traffic::Udp => (0..asked[0].1).collect(),
            Traffic::TcpLong => (0..asked[1].1).collect(),
            Traffic::TcpNew => conns.sent.clone(),
        }
    };
    for (name, t) in [("udp", Traffic::Udp), ("tcp", Traffic::TcpLong)] {
        if sent_count(name) == 0 {
            bail!(
                "the {} generator sent nothing: the measurement is invalid",
                t.key()
            );
        }
    }
    let mut accounting = serde_json::Map::new();
    for t in Traffic::ALL {
        let sent = sent_seqs(t);
        if sent.is_empty() {
            bail!(
                "the {} generator sent nothing: the measurement is invalid",
                t.key()
            );
        }
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        let mut per_color = [0u64; 2];
        for l in lines.iter().filter(|l| l.traffic == t) {
            *seen.entry(l.seq).or_default() += 1;
            per_color[l.color.index() as usize] += 1;
        }
        let lost = sent.iter().filter(|s| !seen.contains_key(s)).count();
        let dup: u64 = seen.values().map(|c| u64::from(c.saturating_sub(1))).sum();
        // Arrived although the sender saw it fail (a write error after the data left).
        let unexpected = seen.keys().filter(|s| !sent.contains(s)).count();
        accounting.insert(
            t.key().into(),
            json!({ "sent": sent.len(), "lost": lost, "duplicated": dup, "unexpected": unexpected, "blue": per_color[0], "green": per_color[1] }),
        );
    }
    // Long-lived connections whose lines reached both colours: they moved.
    let mut per_conn: BTreeMap<u32, [u64; 2]> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.traffic == Traffic::TcpLong) {
        if let Some(k) = l.conn {
            per_conn.entry(k).or_default()[l.color.index() as usize] += 1;
        }
    }
    let conns_moved = per_conn.values().filter(|c| c[0] > 0 && c[1] > 0).count();
    accounting.insert(
        "tcp_long_lived_connections".into(),
        json!({ "seen": per_conn.len(), "moved": conns_moved }),
    );

    let mut per_traffic = serde_json::Map::new();
    for t in [Traffic::Udp, Traffic::TcpNew] {
        per_traffic.insert(t.key().into(), per_flip(&lines, t, &flips, p.interval));
    }

    // Delivered lines per colour per bucket, for the plot.
    let bucket = BUCKET.as_nanos() as u64;
    let n_buckets = ((t_end.saturating_sub(t_start)) / bucket + 1) as usize;
    let mut series = [vec![0u64; n_buckets], vec![0u64; n_buckets]];
    for l in &lines {
        if let Some(b) = l.t.checked_sub(t_start).map(|d| (d / bucket) as usize) {
            if b < n_buckets {
                series[l.color.index() as usize][b] += 1;
            }
        }
    }
    let per_s = 1e9 / bucket as f64;
    let rate = |v: &Vec<u64>| v.iter().map(|&c| c as f64 * per_s).collect::<Vec<_>>();
    let flip_s: Vec<f64> = flips.iter().map(|f| (f.1 - t_start) as f64 / 1e9).collect();

    let resets = json!({
        "client_estab_resets": client_snmp1.tcp_estab_resets.saturating_sub(client_snmp0.tcp_estab_resets),
        "client_connect_fails": client_snmp1.tcp_attempt_fails.saturating_sub(client_snmp0.tcp_attempt_fails),
        "backend_rsts_sent": backend_rsts1.saturating_sub(backend_rsts0),
        "backend_rsts_to_client": client_rsts1.saturating_sub(client_rsts0),
        "new_connection_client_resets": conns.resets,
        "new_connection_connect_failures": conns.connect_failures,
        "log_sender_tcp_errors": summaries["tcp"]["errors"],
    });
    let kernel: Vec<Option<f64>> = kernel_us;
    let row = json!({
        "key": kind.key(),
        "label": kind.label(),
        "flip_method": kind.flip_method(),
        "flips": flips.len(),
        "senders": Value::Object(senders),
        "lines": Value::Object(accounting),
        "tcp_resets": resets,
        "per_flip": Value::Object(per_traffic),
        "in_kernel_cutover_us": if kind == Kind::SwitcherRedirect { stats(&kernel) } else { Value::Null },
        "series": {
            "bucket_ms": BUCKET.as_millis() as u64,
            "blue_lines_per_s": rate(&series[0]),
            "green_lines_per_s": rate(&series[1]),
            "flips_s": flip_s,
        },
    });
    let problems = invalid(kind, &row);
    if !problems.is_empty() {
        bail!("the measurement is invalid: {}", problems.join("; "));
    }
    Ok(row)
}

/// Why `row` (one contender's results) is not a valid measurement, per the rules in the module
/// doc; empty if it is.
fn invalid(kind: Kind, row: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let switcher = kind == Kind::SwitcherRedirect;
    for name in ["udp", "tcp"] {
        let s = &row["senders"][name];
        let code = s["exit_code"].as_i64();
        let stderr = s["stderr"].as_str().unwrap_or("");
        match code {
            Some(0) => {}
            // log-sender: "a TCP connection failed", a result for the others.
            Some(2) if name == "tcp" && !switcher => {}
            Some(2) if name == "tcp" => p.push(format!(
                "a long-lived TCP connection failed (log-sender exit 2: {stderr})"
            )),
            c => p.push(format!("log-sender ({name}) exited with {c:?}: {stderr}")),
        }
        let (asked, sent, errors) = (n(&s["asked"]), n(&s["sent"]), n(&s["errors"]));
        if errors == 0 && sent != asked {
            p.push(format!(
                "log-sender ({name}) sent {sent} of the {asked} lines asked without an error (cut short)"
            ));
        }
        if switcher && errors > 0 {
            p.push(format!("log-sender ({name}) reported {errors} send errors"));
        }
    }
    for t in Traffic::ALL {
        let a = &row["lines"][t.key()];
        let (lost, dup, unexpected) = (n(&a["lost"]), n(&a["duplicated"]), n(&a["unexpected"]));
        if unexpected > 0 && (switcher || t != Traffic::TcpNew) {
            p.push(format!(
                "{unexpected} {} lines arrived that were never sent",
                t.key()
            ));
        }
        if switcher && (lost > 0 || dup > 0) {
            p.push(format!("{} lines lost {lost}, duplicated {dup}", t.key()));
        }
    }
    for t in [Traffic::Udp, Traffic::TcpNew] {
        let pf = &row["per_flip"][t.key()];
        if n(&pf["flips_that_had_to_move_it"]) == 0 {
            p.push(format!(
                "no flip found the {} traffic at the colour it was leaving",
                t.key()
            ));
        }
        if switcher && n(&pf["flips_that_stayed"]) > 0 {
            p.push(format!(
                "{} of {} flips left the {} traffic at the old colour",
                n(&pf["flips_that_stayed"]),
                n(&pf["flips_that_had_to_move_it"]),
                t.key()
            ));
        }
    }
    if switcher {
        let r = &row["tcp_resets"];
        for k in [
            "client_estab_resets",
            "client_connect_fails",
            "backend_rsts_to_client",
            "new_connection_client_resets",
            "new_connection_connect_failures",
            "log_sender_tcp_errors",
        ] {
            if n(&r[k]) > 0 {
                p.push(format!("TCP {k} = {}", r[k]));
            }
        }
        let moved = n(&row["lines"]["tcp_long_lived_connections"]["moved"]);
        if moved > 0 {
            p.push(format!(
                "{moved} long-lived TCP connections had lines at both colours"
            ));
        }
        let k = &row["in_kernel_cutover_us"];
        if n(&k["flips"]) == 0 || n(&k["none"]) == n(&k["flips"]) {
            p.push("no in-kernel cutover time for any flip".into());
        }
    }
    p
}

/// The colour most lines of `t` reached in `[from, to)`, if any did.
fn majority(lines: &[Line], t: Traffic, from: u64, to: u64) -> Option<Color> {
    let mut n = [0u64; 2];
    for l in lines
        .iter()
        .filter(|l| l.traffic == t && l.t >= from && l.t < to)
    {
        n[l.color.index() as usize] += 1;
    }
    match n {
        [0, 0] => None,
        [b, g] if b >= g => Some(Color::Blue),
        _ => Some(Color::Green),
    }
}

/// Per flip, within [flip, next flip): did the traffic end up at the new colour, the first
/// line there and the last line at the old one. Only flips that had to move the traffic count
/// for the times: a flip to blue while the flow never left blue (nftables' conntrack) moves
/// nothing and would show a misleading 0 ms.
fn per_flip(
    lines: &[Line],
    t: Traffic,
    flips: &[(Color, u64, Option<u64>)],
    interval: Duration,
) -> Value {
    let iv = interval.as_nanos() as u64;
    let mut first_new = Vec::new();
    let mut last_old = Vec::new();
    let (mut had_to_move, mut moved, mut stayed) = (0u64, 0u64, 0u64);
    for (i, &(to, at, _)) in flips.iter().enumerate() {
        let end = flips.get(i + 1).map_or(at + iv, |f| f.1);
        let from = if to == Color::Green {
            Color::Blue
        } else {
            Color::Green
        };
        // Where the traffic was just before the flip (200 ms, or since the previous flip).
        let before = majority(lines, t, at.saturating_sub(iv.min(200_000_000)), at);
        if before != Some(from) {
            continue;
        }
        had_to_move += 1;
        match majority(lines, t, at + (end - at) / 2, end) {
            Some(c) if c == to => moved += 1,
            Some(_) => stayed += 1,
            None => {}
        }
        let window = lines
            .iter()
            .filter(|l| l.traffic == t && l.t >= at && l.t < end);
        first_new.push(
            window
                .clone()
                .filter(|l| l.color == to)
                .map(|l| l.t)
                .min()
                .map(|x| (x - at) as f64 / 1e6),
        );
        last_old.push(
            window
                .filter(|l| l.color == from)
                .map(|l| l.t)
                .max()
                .map(|x| (x - at) as f64 / 1e6),
        );
    }
    json!({
        "flips_that_had_to_move_it": had_to_move,
        "flips_that_moved_it": moved,
        "flips_that_stayed": stayed,
        "first_line_at_new_colour_ms": stats(&first_new),
        "last_line_at_old_colour_ms": stats(&last_old),
    })
}

const RST_TABLE: &str = "switcher_bench_rst";

/// On blue and green: count the TCP RSTs leaving towards the client. The backends' SNMP
/// OutRsts also count the resets of the daemon's health probes (from the edge), which say
/// nothing about the client's connections.
fn install_rst_counters(stage: &Stage) -> Result<()> {
    let rules = format!(
        "table netdev {RST_TABLE} {{\n  counter to_client {{}}\n  chain out {{\n    type filter hook egress device \"{HOST_IF}\" priority 0; policy accept;\n    ip daddr {CLIENT_V4} tcp flags & rst == rst counter name \"to_client\"\n  }}\n}}\n"
    );
    for h in [Host::Blue, Host::Green] {
        nft_load(&stage.lab, h, &stage.dir, "backend-rst.nft", &rules)?;
    }
    Ok(())
}

/// TCP RSTs the two backends sent to the client.
fn backend_rsts_to_client(stage: &Stage) -> Result<u64> {
    let mut n = 0;
    for h in [Host::Blue, Host::Green] {
        n += nft_counter(&stage.lab, h, RST_TABLE, "to_client")?;
    }
    Ok(n)
}

/// TCP RSTs the two backends sent (to anyone).
fn backend_rsts(stage: &Stage) -> Result<u64> {
    let mut n = 0;
    for h in [Host::Blue, Host::Green] {
        let s: Snmp = stage.lab.snmp(h)?;
        n += s.tcp_out_rsts;
    }
    Ok(n)
}

/// p50 and max over the flips that saw a line, and how many never did.
fn stats(v: &[Option<f64>]) -> Value {
    let mut seen: Vec<f64> = v.iter().flatten().copied().collect();
    seen.sort_by(|a, b| a.total_cmp(b));
    let p50 = (!seen.is_empty()).then(|| seen[(seen.len() - 1) / 2]);
    json!({
        "flips": v.len(),
        "none": v.len() - seen.len(),
        "p50": p50,
        "max": seen.last(),
    })
}

fn fmt_ms(s: &Value) -> String {
    let none = s["none"].as_u64().unwrap_or(0);
    let flips = s["flips"].as_u64().unwrap_or(0);
    match (s["p50"].as_f64(), s["max"].as_f64()) {
        (Some(p), Some(m)) if none == 0 => format!("{p:.1} / {m:.1}"),
        (Some(p), Some(m)) => format!("{p:.1} / {m:.1} (none in {none}/{flips})"),
        _ => format!("none in {none}/{flips}"),
    }
}

fn moved(pf: &Value) -> String {
    format!(
        "{}/{}",
        pf["flips_that_moved_it"], pf["flips_that_had_to_move_it"]
    )
}

fn lost_dup(r: &Value, t: Traffic) -> String {
    let a = &r["lines"][t.key()];
    format!("{}/{}", a["lost"], a["duplicated"])
}

fn resets(r: &Value) -> u64 {
    let x = &r["tcp_resets"];
    [
        "client_estab_resets",
        "client_connect_fails",
        "new_connection_client_resets",
    ]
    .iter()
    .map(|k| x[*k].as_u64().unwrap_or(0))
    .sum()
}

/// One row per contender; the terminal and results.md show the same table.
fn table(rows: &[Value]) -> Table {
    let mut t = Table::new(&[
        "contender",
        "flip by",
        "flips that moved UDP / new TCP",
        "lines lost / duplicated (UDP, TCP long-lived, TCP new)",
        "TCP resets",
        "UDP: first line at new colour (ms)",
        "UDP: last line at old colour (ms)",
        "new TCP: first at new (ms)",
        "new TCP: last at old (ms)",
        "in-kernel cutover (µs)",
    ]);
    for r in rows {
        let pf = &r["per_flip"];
        let k = &r["in_kernel_cutover_us"];
        t.row(vec![
            r["label"].as_str().unwrap_or("?").to_string(),
            r["flip_method"].as_str().unwrap_or("?").to_string(),
            format!(
                "{}, {}",
                moved(&pf["udp"]),
                moved(&pf["tcp_new_connections"])
            ),
            format!(
                "{}, {}, {}",
                lost_dup(r, Traffic::Udp),
                lost_dup(r, Traffic::TcpLong),
                lost_dup(r, Traffic::TcpNew)
            ),
            resets(r).to_string(),
            fmt_ms(&pf["udp"]["first_line_at_new_colour_ms"]),
            fmt_ms(&pf["udp"]["last_line_at_old_colour_ms"]),
            fmt_ms(&pf["tcp_new_connections"]["first_line_at_new_colour_ms"]),
            fmt_ms(&pf["tcp_new_connections"]["last_line_at_old_colour_ms"]),
            if k.is_null() {
                "-".to_string()
            } else {
                fmt_ms(k)
            },
        ]);
    }
    t
}

/// Markdown tables of this section's results for results.md.
pub fn markdown(v: &Value) -> String {
    format!(
        "{} flips, {} ms apart, under UDP {} lines/s, {} long-lived TCP connections ({} lines/s), a new TCP connection every {} ms. \
         Times are from the flip command to the line's arrival at the sink, p50 / max over the flips \
         that had to move the traffic (a new connection starts every {} ms, which adds up to that much to its times).\n\n{}\n![cutover](cutover.png)\n",
        v["flips"],
        v["interval_ms"],
        v["udp_lines_per_s"],
        v["tcp_long_lived"]["connections"],
        v["tcp_long_lived"]["lines_per_s"],
        v["tcp_new_connection_every_ms"],
        v["tcp_new_connection_every_ms"],
        table(v["contenders"].as_array().map_or(&[][..], |a| a.as_slice())).markdown(),
    )
}

/// Headlines for the final summary.
pub fn summary(v: &Value) -> Vec<[String; 2]> {
    v["contenders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let pf = &r["per_flip"];
            let k = &r["in_kernel_cutover_us"];
            [
                r["label"].as_str().unwrap_or("?").to_string(),
                format!(
                    "UDP moved {} flips, first line at new colour {} ms; lost/dup UDP {} TCP {} new TCP {}; resets {}{}",
                    moved(&pf["udp"]),
                    fmt_ms(&pf["udp"]["first_line_at_new_colour_ms"]),
                    lost_dup(r, Traffic::Udp),
                    lost_dup(r, Traffic::TcpLong),
                    lost_dup(r, Traffic::TcpNew),
                    resets(r),
                    if k.is_null() {
                        String::new()
                    } else {
                        format!("; in-kernel {} µs", fmt_ms(k))
                    }
                ),
            ]
        })
        .collect()
}
