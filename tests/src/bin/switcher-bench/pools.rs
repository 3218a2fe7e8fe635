//! Pools (issue 16): each colour a pool of members behind a Maglev table. Three measurements
//! on a private datapath (BPF_PROG_TEST_RUN, nothing attached):
//!
//! - **Cost per packet** with pools of 1, 8 and 64 members, alternating with the count-and-pass
//!   floor in the same rounds (as in the datapath cost section). A repeated run must hit the
//!   service every iteration, so each pool's first member is the VIP:port itself (as the
//!   other sections' backends are) and the measured flow is one whose hash falls on that
//!   member: its source port is searched by running the program once per candidate port. A TCP
//!   SYN that pins a new flow picks its member too; it is measured as single-iteration calls
//!   next to the floor measured the same way, the three sizes taking turns.
//! - **Table rebuild**: `maglev::build` and `maglev::exclude` for 64 members, `encode::pool`
//!   (build, exclude, encode) for 8 and 64, and in the datapath the whole userspace apply of a
//!   pool change (`Datapath::apply` with one member more or less) and of a health change
//!   (`Datapath::set_member_in_service`, which rebuilds the table into the spare buffer and
//!   switches it).
//! - **Disruption when one member of 8 leaves**, measured on flows: distinct source ports are
//!   run through the program before and after the change, and each flow's member compared.
//!   A health exclusion hands exactly the leaver's slots to the others; removing the member
//!   from the config rebuilds the table over 7, which also moves a few slots between the
//!   members that stay. The tables' own slot counts are reported beside.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use etherparse::{PacketBuilder, PacketHeaders, TransportHeader};
use serde_json::{json, Value};
use switcher::{
    config::{Config, Member},
    datapath::encode::{self, PoolMember},
    domain::Color,
};
use switcher_common::{maglev, POOL_TABLE_SIZE};
use switcher_tests::loaded::{LoadedDatapath, Program};

use crate::{
    datapath_cost::{self as cost, Case, Check},
    report::{latency_us, num, percentile, Table},
    Opts,
};

const VIP: &str = "198.18.10.10";
/// Pool sizes measured, the UDP service port of each (`50NN`), its TCP one (`60NN`).
const SIZES: [usize; 3] = [1, 8, 64];
const XDP_PASS: u32 = 2;

fn udp_port(n: usize) -> u16 {
    5000 + n as u16
}

fn tcp_port(n: usize) -> u16 {
    6000 + n as u16
}

/// The `n` members of a pool on `port`: the VIP itself first, then 198.18.11.x (8) or
/// 198.18.12.x (64).
fn member_addrs(n: usize, port: u16) -> Vec<SocketAddr> {
    let net = if n <= 8 { 11 } else { 12 };
    (0..n)
        .map(|i| match i {
            0 => SocketAddr::from(([198, 18, 10, 10], port)),
            i => SocketAddr::from(([198, 18, net, i as u8], port)),
        })
        .collect()
}

/// [`member_addrs`] as a config's list, `without` one of them.
fn members(n: usize, port: u16, without: Option<usize>) -> Vec<String> {
    member_addrs(n, port)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != without)
        .map(|(_, a)| format!("\"{a}\""))
        .collect()
}

/// A UDP and a TCP service per pool size; `pool8_without` drops that member from the UDP
/// pool of 8 (a config removal).
fn services(pool8_without: Option<usize>) -> String {
    let mut s = String::new();
    for n in SIZES {
        for (proto, port) in [("udp", udp_port(n)), ("tcp", tcp_port(n))] {
            let without = (proto == "udp" && n == 8)
                .then_some(pool8_without)
                .flatten();
            s += &format!(
                "[[service]]\nname = \"{proto}-pool-{n}\"\nvip = \"{VIP}\"\nport = {port}\n\
                 protocol = \"{proto}\"\nforward = \"pass\"\nblue = {{ backends = [{}] }}\n\n",
                members(n, port, without).join(", ")
            );
        }
    }
    s
}

/// The member the program sent a UDP packet from `sport` to service port `dport` to.
fn member_of(b: &mut LoadedDatapath, sport: u16, dport: u16) -> Result<SocketAddr> {
    let r = b.run(Program::Ingress, &cost::udp4(sport, dport, None)?, 1)?;
    if r.action != XDP_PASS {
        bail!("unexpected XDP action {}", r.action);
    }
    let h = PacketHeaders::from_ethernet_slice(&r.out).context("parsing the output packet")?;
    let Some(etherparse::NetHeaders::Ipv4(ip, _)) = h.net else {
        bail!("the output is not IPv4");
    };
    let Some(TransportHeader::Udp(u)) = h.transport else {
        bail!("the output is not UDP");
    };
    Ok(SocketAddr::from((ip.destination, u.destination_port)))
}

