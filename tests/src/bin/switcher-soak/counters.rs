//! Kernel counters of the lab's hosts read before and after the soak, to tell what the
//! switch did from what the lab did: resets the client's TCP connections received, the
//! backends' UDP receive-buffer and checksum errors, and packets the client's veth dropped
//! because the edge's receive ring was full (the lab's capacity, not the switch).

use anyhow::{Context, Result};
use switcher_tests::lab::{Host, Lab, Snmp, EDGE_TO_BLUE, EDGE_TO_CLIENT, EDGE_TO_GREEN, HOST_IF};

pub struct Counters {
    snmp: [Snmp; 3],
    /// The client's TcpExt TCPAbortOnClose: connections it reset itself, closing with unread
    /// data (`logger` leaves the sink's acknowledgements unread).
    abort_on_close: u64,
    link_drops: Vec<(String, u64)>,
}

/// One value of /proc/net/netstat (`TcpExt: names` / `TcpExt: values` line pairs).
fn netstat(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn read_u64(lab: &Lab, host: Host, path: &str) -> Result<u64> {
    lab.run(host, &["cat", path])?
        .trim()
        .parse()
        .with_context(|| format!("{path} in {}", lab.ns(host)))
}

/// The lab's veth ends, as (host, interface).
const LINKS: [(Host, &str); 6] = [
    (Host::Client, HOST_IF),
    (Host::Edge, EDGE_TO_CLIENT),
    (Host::Edge, EDGE_TO_BLUE),
    (Host::Edge, EDGE_TO_GREEN),
    (Host::Blue, HOST_IF),
    (Host::Green, HOST_IF),
];

/// Packets the lab's veth pairs dropped (rx_dropped + tx_dropped of every end; a full
/// receive ring, e.g. a backend that cannot keep up), per end.
pub fn link_drops(lab: &Lab) -> Result<Vec<(String, u64)>> {
    LINKS
        .iter()
        .map(|(host, ifname)| {
            let stat = |s: &str| {
                read_u64(
                    lab,
                    *host,
                    &format!("/sys/class/net/{ifname}/statistics/{s}"),
                )
            };
            Ok((
                format!("{} {ifname}", host.name()),
                stat("rx_dropped")? + stat("tx_dropped")?,
            ))
        })
        .collect()
}

/// The ends whose drops grew from `before` to `after`, and by how much.
pub fn drops_between(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .zip(before)
        .filter(|((_, a), (_, b))| a > b)
        .map(|((name, a), (_, b))| (name.clone(), a - b))
        .collect()
}

impl Counters {
    pub fn read(lab: &Lab) -> Result<Counters> {
        let snmp = [
            lab.snmp(Host::Client)?,
            lab.snmp(Host::Blue)?,
            lab.snmp(Host::Green)?,
        ];
        let text = lab.run(Host::Client, &["cat", "/proc/net/netstat"])?;
        let abort_on_close =
            netstat(&text, "TcpExt", "TCPAbortOnClose").context("TCPAbortOnClose in netstat")?;
        Ok(Counters {
            snmp,
            abort_on_close,
            link_drops: link_drops(lab)?,
        })
    }

    /// UDP datagrams the client's own kernel dropped since `before` (v4, v6): its veth could
    /// not take them (the edge's receive ring was full), so they never reached the switch.
    /// `UdpSndbufErrors`: an ENOBUFS from the device that UDP reports only with IP_RECVERR.
    pub fn client_udp_drops(&self, before: &Counters) -> (u64, u64) {
        let d = |key: &str| {
            let get = |c: &Counters| c.snmp[0].get(key).unwrap_or(0);
            get(self).saturating_sub(get(before))
        };
        (d("UdpSndbufErrors"), d("Udp6SndbufErrors"))
    }

    /// What changed since `before`: (what, how many) for the report, and the violations.
    pub fn since(&self, before: &Counters) -> (Vec<(String, u64)>, Vec<String>) {
        let d = |f: fn(&Snmp) -> u64, i: usize| f(&self.snmp[i]).saturating_sub(f(&before.snmp[i]));
        let estab = d(|s| s.tcp_estab_resets, 0);
        let own = self.abort_on_close.saturating_sub(before.abort_on_close);
        let received = estab.saturating_sub(own);
        let drops = drops_between(&before.link_drops, &self.link_drops);
        let csum = d(|s| s.udp_in_csum_errors, 1)
            + d(|s| s.udp_in_csum_errors, 2)
            + d(|s| s.udp6_in_csum_errors, 1)
            + d(|s| s.udp6_in_csum_errors, 2)
            + d(|s| s.tcp_in_csum_errors, 0)
            + d(|s| s.tcp_in_csum_errors, 1)
            + d(|s| s.tcp_in_csum_errors, 2);
        let rows = vec![
            ("client TcpEstabResets".to_string(), estab),
            (
                "  of which its own aborts (TCPAbortOnClose)".to_string(),
                own,
            ),
            ("  resets the client received".to_string(), received),
            (
                "blue UDP receive-buffer errors (v4 + v6)".to_string(),
                d(|s| s.udp_rcvbuf_errors, 1) + d(|s| s.udp6_rcvbuf_errors, 1),
            ),
            (
                "green UDP receive-buffer errors (v4 + v6)".to_string(),
                d(|s| s.udp_rcvbuf_errors, 2) + d(|s| s.udp6_rcvbuf_errors, 2),
            ),
            ("UDP and TCP checksum errors (all hosts)".to_string(), csum),
            (
                "client UDP datagrams its kernel dropped (v4, UdpSndbufErrors)".to_string(),
                self.client_udp_drops(before).0,
            ),
            (
                "client UDP datagrams its kernel dropped (v6, Udp6SndbufErrors)".to_string(),
                self.client_udp_drops(before).1,
            ),
        ];
        let mut rows = rows;
        for (end, n) in drops {
            rows.push((format!("packets dropped by the lab's veth at {end}"), n));
        }
        let mut violations = Vec::new();
        if received > 0 {
            violations.push(format!(
                "the client's TCP connections received {received} resets (TcpEstabResets {estab}, of which {own} its own aborts)"
            ));
        }
        if csum > 0 {
            violations.push(format!(
                "{csum} checksum errors: rewritten packets were corrupted"
            ));
        }
        (rows, violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_netstat_value() {
        let text =
            "TcpExt: SyncookiesSent TCPAbortOnClose\nTcpExt: 3 17\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(netstat(text, "TcpExt", "TCPAbortOnClose"), Some(17));
        assert_eq!(netstat(text, "IpExt", "InNoRoutes"), Some(0));
        assert_eq!(netstat(text, "TcpExt", "Nope"), None);
    }
}
