//! A colour's pool: the ingest nodes (members) of one environment, as the config, the CLI and
//! the state name them, and the checks every list of members must pass: at most
//! [`MAX_MEMBERS`], none twice, none shared with another service.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use switcher_common::MAX_MEMBERS;

use super::Service;
use crate::domain::{Color, Protocol};

/// One member (ingest node) of a colour's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub addr: SocketAddr,
    /// Its share of new flows relative to the pool's other members (1..=255).
    #[serde(default = "one")]
    pub weight: u8,
}

fn one() -> u8 {
    1
}

impl Member {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, weight: 1 }
    }
}

/// `ADDR:PORT`, or `ADDR:PORT*WEIGHT` when the weight is not 1.
impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weight == 1 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}*{}", self.addr, self.weight)
        }
    }
}

/// Reads a pool as state files and API requests write it: a list of members (each a
/// `{addr, weight}` object or an `ADDR:PORT` string), or, as earlier releases wrote, one
/// `ADDR:PORT` under the name `backend`, or null (no backend).
pub fn deserialize_members<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Member>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Addr(SocketAddr),
        Member(Member),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Pool {
        One(SocketAddr),
        Many(Vec<Item>),
    }
    Ok(match Option::<Pool>::deserialize(d)? {
        None => Vec::new(),
        Some(Pool::One(a)) => vec![Member::new(a)],
        Some(Pool::Many(items)) => items
            .into_iter()
            .map(|i| match i {
                Item::Addr(a) => Member::new(a),
                Item::Member(m) => m,
            })
            .collect(),
    })
}

/// A pool as one line: `198.18.1.2:514, 198.18.1.3:514*2`.
pub fn describe(members: &[Member]) -> String {
    members
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `ADDR:PORT[*WEIGHT],...` (the CLI's `--green` list) and checks it as a pool of a
/// service whose VIP is `vip`.
pub fn parse_list(list: &str, vip: Option<IpAddr>) -> Result<Vec<Member>, String> {
    let items: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let (addr, weight) = match item.rsplit_once('*') {
            Some((a, w)) => {
                let w = w
                    .parse::<i64>()
                    .map_err(|_| format!("{item:?}: the weight after * is not a number"))?;
                (a, w)
            }
            None => (item, 1),
        };
        let addr = member_addr(addr, vip)?;
        out.push(Member {
            addr,
            weight: weight_value(weight)?,
        });
    }
    check_pool(&out).map_err(|(_, e)| e)?;
    Ok(out)
}

/// A member's `ADDR:PORT`: a real port, in the VIP's address family.
pub(super) fn member_addr(text: &str, vip: Option<IpAddr>) -> Result<SocketAddr, String> {
    let a = text
        .parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is not ADDR:PORT"))?;
    if a.port() == 0 {
        return Err(format!("{a}: port 0 is not a backend port"));
    }
    if let Some(v) = vip {
        if v.is_ipv4() != a.is_ipv4() {
            return Err(format!("{a} is not the same address family as vip {v}"));
        }
    }
    Ok(a)
}

pub(super) fn weight_value(w: i64) -> Result<u8, String> {
    u8::try_from(w)
        .ok()
        .filter(|w| *w >= 1)
        .ok_or_else(|| format!("weight {w} is out of range: 1..=255"))
}

/// A pool's own rules: not empty, at most [`MAX_MEMBERS`], no member twice. The error names
/// the offending position.
pub fn check_pool(members: &[Member]) -> Result<(), (Option<usize>, String)> {
    if members.is_empty() {
        return Err((None, "a pool needs at least one member".into()));
    }
    if members.len() > MAX_MEMBERS {
        return Err((
            None,
            format!("{} members, at most {MAX_MEMBERS}", members.len()),
        ));
    }
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        if let Some(prev) = seen.insert(m.addr, i) {
            return Err((
                Some(i),
                format!("{} is listed twice (also at {prev})", m.addr),
            ));
        }
    }
    Ok(())
}

