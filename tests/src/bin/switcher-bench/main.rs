//! `cargo xtask bench`: switcher measured side by side with what operators would otherwise use
//! (nftables DNAT, a userspace L4 proxy, no switch at all), in one run on the lab topology, and
//! what pools of members cost (per packet, per rebuild) and move when a member leaves.
//!
//! It reports; it does not assert timings, but a section fails (and the run exits non-zero)
//! when a measurement is invalid. The other sections still run, so one failure does not hide
//! the rest.
//!
//! Convention for sections: a module with
//! - `pub fn run(opts: &Opts) -> Result<serde_json::Value>`: measures, prints its own table,
//!   returns its results (they land under `results.<key>` in `<out>/results.json`);
//! - optionally `pub fn markdown(v: &Value) -> String`: the same results as markdown (a short
//!   sentence on method, then tables; `report::Table` renders both text and markdown), written
//!   to `<out>/results.md` under the section's title; without it the JSON goes there;
//! - optionally `pub fn summary(v: &Value) -> Vec<[String; 2]>`: headline (what, value) pairs
//!   for the summary printed at the end.
//!
//! and one entry in [`SECTIONS`].

mod contenders;
mod cutover;
mod datapath_cost;
mod fleet;
mod flip_latency;
mod forwarding;
mod machine;
mod plot;
mod pools;
mod profile;
mod report;
mod scale;
mod scrape_cost;
mod synthetic;
mod traffic;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::{json, Map, Value};

#[derive(Parser)]
pub struct Opts {
    /// Short run for CI smoke tests (fewer iterations, rounds, rates and flips).
    #[arg(long)]
    pub quick: bool,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Only these sections (comma-separated keys, e.g. `datapath_cost,scale`); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Iterations per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Alternating rounds per datapath case; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// datapath_cost: also measure this build of the eBPF object (e.g. the previous commit's,
    /// copied from target/*/build/switcher-userspace-*/out/switcher-ebpf), alternating with
    /// the current one in every round, and report each case's ratio current/baseline.
    #[arg(long, value_name = "FILE")]
    pub baseline_object: Option<PathBuf>,
    /// datapath_cost: measure this eBPF object as the current build instead of the one built
    /// into the bench (with `--baseline-object`, two saved builds side by side).
    #[arg(long, value_name = "FILE")]
    pub object: Option<PathBuf>,
    /// Single-iteration calls for the TCP SYN (new pin) case.
    #[arg(long, default_value_t = 20_000)]
    pub syn_calls: u32,
    /// Flips through the daemon's API in the lab under continuous traffic (0: skip).
    #[arg(long, default_value_t = 1000)]
    pub flips: u32,
    /// Flips per step of the scale section (map writes, timed directly).
    #[arg(long, default_value_t = 1000)]
    pub scale_flips: u32,
}

/// (what, value) headline pairs of one section, for the final summary.
type Summary = Vec<[String; 2]>;

/// One part of the run; see the convention at the top.
struct Section {
    key: &'static str,
    title: &'static str,
    run: fn(&Opts) -> Result<Value>,
    markdown: Option<fn(&Value) -> String>,
    summary: Option<fn(&Value) -> Summary>,
}

