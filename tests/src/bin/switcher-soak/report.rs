//! The report printed at the end: operations by kind and what came of them, lines per
//! stream, the daemon's memory and descriptors per incarnation, and every violation, with the
//! operations around the first lost line of a stream.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use crate::{
    checks::StreamResult,
    ops::Outcome,
    plan::Kind,
    traffic::{Expect, Stream},
    usage::{self, Incarnation, Verdict},
};

/// One operation as it happened.
#[derive(Debug, Clone)]
pub struct Record {
    /// Since the start of the soak.
    pub at: Duration,
    pub took: Duration,
    pub op: String,
    pub kind: Kind,
    pub outcome: Outcome,
}

impl Record {
    /// One line for the live log.
    pub fn line(&self) -> String {
        format!(
            "[{:>7.1}s] {} ({:.1} s) {}",
            self.at.as_secs_f64(),
            self.op,
            self.took.as_secs_f64(),
            self.outcome.describe()
        )
    }
}

pub struct Report<'a> {
    pub seed: u64,
    pub minutes: u64,
    pub ran: Duration,
    pub records: &'a [Record],
    pub streams: &'a [StreamResult],
    pub stream_specs: &'a [Stream],
    pub incarnations: &'a [Incarnation],
    pub verdicts: &'a [Verdict],
    pub counters: &'a [(String, u64)],
    pub loss_notes: &'a [String],
    pub violations: &'a [String],
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