/// A member (address, port, protocol) named by two services. Replies are translated back to
/// the VIP by member address, so one node cannot serve two services' VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConflict {
    pub backend: SocketAddr,
    pub protocol: Protocol,
    /// The service that named it first.
    pub owner: String,
    /// Index (in the slice checked), colour and position in that colour's pool of the service
    /// that named it again.
    pub index: usize,
    pub color: Color,
    pub position: usize,
    pub name: String,
}

impl fmt::Display for BackendConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} would be a backend of both {} and {}",
            self.backend, self.protocol, self.owner, self.name
        )
    }
}

/// Every member named by more than one service (one service may use the same node for both
/// colours). The one check for the config file, deploys and reloads.
pub fn backend_conflicts(services: &[Service]) -> Vec<BackendConflict> {
    let mut seen: HashMap<(SocketAddr, Protocol), &str> = HashMap::new();
    let mut out = Vec::new();
    for (index, s) in services.iter().enumerate() {
        for color in Color::BOTH {
            for (position, m) in s.members(color).iter().enumerate() {
                match seen.get(&(m.addr, s.protocol)) {
                    Some(owner) if *owner != s.name => out.push(BackendConflict {
                        backend: m.addr,
                        protocol: s.protocol,
                        owner: owner.to_string(),
                        index,
                        color,
                        position,
                        name: s.name.clone(),
                    }),
                    Some(_) => {}
                    None => {
                        seen.insert((m.addr, s.protocol), &s.name);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(default, alias = "backend", deserialize_with = "deserialize_members")]
        members: Vec<Member>,
    }

    #[test]
    fn pools_read_from_every_form_earlier_releases_wrote() {
        let read = |j: &str| serde_json::from_str::<Holder>(j).expect(j).members;
        let a = Member::new("198.18.1.2:514".parse().expect("addr"));
        assert_eq!(read(r#"{"backend": "198.18.1.2:514"}"#), [a]);
        assert_eq!(read(r#"{"backend": null}"#), []);
        assert_eq!(read(r#"{}"#), []);
        assert_eq!(read(r#"{"members": ["198.18.1.2:514"]}"#), [a]);
        let weighted = read(r#"{"members": [{"addr": "198.18.1.2:514", "weight": 3}]}"#);
        assert_eq!(weighted[0].weight, 3);
        assert_eq!(read(r#"{"members": [{"addr": "198.18.1.2:514"}]}"#), [a]);
    }

    #[test]
    fn lists_parse_with_weights_and_are_checked_whole() {
        let v4: IpAddr = "198.18.10.10".parse().expect("ip");
        let m = parse_list("198.18.1.2:514, 198.18.1.3:514*3", Some(v4)).expect("list");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].weight, m[1].weight), (1, 3));
        assert_eq!(describe(&m), "198.18.1.2:514, 198.18.1.3:514*3");
        let v6 = parse_list("[2001:2:0:1::2]:514*2", None).expect("v6");
        assert_eq!(parse_list(&describe(&v6), None).expect("round trip"), v6);

        for (bad, why) in [
            ("", "at least one member"),
            ("198.18.1.2", "not ADDR:PORT"),
            ("198.18.1.2:0", "port 0"),
            ("198.18.1.2:514*0", "out of range"),
            ("198.18.1.2:514*256", "out of range"),
            ("198.18.1.2:514*x", "not a number"),
            ("198.18.1.2:514,198.18.1.2:514", "listed twice"),
            ("[2001:2::2]:514", "address family"),
        ] {
            let e = parse_list(bad, Some(v4)).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_MEMBERS)
            .map(|i| format!("198.18.1.{}:{}", i % 250 + 1, 1000 + i))
            .collect();
        let e = parse_list(&many.join(","), Some(v4)).expect_err("too many");
        assert!(e.contains("at most 64"), "{e}");
    }
}
