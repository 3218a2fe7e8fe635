//! Cost of a `/metrics` scrape with 256 services, and whether scraping stalls the controller:
//! flip latency through the API measured side by side with and without a scraper hammering
//! the endpoint. The datapath is not involved in a scrape (map reads from userspace never
//! block the XDP program), so its packet counters are checked only for staying consistent.
//!
//! The "scraping back to back" figure is over the flips that overlapped a scrape (one was in
//! flight when the flip was sent, or one started before its reply came): a flip with no
//! scrape around it is a no-scraper sample and is left out (their count is reported). No
//! overlapping flip at all fails the section, as does a flip that changed nothing (a no-op
//! flip writes no map) or a full-table scrape that did not count the filled table (it did not
//! walk it).

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use switcher::{api::Request, domain::Color};
use switcher_tests::rig::Rig;

use crate::{
    report::{latency_us, num, Table},
    Opts,
};

const SERVICES: u16 = 256;
const FIRST_PORT: u16 = 10_000;

/// 256 UDP services on the IPv4 VIP, ports 10000.., blue and green on the lab's backends.
fn services() -> String {
    let mut s = String::new();
    for i in 0..SERVICES {
        let port = FIRST_PORT + i;
        let _ = write!(
            s,
            "\n[[service]]\nname = \"svc{i}\"\nvip = \"198.18.10.10\"\nport = {port}\nprotocol = \"udp\"\n\
             blue = {{ backend = \"198.18.1.2:{port}\" }}\ngreen = {{ backend = \"198.18.2.2:{port}\" }}\n"
        );
    }
    s
}

