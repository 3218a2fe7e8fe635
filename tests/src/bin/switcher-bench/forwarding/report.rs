//! The forwarding section's tables, plot, markdown and summary lines, from its JSON.

use serde_json::Value;

use crate::{contenders::Kind, plot, profile, report::Table};

/// One panel per feed: CPU per forwarded packet of each contender, plain routing drawn across.
pub fn chart(v: &Value) -> Vec<plot::BarPanel> {
    v["feeds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|feed| {
            let rows: Vec<&Value> = feed["contenders"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let direct = rows
                .iter()
                .find(|r| r["key"] == Kind::Direct.key())
                .map_or(f64::NAN, |r| f(&r["cpu_ns_per_forwarded"], "median"));
            plot::BarPanel {
                title: format!("Feed: {}", feed["label"].as_str().unwrap_or("?")),
                y_desc: "CPU ns per forwarded packet".into(),
                bars: rows
                    .iter()
                    .map(|r| {
                        let c = &r["cpu_ns_per_forwarded"];
                        plot::Bar {
                            label: r["label"]
                                .as_str()
                                .unwrap_or("?")
                                .replace(" (no switch)", "")
                                .replace(['(', ')'], ""),
                            median: f(c, "median"),
                            min: f(c, "min"),
                            max: f(c, "max"),
                        }
                    })
                    .collect(),
                reference: Some((direct, "plain routing (direct)".into())),
            }
        })
        .collect()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// "median (min–max)" of a spread object.
fn spread_text(v: &Value, decimals: usize) -> String {
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        f(v, "median"),
        f(v, "min"),
        f(v, "max"),
        d = decimals
    )
}

pub fn table(v: &Value) -> Table {
    let mut t = Table::new(&[
        "contender",
        "offered kpps",
        "loss %",
        "CPU/pkt ns",
        "added over direct ns",
    ]);
    for r in v["contenders"].as_array().into_iter().flatten() {
        let added = if r["key"] == Kind::Direct.key() {
            "–".to_string()
        } else {
            spread_text(&r["added_over_direct_ns"], 0)
        };
        t.row(vec![
            r["label"].as_str().unwrap_or("?").to_string(),
            format!("{:.0}", f(&r["offered_pps"], "median") / 1000.0),
            format!("{:.2}", f(&r["loss_pct"], "max")),
            spread_text(&r["cpu_ns_per_forwarded"], 0),
            added,
        ]);
    }
    t
}

pub fn ratio_line(v: &Value) -> String {
    let r = &v["ratio_to_nft"];
    let one = |k: &str, what: &str| {
        format!(
            "  {what} added / nftables added: {} → {}\n",
            spread_text(&r[k], 2),
            r[k]["verdict"].as_str().unwrap_or("?")
        )
    };
    one("switcher_redirect", "switcher (XDP redirect)")
        + &one("switcher_pass", "switcher (XDP pass)")
}

/// ns per forwarded packet of every stage, one column per contender.
pub fn profile_table(v: &Value) -> Table {
    let profiles: Vec<&Value> = v["profiles"].as_array().into_iter().flatten().collect();
    let mut stages: Vec<String> = profiles
        .iter()
        .flat_map(|p| {
            p["profile"]["stages_ns_per_packet"]
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys().cloned())
        })
        .collect();
    stages.sort();
    stages.dedup();
    let mut headers = vec!["stage (perf, ns per forwarded packet)".to_string()];
    headers.extend(
        profiles
            .iter()
            .map(|p| p["label"].as_str().unwrap_or("?").to_string()),
    );
    let mut t = Table {
        headers,
        rows: Vec::new(),
    };
    for s in &stages {
        let mut row = vec![s.clone()];
        for p in &profiles {
            row.push(format!(
                "{:.0}",
                p["profile"]["stages_ns_per_packet"][s]
                    .as_f64()
                    .unwrap_or(0.0)
            ));
        }
        t.row(row);
    }
    let mut total = vec!["all busy CPU (perf)".to_string()];
    let mut stat = vec!["all busy CPU (/proc/stat idle, same run)".to_string()];
    let mut bpf = vec!["XDP program, kernel's bpf_stats".to_string()];
    for p in &profiles {
        total.push(format!("{:.0}", f(&p["profile"], "busy_ns_per_packet")));
        stat.push(format!("{:.0}", f(p, "cpu_ns_per_forwarded")));
        bpf.push(match p["bpf_stats_xdp_program"]["ns_per_run"].as_f64() {
            Some(x) => format!("{x:.0}"),
            None => "–".into(),
        });
    }
    t.row(total);
    t.row(stat);
    t.row(bpf);
    t
}

/// Markdown for results.md.
pub fn markdown(v: &Value) -> String {
    let mut s = format!(
        "One UDP flow paced at {:.0} kpps in 1 ms ticks (frame-pacer, pinned to one CPU), {} packets per run, {} rounds with the contenders interleaved (order rotating). \
         CPU per forwarded packet = host busy CPU (wall × CPUs − idle, from /proc/stat) over the run / packets counted at the backend; \"added over direct\" subtracts the \
         direct run (the edge only routes) of the same round. Median (min–max) over rounds. Two feeds: from a packet socket (the edge's veth receives skbs) \
         and as XDP frames (live-frames mode: the edge's veth receives buffers, as from a NIC driver).\n",
        f(v, "pps") / 1000.0,
        v["packets_per_run"],
        v["rounds"],
    );
    for feed in v["feeds"].as_array().into_iter().flatten() {
        s += &format!(
            "\n### Feed: {}\n\n{}\n{}\n\
             Where the time goes, one profiled run per contender (`perf record -a -e cpu-clock`, every sample {} µs of CPU, folded by symbol):\n\n{}",
            feed["label"].as_str().unwrap_or("?"),
            table(feed).markdown(),
            ratio_line(feed).replace("  ", "- "),
            profile::PERIOD_NS as f64 / 1000.0,
            profile_table(feed).markdown()
        );
    }
    s
}

/// Headlines for the final summary.
pub fn summary(v: &Value) -> Vec<[String; 2]> {
    let mut out = Vec::new();
    for feed in v["feeds"].as_array().into_iter().flatten() {
        let fk = feed["feed"].as_str().unwrap_or("?");
        for r in feed["contenders"].as_array().into_iter().flatten() {
            out.push([
                format!("{fk}: {} CPU/pkt", r["label"].as_str().unwrap_or("?")),
                format!(
                    "{} ns, added over direct {} ns",
                    spread_text(&r["cpu_ns_per_forwarded"], 0),
                    spread_text(&r["added_over_direct_ns"], 0)
                ),
            ]);
        }
        let r = &feed["ratio_to_nft"]["switcher_redirect"];
        out.push([
            format!("{fk}: switcher redirect added / nftables added"),
            format!(
                "{} ({})",
                spread_text(r, 2),
                r["verdict"].as_str().unwrap_or("?")
            ),
        ]);
    }
    out
}