/// A source port whose flow the pool on `dport` sends to its first member, the VIP:port
/// itself, so that a repeated run hits the service every iteration.
fn hitting_port(b: &mut LoadedDatapath, dport: u16) -> Result<u16> {
    let vip: IpAddr = VIP.parse()?;
    for sport in 40000..50000 {
        if member_of(b, sport, dport)? == SocketAddr::new(vip, dport) {
            return Ok(sport);
        }
    }
    bail!("no source port in 40000..50000 falls on the VIP member of port {dport}")
}

/// A SYN from client `k` (198.19.0.0/16, as the datapath cost section's) to `dport`.
fn syn(k: u32, dport: u16) -> Result<Vec<u8>> {
    let src = [
        cost::SYN_CLIENTS[0],
        cost::SYN_CLIENTS[1],
        (k >> 16) as u8,
        (k >> 8) as u8,
    ];
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [198, 18, 10, 10], 64)
        .tcp(1024 + (k & 0xff) as u16, dport, 0, 64240)
        .syn()
        .write(&mut v, b"")?;
    Ok(v)
}

/// Median ns of single-iteration SYN calls that each pin a new flow, per pool size, and of
/// the floor measured the same way. The sizes take turns call by call, so each sees the same
/// half-open table (every SYN adds an entry, and a fuller table costs more per insert).
fn syn_cost(b: &mut LoadedDatapath, calls: u32) -> Result<(Vec<f64>, f64)> {
    let ids = SIZES
        .iter()
        .map(|n| b.id(&format!("tcp-pool-{n}")))
        .collect::<Result<Vec<_>>>()?;
    let before = ids
        .iter()
        .map(|id| Ok(b.counters(*id, Color::Blue)?.new_flows))
        .collect::<Result<Vec<_>>>()?;
    let floor_pkt = cost::udp4(40000, 514, None)?;
    let mut syns = vec![Vec::with_capacity(calls as usize); SIZES.len()];
    let mut floor = Vec::with_capacity(calls as usize);
    let mut next = 0;
    for _ in 0..calls {
        for (i, n) in SIZES.iter().enumerate() {
            let r = b.run(Program::Ingress, &syn(next, tcp_port(*n))?, 1)?;
            next += 1;
            if r.action != XDP_PASS {
                bail!("unexpected XDP action {}", r.action);
            }
            syns[i].push(r.duration.as_nanos() as f64);
        }
        let f = b.run(Program::Reference("bench_floor"), &floor_pkt, 1)?;
        if f.action != XDP_PASS {
            bail!("unexpected XDP action {}", f.action);
        }
        floor.push(f.duration.as_nanos() as f64);
    }
    for ((n, id), b0) in SIZES.iter().zip(&ids).zip(before) {
        let pinned = b.counters(*id, Color::Blue)?.new_flows - b0;
        if pinned != u64::from(calls) {
            bail!("pool of {n}: {pinned} of {calls} SYNs pinned a new flow: the measurement is invalid");
        }
    }
    Ok((
        syns.iter_mut().map(|s| percentile(s, 50.0)).collect(),
        percentile(&mut floor, 50.0),
    ))
}

/// Runs `f` `times` times; its durations in ns.
fn time(times: u32, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(times as usize);
    for _ in 0..times {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_nanos() as f64);
    }
    Ok(v)
}

/// The table builder's view of the pool of `n` on the UDP port, as the datapath builds it.
fn maglev_members(n: usize) -> Vec<maglev::Member> {
    member_addrs(n, udp_port(n))
        .into_iter()
        .map(|a| maglev::Member {
            addr: encode::addr_bytes(a.ip()),
            port: a.port(),
            weight: 1,
        })
        .collect()
}

fn table_error(e: maglev::TableError) -> anyhow::Error {
    anyhow::anyhow!("building a table: {e:?}")
}