/// Scrapes started and finished so far by the scraper thread.
#[derive(Default)]
struct Scrapes {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Scrapes {
    fn now(&self) -> (u64, u64) {
        // Finished first: a scrape counted finished here is also counted started.
        let f = self.finished.load(Ordering::SeqCst);
        (self.started.load(Ordering::SeqCst), f)
    }
}

/// One flip's API accepted → map written in ns, and whether a scrape overlapped it.
struct Flip {
    ns: f64,
    overlapped: bool,
}

/// `n` flips of svc0 through the API, alternating colours; each must change the colour.
/// `scrapes`: the scraper's counters, to tell which flips a scrape overlapped.
fn flips(rig: &Rig, n: u32, scrapes: Option<&Scrapes>) -> Result<Vec<Flip>> {
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let to = if i % 2 == 0 {
            Color::Green
        } else {
            Color::Blue
        };
        let before = scrapes.map(Scrapes::now);
        let v = rig.call(&Request::Flip {
            service: "svc0".into(),
            to,
            force: false,
            reason: None,
            local: false,
        })?;
        let after = scrapes.map(Scrapes::now);
        if v["changed"] != true {
            bail!("flip {i} of svc0 to {to} changed nothing (no map write to time): {v}");
        }
        // In flight at the start (started > finished), or one started before the reply.
        let overlapped = match (before, after) {
            (Some((s0, f0)), Some((s1, _))) => s0 > f0 || s1 > s0,
            _ => false,
        };
        out.push(Flip {
            ns: v["api_to_map_ns"].as_f64().context("flip reply")?,
            overlapped,
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(out)
}

pub fn run(opts: &Opts) -> Result<Value> {
    let rig = Rig::up("sc", &services())?;
    let scrapes = if opts.quick { 30 } else { 300 };
    let n_flips = if opts.quick { 100 } else { 1000 };

    let mut wall = Vec::with_capacity(scrapes);
    let mut bytes = 0;
    for _ in 0..scrapes {
        let t0 = Instant::now();
        let text = rig.metrics()?;
        wall.push(t0.elapsed().as_nanos() as f64);
        bytes = text.len();
        let series = text
            .lines()
            .filter(|l| l.starts_with("switcher_service_packets_total{"))
            .count();
        if series != 2 * usize::from(SERVICES) {
            bail!(
                "a scrape showed {series} packet series, expected {}",
                2 * SERVICES
            );
        }
    }
    // The daemon's own timing of its last scrape (catalog + map reads + encoding).
    let text = rig.metrics()?;
    let server_s: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switcher_scrape_duration_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .context("switcher_scrape_duration_seconds missing")?;

    let mut idle: Vec<f64> = flips(&rig, n_flips, None)?
        .into_iter()
        .map(|f| f.ns)
        .collect();
    // The same flips while a scraper runs back to back on another thread.
    let stop = AtomicBool::new(false);
    let scraped = Scrapes::default();
    let (busy, during) = std::thread::scope(|scope| -> Result<(Vec<Flip>, u64)> {
        let scraper = scope.spawn(|| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                scraped.started.fetch_add(1, Ordering::SeqCst);
                let r = rig.metrics();
                scraped.finished.fetch_add(1, Ordering::SeqCst);
                r?;
            }
            Ok(())
        });
        // Wait for the first scrape to start, so the first flips are not scrape-free by design.
        let wait = Instant::now() + Duration::from_secs(10);
        while scraped.now().0 == 0 && !scraper.is_finished() && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (s0, f0) = scraped.now();
        let r = flips(&rig, n_flips, Some(&scraped));
        // Scrapes that started during the flips, plus the one in flight when they began.
        let (s1, _) = scraped.now();
        stop.store(true, Ordering::Relaxed);
        scraper
            .join()
            .map_err(|_| anyhow::anyhow!("scraper thread panicked"))??;
        Ok((r?, s1 - s0 + u64::from(s0 > f0)))
    })?;
    let overlapped = busy.iter().filter(|f| f.overlapped).count();
    if during == 0 || overlapped == 0 {
        bail!(
            "no scrape overlapped the {n_flips} flips ({during} scrapes during them): the \
             \"scraping back to back\" flip figure would be a no-scraper figure; the \
             measurement is invalid"
        );
    }
    let mut busy: Vec<f64> = busy
        .into_iter()
        .filter(|f| f.overlapped)
        .map(|f| f.ns)
        .collect();
    // The same with the flow table full: the first scrape after the census expires walks all
    // of it; the scrapes after that share the walk.
    let maps = rig
        .bpffs
        .join(format!("v{}", switcher_common::MAP_ABI_VERSION))
        .join("maps");
    let services = crate::synthetic::services(&maps)?;
    crate::synthetic::fill_flows(&maps, &services, 0, switcher_common::FLOW_TABLE_SIZE)?;
    std::thread::sleep(switcher::datapath::read::CENSUS_MAX_AGE + Duration::from_millis(500));
    let t0 = Instant::now();
    let text = rig.metrics()?;
    let walk_us = t0.elapsed().as_secs_f64() * 1e6;
    let entries: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switcher_flow_table_entries "))
        .and_then(|v| v.trim().parse().ok())
        .context("switcher_flow_table_entries missing")?;
    if entries < f64::from(switcher_common::FLOW_TABLE_SIZE) * 0.99 {
        bail!("the scrape counted {entries} flows in a full table");
    }
    let mut full = Vec::with_capacity(scrapes);
    for _ in 0..scrapes.min(50) {
        let t0 = Instant::now();
        rig.metrics()?;
        full.push(t0.elapsed().as_nanos() as f64);
    }
    let v = json!({
        "services": SERVICES,
        "full_table": {
            "flows": entries,
            "scrape_with_walk_us": walk_us,
            "scrape_us": latency_us(&mut full),
        },
        "scrapes": scrapes,
        "response_bytes": bytes,
        "scrape_us": latency_us(&mut wall),
        "server_scrape_us": server_s * 1e6,
        "flip_api_to_map_us": {
            "idle": latency_us(&mut idle),
            "while_scraping": latency_us(&mut busy),
            "scrapes_during": during,
            "flips_while_scraping": overlapped,
            "flips_without_a_scrape_left_out": n_flips as usize - overlapped,
        },
    });
    print!("{}", table(&v).text("  "));
    Ok(v)
}

fn table(v: &Value) -> Table {
    let mut t = Table::new(&["with 256 services", "p50", "p99", "max"]);
    let row = |t: &mut Table, what: &str, x: &Value| {
        t.row(vec![
            what.into(),
            num(&x["p50"], 1),
            num(&x["p99"], 1),
            num(&x["max"], 1),
        ]);
    };
    row(&mut t, "GET /metrics round trip (µs)", &v["scrape_us"]);
    row(
        &mut t,
        "same, flow table full, census shared (µs)",
        &v["full_table"]["scrape_us"],
    );
    let f = &v["flip_api_to_map_us"];
    row(&mut t, "flip API→map, no scraping (µs)", &f["idle"]);
    row(
        &mut t,
        "flip API→map, scraping back to back (µs)",
        &f["while_scraping"],
    );
    t
}

pub fn markdown(v: &Value) -> String {
    format!(
        "{} UDP services; {} scrapes of {} bytes each (the daemon timed its last one at {} µs). \
         Flip latency side by side without and with a scraper running back to back \
         ({} scrapes during the flips; the figure is over the {} flips a scrape overlapped). Then the flow table filled with {} synthetic open \
         flows: the scrape that walked it took {} µs; the walk is shared for 5 s.\n\n{}",
        v["services"],
        v["scrapes"],
        v["response_bytes"],
        num(&v["server_scrape_us"], 0),
        v["flip_api_to_map_us"]["scrapes_during"],
        v["flip_api_to_map_us"]["flips_while_scraping"],
        v["full_table"]["flows"],
        num(&v["full_table"]["scrape_with_walk_us"], 0),
        table(v).markdown()
    )
}

pub fn summary(v: &Value) -> Vec<[String; 2]> {
    vec![
        [
            "scrape with 256 services, p50".into(),
            format!("{} µs", num(&v["scrape_us"]["p50"], 0)),
        ],
        [
            "scrape that walks a full flow table".into(),
            format!("{} µs", num(&v["full_table"]["scrape_with_walk_us"], 0)),
        ],
    ]
}
