//! The end-of-run verdicts on the traffic: every line of every stream exactly once across
//! both colours (the tests' own `Received::loss_and_duplicates`), a TCP stream's lines all
//! at the colour its connection was established on, and every sender finished cleanly (a TCP
//! connection that was reset makes log-sender exit 2 and count an error).

use std::collections::BTreeSet;

use switcher::domain::Color;
use switcher_tests::rig::{self, Received};

use crate::traffic::{Expect, Sender, Stream};

/// One stream's figures.
#[derive(Debug, Clone)]
pub struct StreamResult {
    pub name: String,
    pub client: String,
    pub service: &'static str,
    pub expected: u64,
    pub blue: usize,
    pub green: usize,
    /// Missing sequence numbers (those of failed `logger` calls excluded).
    pub lost: Vec<u64>,
    /// Sequence numbers that arrived more than once, or that the stream never sent.
    pub dup: Vec<u64>,
    pub expect: Expect,
    /// Lines at the colour the stream must not reach.
    pub wrong_colour: usize,
    /// The lost lines are accounted for by datagrams the client's own kernel dropped before
    /// they reached the switch ([`attribute_udp_loss`]).
    pub lost_at_client: bool,
}

impl StreamResult {
    pub fn ok(&self) -> bool {
        (self.lost.is_empty() || self.lost_at_client)
            && self.dup.is_empty()
            && self.wrong_colour == 0
    }

    fn udp_v6(&self) -> Option<bool> {
        self.service
            .starts_with("udp")
            .then(|| self.service.ends_with('6'))
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let first = |v: &[u64]| format!("{:?}", &v[..v.len().min(10)]);
        if !self.lost.is_empty() && !self.lost_at_client {
            p.push(format!(
                "{} ({}): {} of {} lines lost, first {}",
                self.name,
                self.service,
                self.lost.len(),
                self.expected,
                first(&self.lost)
            ));
        }
        if !self.dup.is_empty() {
            p.push(format!(
                "{} ({}): {} lines duplicated or foreign, first {}",
                self.name,
                self.service,
                self.dup.len(),
                first(&self.dup)
            ));
        }
        if let (Expect::On(c), true) = (self.expect, self.wrong_colour > 0) {
            p.push(format!(
                "{} ({}): a TCP connection established on {c} moved: {} lines at {}",
                self.name,
                self.service,
                self.wrong_colour,
                c.other()
            ));
        }
        p
    }
}

/// Judges `stream` by what the sinks received; `excluded` are seqs whose sending failed
/// (reported on their own).
pub fn check_stream(stream: &Stream, got: &Received, excluded: &BTreeSet<u64>) -> StreamResult {
    let step = stream.step.max(1);
    let count = stream.count;
    // Line `offset + i * step` becomes index i; a seq the stream never sends lands past
    // `count`, where loss_and_duplicates reports it.
    let index = |seq: u64| -> u64 {
        match seq.checked_sub(stream.offset) {
            Some(d) if d % step == 0 && d / step < count => d / step,
            _ => count.saturating_add(1).saturating_add(seq),
        }
    };
    let back = |i: u64| -> u64 {
        if i < count {
            stream.offset + i * step
        } else {
            i - count - 1
        }
    };
    let indexed = Received {
        blue: got.blue.iter().map(|s| index(*s)).collect(),
        green: got.green.iter().map(|s| index(*s)).collect(),
    };
    let (lost, dup) = indexed.loss_and_duplicates(count);
    let lost = lost
        .into_iter()
        .map(back)
        .filter(|s| !excluded.contains(s))
        .collect();
    let dup = dup.into_iter().map(back).collect();
    let wrong_colour = match stream.expect {
        Expect::AnyColour => 0,
        Expect::On(Color::Blue) => got.green.len(),
        Expect::On(Color::Green) => got.blue.len(),
    };
    StreamResult {
        name: stream.name.clone(),
        client: stream.client.clone(),
        service: stream.service,
        expected: count,
        blue: got.blue.len(),
        green: got.green.len(),
        lost,
        dup,
        expect: stream.expect,
        wrong_colour,
        lost_at_client: false,
    }
}

