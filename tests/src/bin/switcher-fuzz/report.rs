//! What the fuzz prints: progress, the summary, and a violation with everything needed to
//! reproduce it.

use std::{collections::BTreeMap, time::Duration};

use crate::corpus::Dir;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counts kept while the fuzz runs.
#[derive(Default)]
pub struct Tally {
    pub ingress: u64,
    pub egress: u64,
    pub ingress_rewritten: u64,
    pub egress_rewritten: u64,
    pub mutated: u64,
    /// Egress frames the kernel's TC test run refuses before the program runs.
    pub refused: u64,
    /// (direction, generator) -> (packets, rewritten).
    pub kinds: BTreeMap<(&'static str, &'static str), (u64, u64)>,
    /// First mutation applied -> packets.
    pub mutations: BTreeMap<&'static str, u64>,
    /// Known datapath issue -> how often, and its first example.
    pub known: BTreeMap<&'static str, Seen>,
}

/// How often a known issue was seen, and the first time: packet index, input, output.
pub struct Seen {
    pub times: u64,
    pub index: u64,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
}

impl Tally {
    pub fn packets(&self) -> u64 {
        self.ingress + self.egress
    }

    pub fn record(
        &mut self,
        dir: Dir,
        kind: &'static str,
        mutation: Option<&'static str>,
        rewritten: bool,
    ) {
        let d = match dir {
            Dir::Ingress => {
                self.ingress += 1;
                self.ingress_rewritten += u64::from(rewritten);
                "ingress"
            }
            Dir::Egress => {
                self.egress += 1;
                self.egress_rewritten += u64::from(rewritten);
                "egress"
            }
        };
        let k = self.kinds.entry((d, kind)).or_default();
        k.0 += 1;
        k.1 += u64::from(rewritten);
        if let Some(m) = mutation {
            self.mutated += 1;
            *self.mutations.entry(m).or_default() += 1;
        }
    }
}

impl Tally {
    /// A rewrite that is exactly a known datapath issue (see `oracle::Verdict::Known`).
    pub fn known(&mut self, issue: &'static str, index: u64, inp: &[u8], out: &[u8]) {
        let e = self.known.entry(issue).or_insert_with(|| Seen {
            times: 0,
            index,
            input: inp.to_vec(),
            output: out.to_vec(),
        });
        e.times += 1;
    }
}

pub fn progress(t: &Tally, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "  {:>10} packets  {:>5.1}% of ingress rewritten  {:>5.1}% of egress translated  {:>8.0} packets/s",
        t.packets(),
        pct(t.ingress_rewritten, t.ingress),
        pct(t.egress_rewritten, t.egress),
        t.packets() as f64 / secs
    );
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

pub struct Judged {
    pub must_rewrite: u64,
    pub may_rewrite: u64,
    pub must_pass: u64,
}

pub fn summary(
    seed: u64,
    t: &Tally,
    elapsed: Duration,
    reasons: &[(&'static str, u64)],
    judged: &Judged,
    stopped_early: bool,
) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "fuzz summary (seed {seed}){}",
        if stopped_early {
            ", stopped at --max-seconds"
        } else {
            ""
        }
    );
    println!(
        "  packets     {} in {:.1} s: {:.0} packets/s",
        t.packets(),
        secs,
        t.packets() as f64 / secs
    );
    println!(
        "  ingress     {} run, {} rewritten, {} untouched",
        t.ingress,
        t.ingress_rewritten,
        t.ingress - t.ingress_rewritten
    );
    println!(
        "  egress      {} run, {} translated, {} untouched ({} more refused by the kernel's TC test run: shorter than their IP header)",
        t.egress,
        t.egress_rewritten,
        t.egress - t.egress_rewritten,
        t.refused
    );
    println!(
        "  mutated     {} ({:.1}%); oracle: {} had to be rewritten, {} could be, {} had to pass",
        t.mutated,
        pct(t.mutated, t.packets()),
        judged.must_rewrite,
        judged.may_rewrite,
        judged.must_pass
    );
    println!("  by generator (packets, rewritten):");
    for ((d, k), (n, r)) in &t.kinds {
        println!("    {d:<8} {k:<12} {n:>10} {r:>10}");
    }
    println!("  by first mutation:");
    for (m, n) in &t.mutations {
        println!("    {m:<12} {n:>10}");
    }
    if !t.known.is_empty() {
        println!("  known datapath issues (counted as rewritten, --allow-known):");
        for (issue, seen) in &t.known {
            println!("    {:>8} x {issue}", seen.times);
            println!(
                "             first at packet {}: input  {}",
                seen.index,
                hex(&seen.input)
            );
            println!(
                "                                    output {}",
                hex(&seen.output)
            );
        }
    }
    println!("  datapath reasons:");
    for (r, n) in reasons.iter().filter(|(_, n)| *n != 0) {
        println!("    {r:<22} {n:>10}");
    }
}

#[allow(clippy::too_many_arguments)]
pub fn violation(
    seed: u64,
    index: u64,
    reproduce: &str,
    dir: Dir,
    kind: &str,
    mutation: Option<&str>,
    inp: &[u8],
    out: &[u8],
    why: &str,
) {
    eprintln!("VIOLATION at packet {index} (seed {seed})");
    eprintln!(
        "  {} packet from the {kind} generator{}",
        match dir {
            Dir::Ingress => "ingress (XDP)",
            Dir::Egress => "egress (TC)",
        },
        mutation.map_or(String::new(), |m| format!(", mutated ({m} first)"))
    );
    eprintln!("  {why}");
    eprintln!("  input  ({} bytes) {}", inp.len(), hex(inp));
    eprintln!("  output ({} bytes) {}", out.len(), hex(out));
    eprintln!("  reproduce: {reproduce}");
}