const SECTIONS: &[Section] = &[
    Section {
        key: "datapath_cost",
        title: "Datapath cost",
        run: datapath_cost::run,
        markdown: Some(datapath_cost::markdown),
        summary: Some(summary::datapath_cost),
    },
    Section {
        key: "pools",
        title: "Pools",
        run: pools::run,
        markdown: Some(pools::markdown),
        summary: Some(pools::summary),
    },
    Section {
        key: "forwarding",
        title: "Forwarding",
        run: forwarding::run,
        markdown: Some(forwarding::markdown),
        summary: Some(forwarding::summary),
    },
    Section {
        key: "cutover",
        title: "Cutover under load",
        run: cutover::run,
        markdown: Some(cutover::markdown),
        summary: Some(cutover::summary),
    },
    Section {
        key: "flip_latency",
        title: "Flip latency",
        run: flip_latency::run,
        markdown: Some(flip_latency::markdown),
        summary: Some(summary::flip_latency),
    },
    Section {
        key: "fleet",
        title: "Fleet flip latency",
        run: fleet::run,
        markdown: Some(fleet::markdown),
        summary: Some(fleet::summary),
    },
    Section {
        key: "scale",
        title: "Scale",
        run: scale::run,
        markdown: Some(scale::markdown),
        summary: Some(summary::scale),
    },
    Section {
        key: "scrape_cost",
        title: "Metrics scrape cost",
        run: scrape_cost::run,
        markdown: Some(scrape_cost::markdown),
        summary: Some(scrape_cost::summary),
    },
];

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut opts = Opts::parse();
    if opts.quick {
        opts.repeat = opts.repeat.min(100_000);
        opts.rounds = opts.rounds.min(3);
        opts.syn_calls = opts.syn_calls.min(2_000);
        opts.flips = opts.flips.min(200);
        opts.scale_flips = opts.scale_flips.min(200);
    }
    // A zero here would make a section report a median of nothing.
    for (flag, v) in [
        ("--repeat", u64::from(opts.repeat)),
        ("--rounds", opts.rounds as u64),
        ("--syn-calls", u64::from(opts.syn_calls)),
        ("--scale-flips", u64::from(opts.scale_flips)),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    for k in &opts.only {
        if !SECTIONS.iter().any(|s| s.key == k) {
            bail!("unknown section {k}");
        }
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let machine = machine::describe();
    machine::print(&machine);
    let started = std::time::Instant::now();
    let mut results = Map::new();
    let mut failed = Vec::new();
    for s in SECTIONS {
        let skip = (!opts.only.is_empty() && !opts.only.iter().any(|k| k == s.key))
            || (s.key == "flip_latency" && opts.flips == 0);
        if skip {
            continue;
        }
        let t0 = std::time::Instant::now();
        match (s.run)(&opts) {
            Ok(v) => {
                results.insert(s.key.into(), v);
            }
            Err(e) => {
                eprintln!("\n{} FAILED: {e:#}", s.title);
                results.insert(s.key.into(), json!({ "error": format!("{e:#}") }));
                failed.push(s.key);
            }
        }
        println!("  ({} took {:.0} s)", s.title, t0.elapsed().as_secs_f64());
    }
    let doc = json!({
        "quick": opts.quick,
        "machine": machine,
        "seconds": started.elapsed().as_secs_f64(),
        "results": Value::Object(results),
    });
    let json_path = opts.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = opts.out.join("results.md");
    std::fs::write(&md_path, markdown(&doc))
        .with_context(|| format!("writing {}", md_path.display()))?;
    print_summary(&doc);
    println!(
        "\nresults: {} and {}",
        json_path.display(),
        md_path.display()
    );
    if !failed.is_empty() {
        bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `<out>/results.md`: the machine, then each section that ran under its title.
fn markdown(doc: &Value) -> String {
    let m = &doc["machine"];
    let mut out = format!(
        "Machine: {}, {} cores, kernel {}; measured {} at commit {}{}.\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["date_utc"].as_str().unwrap_or("?"),
        m["git_commit"].as_str().unwrap_or("?"),
        if doc["quick"] == true {
            " (--quick run)"
        } else {
            ""
        },
    );
    for s in SECTIONS {
        let v = &doc["results"][s.key];
        if v.is_null() {
            continue;
        }
        out += &format!("\n## {}\n\n", s.title);
        match (v.get("error"), s.markdown) {
            (Some(e), _) => out += &format!("Failed: {}\n", e.as_str().unwrap_or("?")),
            (None, Some(md)) => out += &md(v),
            (None, None) => {
                let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
                out += &format!("```json\n{pretty}\n```\n");
            }
        }
    }
    out
}

fn print_summary(doc: &Value) {
    let mut lines = Vec::new();
    for s in SECTIONS {
        let v = &doc["results"][s.key];
        if v.is_null() {
            continue;
        }
        if v.get("error").is_some() {
            lines.push((s.title.to_string(), "FAILED".to_string()));
            continue;
        }
        for [what, value] in s.summary.map(|f| f(v)).unwrap_or_default() {
            lines.push((format!("{}: {what}", s.title), value));
        }
    }
    println!("\n== Summary ==");
    machine::print(&doc["machine"]);
    // Values vary in length; left-aligned they stay readable.
    let w = lines
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in lines {
        println!("  {k:<w$}  {v}");
    }
}

/// Headlines of this engineer's sections for the final summary.
mod summary {
    use serde_json::Value;

    use crate::report::num;

    pub fn datapath_cost(v: &Value) -> Vec<[String; 2]> {
        v["cases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                [
                    c["case"].as_str().unwrap_or("?").to_string(),
                    format!("{} ns ({}x floor)", num(&c["ns"], 1), num(&c["x_floor"], 2)),
                ]
            })
            .collect()
    }

    pub fn flip_latency(v: &Value) -> Vec<[String; 2]> {
        let l = &v["api_to_map_us"];
        vec![
            [
                "API accepted -> map written".into(),
                format!(
                    "p50 {} / p99 {} / max {} µs",
                    num(&l["p50"], 1),
                    num(&l["p99"], 1),
                    num(&l["max"], 1)
                ),
            ],
            [
                "lines lost / duplicated".into(),
                format!("{} / {}", v["lines_lost"], v["lines_duplicated"]),
            ],
        ]
    }

    pub fn scale(v: &Value) -> Vec<[String; 2]> {
        v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                [
                    s["step"].as_str().unwrap_or("?").to_string(),
                    format!(
                        "udp4 hit {} ns, tcp4 SYN {} ns, flip p99 {} µs",
                        num(&s["udp4_hit"]["ns"], 0),
                        num(&s["tcp4_syn_new_pin"]["ns"], 0),
                        num(&s["flip_us"]["p99"], 1)
                    ),
                ]
            })
            .collect()
    }
}