/// UDP lines lost per address family, against the datagrams the client's kernel itself
/// dropped (`drops`: v4, v6; see `counters`): when a family's streams lost no more lines than
/// that, every lost line is one the client never handed to the network, and the streams are
/// marked so. Returns a note per family with losses, for the report.
pub fn attribute_udp_loss(results: &mut [StreamResult], drops: (u64, u64)) -> Vec<String> {
    let mut notes = Vec::new();
    for (v6, dropped) in [(false, drops.0), (true, drops.1)] {
        let lost: u64 = results
            .iter()
            .filter(|r| r.udp_v6() == Some(v6))
            .map(|r| r.lost.len() as u64)
            .sum();
        if lost == 0 {
            continue;
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        if lost <= dropped {
            for r in results.iter_mut().filter(|r| r.udp_v6() == Some(v6)) {
                r.lost_at_client = true;
            }
            notes.push(format!(
                "{family} UDP: {lost} lines lost, all within the {dropped} datagrams the client's own kernel dropped before the switch (its veth ring was full)"
            ));
        } else {
            notes.push(format!(
                "{family} UDP: {lost} lines lost, more than the {dropped} datagrams the client's kernel dropped: the switch path lost lines"
            ));
        }
    }
    notes
}

/// A finished sender: exited 0, no error counted, every line sent. Returns the problems.
pub fn check_sender(s: &Sender) -> Vec<String> {
    let mut p = Vec::new();
    match s.proc.try_wait() {
        Ok(Some(st)) if st.success() => {}
        Ok(Some(st)) => p.push(format!(
            "{} failed ({st}; exit 2 is a failed TCP connection, e.g. a reset): {}",
            s.label,
            s.proc.stderr_tail(5)
        )),
        Ok(None) => p.push(format!("{} did not finish", s.label)),
        Err(e) => p.push(format!("{}: {e:#}", s.label)),
    }
    match rig::sender_summary(&s.proc) {
        Ok(sum) => {
            let sent = sum["sent"].as_u64().unwrap_or(0);
            let errors = sum["errors"].as_u64().unwrap_or(0);
            if errors > 0 {
                p.push(format!("{}: {errors} send errors ({sum})", s.label));
            }
            if sent != s.count {
                p.push(format!(
                    "{}: sent {sent} of {} lines ({sum})",
                    s.label, s.count
                ));
            }
        }
        Err(e) => p.push(format!("{}: {e:#}", s.label)),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stream(offset: u64, step: u64, count: u64, expect: Expect) -> Stream {
        Stream {
            name: "s".into(),
            client: String::new(),
            service: "tcp4",
            offset,
            step,
            count,
            expect,
            start: Duration::ZERO,
            rate: 1.0,
            sender: None,
        }
    }

    #[test]
    fn lines_of_one_connection_among_three_are_accounted_for() {
        // Connection 1 of 3 over 10 lines sends 1, 4, 7.
        let s = stream(1, 3, 3, Expect::On(Color::Blue));
        let got = Received {
            blue: vec![1, 7, 7, 5],
            green: vec![],
        };
        let r = check_stream(&s, &got, &BTreeSet::new());
        assert_eq!(r.lost, vec![4]);
        assert_eq!(r.dup, vec![7, 5]);
        assert_eq!(r.wrong_colour, 0);
        assert!(!r.ok());
    }

    #[test]
    fn udp_loss_is_attributed_to_the_client_only_when_its_drops_cover_it() {
        let lossy = |service: &'static str, lost: usize| StreamResult {
            name: service.into(),
            client: String::new(),
            service,
            expected: 100,
            blue: 100 - lost,
            green: 0,
            lost: (0..lost as u64).collect(),
            dup: vec![],
            expect: Expect::AnyColour,
            wrong_colour: 0,
            lost_at_client: false,
        };
        let mut r = vec![lossy("udp4", 3), lossy("udp6", 5), lossy("tcp4", 0)];
        let notes = attribute_udp_loss(&mut r, (3, 4));
        assert_eq!(notes.len(), 2);
        assert!(r[0].ok() && r[0].problems().is_empty());
        assert!(!r[1].ok() && !r[1].problems().is_empty());
    }

    #[test]
    fn a_tcp_stream_at_the_other_colour_moved_and_excluded_seqs_are_not_lost() {
        let s = stream(0, 1, 4, Expect::On(Color::Blue));
        let got = Received {
            blue: vec![0, 1],
            green: vec![2],
        };
        let r = check_stream(&s, &got, &BTreeSet::from([3]));
        assert!(r.lost.is_empty() && r.dup.is_empty());
        assert_eq!(r.wrong_colour, 1);
        assert_eq!(r.problems().len(), 1);
    }
}
