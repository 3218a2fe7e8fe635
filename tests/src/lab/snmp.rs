//! The SNMP counter parser: [`Snmp`], the counters of `/proc/net/snmp` and `/proc/net/snmp6`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// Counters from `/proc/net/snmp` and `/proc/net/snmp6` of one namespace.
///
/// The named fields are the ones the tests check; [`Snmp::raw`] has every counter, keyed like
/// `nstat` does (`UdpInDatagrams`, `TcpOutRsts`, `Udp6InDatagrams`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snmp {
    pub udp_in_datagrams: u64,
    pub udp_in_errors: u64,
    pub udp_rcvbuf_errors: u64,
    pub udp_in_csum_errors: u64,
    pub tcp_in_csum_errors: u64,
    pub tcp_out_rsts: u64,
    pub tcp_attempt_fails: u64,
    pub tcp_estab_resets: u64,
    pub udp6_in_datagrams: u64,
    pub udp6_rcvbuf_errors: u64,
    pub udp6_in_csum_errors: u64,
    pub raw: BTreeMap<String, u64>,
}

impl Snmp {
    /// Parses the text of `/proc/net/snmp` (header/value line pairs per protocol) and
    /// `/proc/net/snmp6` (one `Name value` per line).
    pub fn parse(snmp: &str, snmp6: &str) -> Result<Snmp> {
        let mut raw = BTreeMap::new();
        let mut lines = snmp.lines().filter(|l| !l.trim().is_empty());
        while let Some(header) = lines.next() {
            let values = lines
                .next()
                .with_context(|| format!("snmp: no value line after {header:?}"))?;
            let (proto, names) = header
                .split_once(':')
                .with_context(|| format!("snmp: bad line {header:?}"))?;
            let (proto2, nums) = values
                .split_once(':')
                .with_context(|| format!("snmp: bad line {values:?}"))?;
            if proto != proto2 {
                bail!("snmp: header {proto:?} followed by values of {proto2:?}");
            }
            for (name, num) in names.split_whitespace().zip(nums.split_whitespace()) {
                // Tcp MaxConn is -1; it is no counter, skip what is not unsigned.
                if let Ok(v) = num.parse::<u64>() {
                    raw.insert(format!("{proto}{name}"), v);
                }
            }
        }
        for line in snmp6.lines() {
            let mut it = line.split_whitespace();
            if let (Some(name), Some(num)) = (it.next(), it.next()) {
                if let Ok(v) = num.parse::<u64>() {
                    raw.insert(name.to_owned(), v);
                }
            }
        }
        let get = |key: &str| {
            raw.get(key)
                .copied()
                .with_context(|| format!("snmp: no counter {key}"))
        };
        Ok(Snmp {
            udp_in_datagrams: get("UdpInDatagrams")?,
            udp_in_errors: get("UdpInErrors")?,
            udp_rcvbuf_errors: get("UdpRcvbufErrors")?,
            udp_in_csum_errors: get("UdpInCsumErrors")?,
            tcp_in_csum_errors: get("TcpInCsumErrors")?,
            tcp_out_rsts: get("TcpOutRsts")?,
            tcp_attempt_fails: get("TcpAttemptFails")?,
            tcp_estab_resets: get("TcpEstabResets")?,
            udp6_in_datagrams: get("Udp6InDatagrams")?,
            udp6_rcvbuf_errors: get("Udp6RcvbufErrors")?,
            udp6_in_csum_errors: get("Udp6InCsumErrors")?,
            raw,
        })
    }

    /// Any counter by its `nstat` name, e.g. `IcmpInEchos`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.raw.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 10
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 3 4 5 6 0 100 100 0 0 7 8
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 11 0 12 13 14 0 15 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";
    const SNMP6: &str = "\
Ip6InReceives                   \t5
Udp6InDatagrams                 \t21
Udp6RcvbufErrors                \t22
Udp6InCsumErrors                \t23
";

    #[test]
    fn parses_snmp() -> Result<()> {
        let s = Snmp::parse(SNMP, SNMP6)?;
        assert_eq!(s.udp_in_datagrams, 11);
        assert_eq!(s.udp_in_errors, 12);
        assert_eq!(s.udp_rcvbuf_errors, 14);
        assert_eq!(s.udp_in_csum_errors, 15);
        assert_eq!(s.tcp_attempt_fails, 5);
        assert_eq!(s.tcp_estab_resets, 6);
        assert_eq!(s.tcp_out_rsts, 7);
        assert_eq!(s.tcp_in_csum_errors, 8);
        assert_eq!(s.udp6_in_datagrams, 21);
        assert_eq!(s.udp6_rcvbuf_errors, 22);
        assert_eq!(s.udp6_in_csum_errors, 23);
        assert_eq!(s.get("IpInReceives"), Some(10));
        assert_eq!(s.get("TcpMaxConn"), None);
        Ok(())
    }
}