/// Build, exclude and encode timings (pure, in this process).
fn rebuild_times(iterations: u32) -> Result<Vec<(String, Value)>> {
    let m64 = maglev_members(64);
    let mut table = [0u8; POOL_TABLE_SIZE];
    let mut out = vec![false; 64];
    out[5] = true;
    let mut built = [0u8; POOL_TABLE_SIZE];
    maglev::build(&m64, &mut built).map_err(table_error)?;
    let mut rows = vec![
        (
            "maglev::build, 64 members".to_string(),
            latency_us(&mut time(iterations, || {
                maglev::build(&m64, &mut table).map_err(table_error)
            })?),
        ),
        (
            "maglev::exclude, 1 of 64 members".to_string(),
            latency_us(&mut time(iterations, || {
                table = built;
                maglev::exclude(&m64, &out, &mut table).map_err(table_error)
            })?),
        ),
    ];
    for n in [8, 64] {
        let pool: Vec<PoolMember> = member_addrs(n, udp_port(n))
            .into_iter()
            .enumerate()
            .map(|(i, a)| PoolMember {
                member: Member::new(a),
                slot: i as u16,
                in_service: i != 5,
            })
            .collect();
        rows.push((
            format!("encode::pool, {n} members, 1 out of service"),
            latency_us(&mut time(iterations, || {
                encode::pool(&pool).map(drop).map_err(anyhow::Error::from)
            })?),
        ));
    }
    Ok(rows)
}

/// Moved slots of a table when member `leaver` of `n` is excluded (health) or removed
/// (rebuild over the others): (leaver's own slots, moved by exclusion, moved by rebuild).
fn slot_disruption(n: usize, leaver: usize) -> Result<(usize, usize, usize)> {
    let all = maglev_members(n);
    let mut base = [0u8; POOL_TABLE_SIZE];
    maglev::build(&all, &mut base).map_err(table_error)?;
    let mut out = vec![false; n];
    out[leaver] = true;
    let mut excluded = base;
    maglev::exclude(&all, &out, &mut excluded).map_err(table_error)?;
    let rest: Vec<maglev::Member> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leaver)
        .map(|(_, m)| *m)
        .collect();
    let mut rebuilt = [0u8; POOL_TABLE_SIZE];
    maglev::build(&rest, &mut rebuilt).map_err(table_error)?;
    let own = base.iter().filter(|&&i| i as usize == leaver).count();
    let by_exclusion = (0..POOL_TABLE_SIZE)
        .filter(|&s| all[base[s] as usize] != all[excluded[s] as usize])
        .count();
    let by_rebuild = (0..POOL_TABLE_SIZE)
        .filter(|&s| all[base[s] as usize] != rest[rebuilt[s] as usize])
        .count();
    Ok((own, by_exclusion, by_rebuild))
}

/// Where `flows` source ports go in the UDP pool of 8.
fn placement(b: &mut LoadedDatapath, flows: u32) -> Result<Vec<SocketAddr>> {
    (0..flows)
        .map(|i| member_of(b, 10_000 + i as u16, udp_port(8)))
        .collect()
}

/// (flows that moved off `leaver`, flows that moved between the others) from `before` to
/// `after`; fails if a flow still reaches `leaver`.
fn moved(before: &[SocketAddr], after: &[SocketAddr], leaver: SocketAddr) -> Result<(u64, u64)> {
    let (mut own, mut others) = (0, 0);
    for (b, a) in before.iter().zip(after) {
        if *a == leaver {
            bail!("a flow still reaches {leaver} after it left: the measurement is invalid");
        }
        if a != b {
            if *b == leaver {
                own += 1;
            } else {
                others += 1;
            }
        }
    }
    Ok((own, others))
}

fn config_text(b: &LoadedDatapath, services: &str) -> String {
    format!(
        "[daemon]\ninterfaces = [\"lo\"]\nbpffs_dir = \"{}\"\n{services}",
        b.bpffs().display()
    )
}