impl Report<'_> {
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\n=== soak report: seed {}, {} minutes of traffic, ran {} ===",
            self.seed,
            self.minutes,
            secs(self.ran)
        );
        self.operations(&mut o);
        self.lines(&mut o);
        self.usage(&mut o);
        if !self.counters.is_empty() {
            let _ = writeln!(o, "\nkernel counters over the run:");
            for (what, n) in self.counters {
                let _ = writeln!(o, "  {what:<48} {n}");
            }
        }
        self.verdict(&mut o);
        o
    }

    fn operations(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\noperations: {} in all\n  {:<22} {:>5} {:>5} {:>8} {:>8} {:>7} {:>9}",
            self.records.len(),
            "kind",
            "count",
            "done",
            "refused",
            "rejected",
            "skipped",
            "violation"
        );
        let mut refusals: BTreeMap<&str, usize> = BTreeMap::new();
        let mut rejections: BTreeMap<String, usize> = BTreeMap::new();
        for kind in Kind::ALL {
            let of: Vec<&Record> = self.records.iter().filter(|r| r.kind == kind).collect();
            let n = |f: fn(&Outcome) -> bool| of.iter().filter(|r| f(&r.outcome)).count();
            let _ = writeln!(
                o,
                "  {:<22} {:>5} {:>5} {:>8} {:>8} {:>7} {:>9}",
                kind.label(),
                of.len(),
                n(|x| matches!(x, Outcome::Done(_))),
                n(|x| matches!(x, Outcome::Refused(..))),
                n(|x| matches!(x, Outcome::Rejected(_))),
                n(|x| matches!(x, Outcome::Skipped(_))),
                n(|x| matches!(x, Outcome::Violation(_))),
            );
        }
        for r in self.records {
            match &r.outcome {
                Outcome::Refused(rule, _) => *refusals.entry(rule).or_default() += 1,
                Outcome::Rejected(e) => {
                    // The reason after the deployment number: what failed.
                    let why = e.split_once(" failed: ").map_or(e.as_str(), |(_, w)| w);
                    let why: String = why.chars().take(100).collect();
                    *rejections.entry(why).or_default() += 1;
                }
                _ => {}
            }
        }
        if !refusals.is_empty() {
            let _ = writeln!(o, "  refusals (product rules, expected):");
            for (rule, n) in refusals {
                let _ = writeln!(o, "    {n:>4}  {rule}");
            }
        }
        if !rejections.is_empty() {
            let _ = writeln!(o, "  validations that rejected the candidate:");
            for (why, n) in rejections {
                let _ = writeln!(o, "    {n:>4}  {why}");
            }
        }
    }

    fn lines(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\nlines per stream:\n  {:<7} {:<6} {:>8} {:>8} {:>8} {:>6} {:>6}  {:<9} client",
            "stream", "via", "expected", "blue", "green", "lost", "dup", "colour"
        );
        let (mut exp, mut got, mut lost, mut dup) = (0u64, 0usize, 0usize, 0usize);
        for s in self.streams {
            let rule = match s.expect {
                Expect::AnyColour => "any".to_string(),
                Expect::On(c) => format!("only {c}"),
            };
            let _ = writeln!(
                o,
                "  {:<7} {:<6} {:>8} {:>8} {:>8} {:>6} {:>6}  {:<9} {}{}",
                s.name,
                s.service,
                s.expected,
                s.blue,
                s.green,
                s.lost.len(),
                s.dup.len(),
                rule,
                s.client,
                if !s.ok() {
                    "  <-- FAIL"
                } else if !s.lost.is_empty() {
                    "  (lost at the client's own NIC)"
                } else {
                    ""
                }
            );
            exp += s.expected;
            got += s.blue + s.green;
            lost += s.lost.len();
            dup += s.dup.len();
        }
        let _ = writeln!(
            o,
            "  total: {exp} lines expected, {got} received, {lost} lost, {dup} duplicated"
        );
        for note in self.loss_notes {
            let _ = writeln!(o, "  {note}");
        }
        // Where in the run a stream lost lines (bursts a second or more apart), and what the
        // schedule was doing then.
        for s in self.streams.iter().filter(|s| !s.lost.is_empty()) {
            let Some(spec) = self.stream_specs.iter().find(|x| x.name == s.name) else {
                continue;
            };
            let mut bursts: Vec<(u64, u64, usize)> = Vec::new();
            for &seq in &s.lost {
                match bursts.last_mut() {
                    Some((_, last, n))
                        if spec.due(seq) <= spec.due(*last) + Duration::from_secs(1) =>
                    {
                        *last = seq;
                        *n += 1;
                    }
                    _ => bursts.push((seq, seq, 1)),
                }
            }
            let _ = writeln!(
                o,
                "  {}: {} lines lost in {} burst(s):",
                s.name,
                s.lost.len(),
                bursts.len()
            );
            for (first, last, n) in bursts.iter().take(8) {
                let (from, to) = (spec.due(*first), spec.due(*last));
                let _ = writeln!(
                    o,
                    "    {n} lines, seq {first}..={last}, due at {:.1}..{:.1} s; operations around then:",
                    from.as_secs_f64(),
                    to.as_secs_f64()
                );
                let window = Duration::from_secs(3);
                for r in self
                    .records
                    .iter()
                    .filter(|r| r.at + r.took + window >= from && r.at <= to + window)
                {
                    let _ = writeln!(o, "      {}", r.line());
                }
            }
        }
    }

    fn usage(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\ndaemon RSS and descriptors per incarnation (after a {} warm-up; bounds: RSS +{:.0}%, fds +{}; medians of the first and last 3 samples):",
            secs(usage::WARMUP),
            usage::MAX_RSS_GROWTH * 100.0,
            usage::MAX_FD_GROWTH
        );
        let _ = writeln!(
            o,
            "  {:>8} {:>7} {:>7}  {:<28} {:<18} verdict",
            "pid", "lived", "samples", "RSS kB first -> last (peak)", "fds first -> last"
        );
        for v in self.verdicts {
            let fig = |f: Option<(u64, u64, u64)>| {
                f.map_or("-".to_string(), |(a, b, p)| format!("{a} -> {b} ({p})"))
            };
            let verdict = if !v.judged {
                "too short to judge".to_string()
            } else if v.problems.is_empty() {
                "flat".to_string()
            } else {
                "GREW".to_string()
            };
            let _ = writeln!(
                o,
                "  {:>8} {:>7} {:>7}  {:<28} {:<18} {verdict}",
                v.pid,
                secs(v.lived),
                v.samples,
                fig(v.rss_kb),
                fig(v.fds)
            );
        }
        // The longest incarnation's series, one sample a minute (or every tenth).
        if let Some(longest) = self
            .incarnations
            .iter()
            .max_by_key(|i| i.settled().len())
            .filter(|i| !i.settled().is_empty())
        {
            let settled = longest.settled();
            let every = (60 / usage::EVERY.as_secs().max(1)).max(1) as usize;
            let series: Vec<String> = settled
                .iter()
                .step_by(every)
                .chain(settled.last())
                .map(|s| format!("{:.0}s:{}kB/{}fd", s.at.as_secs_f64(), s.rss_kb, s.fds))
                .collect();
            let _ = writeln!(o, "  pid {} over time: {}", longest.pid, series.join(" "));
        }
    }

    fn verdict(&self, o: &mut String) {
        if self.violations.is_empty() {
            let _ = writeln!(o, "\nno violations (seed {})", self.seed);
            return;
        }
        let _ = writeln!(
            o,
            "\n{} VIOLATIONS (seed {}; reproduce with `cargo xtask soak --minutes {} --seed {}`):",
            self.violations.len(),
            self.seed,
            self.minutes,
            self.seed
        );
        for v in self.violations {
            let _ = writeln!(o, "  - {v}");
        }
    }
}