pub fn run(opts: &Opts) -> Result<Value> {
    let mut b = LoadedDatapath::load("bench-pools")?;
    b.apply(&services(None))?;

    // Cost per packet, pools of 1, 8 and 64, alternating with the floor.
    let mut cases = vec![Case {
        name: "floor (count + XDP_PASS)",
        packet: cost::udp4(40000, 514, None)?,
        check: Check::Floor,
    }];
    let names: [(&'static str, &'static str); 3] = [
        ("udp4 hit, pool of 1", "udp-pool-1"),
        ("udp4 hit, pool of 8", "udp-pool-8"),
        ("udp4 hit, pool of 64", "udp-pool-64"),
    ];
    for (n, (name, service)) in SIZES.iter().zip(names) {
        let sport = hitting_port(&mut b, udp_port(*n))?;
        cases.push(Case {
            name,
            packet: cost::udp4(sport, udp_port(*n), None)?,
            check: Check::Hit {
                service,
                established: false,
            },
        });
    }
    let medians = cost::alternate(&mut b, &cases, opts.repeat, opts.rounds)?;
    let floor = medians[0];
    let mut cost_rows: Vec<Value> = cases
        .iter()
        .zip(&medians)
        .map(|(c, m)| json!({ "case": c.name, "ns": m, "x_floor": m / floor }))
        .collect();
    let (syn_ns, syn_floor) = syn_cost(&mut b, opts.syn_calls)?;
    for (n, syn_ns) in SIZES.iter().zip(syn_ns) {
        cost_rows.push(json!({
            "case": format!("tcp4 SYN new pin, pool of {n} (single-iteration calls)"),
            "ns": syn_ns,
            "x_floor": syn_ns / syn_floor,
            "floor_single_ns": syn_floor,
        }));
    }

    // Rebuild times.
    let iterations = if opts.quick { 200 } else { 2000 };
    let mut rebuild: Vec<Value> = rebuild_times(iterations)?
        .into_iter()
        .map(|(what, us)| json!({ "what": what, "us": us, "iterations": iterations }))
        .collect();
    let applies = if opts.quick { 30 } else { 200 };
    let with = Config::parse(&config_text(&b, &services(None)))
        .map_err(|e| anyhow::anyhow!("bench config: {e:?}"))?;
    let without = Config::parse(&config_text(&b, &services(Some(4))))
        .map_err(|e| anyhow::anyhow!("bench config: {e:?}"))?;
    let mut flip = false;
    // Applied alternately, so each call changes the pool.
    let mut apply_ns = time(applies, || {
        flip = !flip;
        let cfg = if flip { &without } else { &with };
        b.dp()?.apply(&cfg.services).map(drop)
    })?;
    rebuild.push(json!({
        "what": format!("Datapath::apply, a member of 8 removed or added back ({} services)", with.services.len()),
        "us": latency_us(&mut apply_ns),
        "iterations": applies,
    }));
    let id8 = b.id("udp-pool-8")?;
    let leaver: SocketAddr = "198.18.11.4:5008".parse()?;
    let mut out = false;
    let mut health_ns = time(applies, || {
        out = !out;
        b.dp()?
            .set_member_in_service(id8, Color::Blue, leaver, !out)
            .map(drop)
    })?;
    // Whatever the count of calls, the measured pool is the full one again.
    b.dp()?
        .set_member_in_service(id8, Color::Blue, leaver, true)?;
    b.dp()?.apply(&with.services)?;
    rebuild.push(json!({
        "what": "Datapath::set_member_in_service, 1 of 8 (health)",
        "us": latency_us(&mut health_ns),
        "iterations": applies,
    }));

    // Disruption: one member of 8 leaves, measured on flows.
    let flows: u32 = if opts.quick { 4000 } else { 20000 };
    let before = placement(&mut b, flows)?;
    let own = before.iter().filter(|a| **a == leaver).count() as u64;
    b.dp()?
        .set_member_in_service(id8, Color::Blue, leaver, false)?;
    let after_health = placement(&mut b, flows)?;
    let (h_own, h_others) = moved(&before, &after_health, leaver)?;
    b.dp()?
        .set_member_in_service(id8, Color::Blue, leaver, true)?;
    if placement(&mut b, flows)? != before {
        bail!(
            "the member back in service did not get its own flows back: the measurement is invalid"
        );
    }
    b.dp()?.apply(&without.services)?;
    let after_removal = placement(&mut b, flows)?;
    let (r_own, r_others) = moved(&before, &after_removal, leaver)?;
    let (slots_own, slots_excluded, slots_rebuilt) = slot_disruption(8, 4)?;
    let pct = |x: u64| x as f64 * 100.0 / f64::from(flows);
    let slot_pct = |x: usize| x as f64 * 100.0 / POOL_TABLE_SIZE as f64;
    let disruption = json!({
        "flows": flows,
        "leaver_share_pct": pct(own),
        "health_exclude": {
            "moved_pct": pct(h_own + h_others), "own": h_own, "others": h_others,
            "table_slots_moved_pct": slot_pct(slots_excluded),
        },
        "config_removal": {
            "moved_pct": pct(r_own + r_others), "own": r_own, "others": r_others,
            "table_slots_moved_pct": slot_pct(slots_rebuilt),
        },
        "table_slots_own_pct": slot_pct(slots_own),
    });
    if h_own != own || h_others != 0 {
        bail!("health exclusion moved {h_own} of the leaver's {own} flows and {h_others} others': the table is not what it should be");
    }

    let v = json!({
        "repeat": opts.repeat,
        "rounds": opts.rounds,
        "syn_calls": opts.syn_calls,
        "cost": cost_rows,
        "rebuild": rebuild,
        "disruption": disruption,
    });
    println!(
        "\n== Pools: cost per packet by pool size (BPF_PROG_TEST_RUN, {} iterations x {} alternating rounds, median) ==",
        opts.repeat, opts.rounds
    );
    print!("{}", cost_table(&v).text("  "));
    println!("\n== Pools: table rebuild (µs) ==");
    print!("{}", rebuild_table(&v).text("  "));
    println!("\n== Pools: one member of 8 leaves ({flows} flows, each run once through the program before and after) ==");
    print!("{}", disruption_table(&v).text("  "));
    Ok(v)
}

fn cost_table(v: &Value) -> Table {
    let mut t = Table::new(&["case", "ns/packet", "x floor"]);
    for c in v["cost"].as_array().into_iter().flatten() {
        t.row(vec![
            c["case"].as_str().unwrap_or("?").to_string(),
            num(&c["ns"], 1),
            num(&c["x_floor"], 2),
        ]);
    }
    t
}

fn rebuild_table(v: &Value) -> Table {
    let mut t = Table::new(&["what", "p50 µs", "p99 µs", "max µs"]);
    for r in v["rebuild"].as_array().into_iter().flatten() {
        t.row(vec![
            r["what"].as_str().unwrap_or("?").to_string(),
            num(&r["us"]["p50"], 2),
            num(&r["us"]["p99"], 2),
            num(&r["us"]["max"], 2),
        ]);
    }
    t
}

fn disruption_table(v: &Value) -> Table {
    let d = &v["disruption"];
    let mut t = Table::new(&[
        "change",
        "flows moved",
        "of the leaver's",
        "of the others'",
        "table slots moved",
    ]);
    for (what, k) in [
        ("health: out of service (exclude)", "health_exclude"),
        ("config: removed (table rebuilt over 7)", "config_removal"),
    ] {
        t.row(vec![
            what.to_string(),
            format!("{}%", num(&d[k]["moved_pct"], 2)),
            d[k]["own"].to_string(),
            d[k]["others"].to_string(),
            format!("{}%", num(&d[k]["table_slots_moved_pct"], 2)),
        ]);
    }
    t
}

pub fn markdown(v: &Value) -> String {
    let d = &v["disruption"];
    format!(
        "Pools of 1, 8 and 64 members (Maglev table of {POOL_TABLE_SIZE} slots). Cost per \
         packet: BPF_PROG_TEST_RUN, {} iterations per call, {} alternating rounds with the \
         floor, median; the measured UDP flow is one whose hash falls on the pool's member that \
         is the VIP itself, so every iteration hits. SYN rows: {} single-iteration calls per \
         size, the sizes taking turns (each call pins a new tuple), against the floor measured \
         the same way.\n\n{}\n\
         Table rebuild: pure functions timed in-process; `Datapath::apply` is the whole \
         userspace apply of a pool change (every service's map entries rewritten), \
         `set_member_in_service` the health path (its pool's table rebuilt into the spare \
         buffer, then switched).\n\n{}\n\
         One member of 8 leaves: {} flows (distinct source ports) run through the program \
         before and after; the leaver had {}% of them (its table share {}%).\n\n{}",
        v["repeat"],
        v["rounds"],
        v["syn_calls"],
        cost_table(v).markdown(),
        rebuild_table(v).markdown(),
        d["flows"],
        num(&d["leaver_share_pct"], 2),
        num(&d["table_slots_own_pct"], 2),
        disruption_table(v).markdown()
    )
}

pub fn summary(v: &Value) -> Vec<[String; 2]> {
    let mut out: Vec<[String; 2]> = v["cost"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["case"].as_str().is_some_and(|s| s.contains("pool of")))
        .map(|c| {
            [
                c["case"].as_str().unwrap_or("?").to_string(),
                format!("{} ns ({}x floor)", num(&c["ns"], 1), num(&c["x_floor"], 2)),
            ]
        })
        .collect();
    let d = &v["disruption"];
    out.push([
        "one of 8 leaves: flows moved".into(),
        format!(
            "health {}% (all the leaver's), config removal {}% (leaver's share {}%)",
            num(&d["health_exclude"]["moved_pct"], 1),
            num(&d["config_removal"]["moved_pct"], 1),
            num(&d["leaver_share_pct"], 1)
        ),
    ]);
    out
}
