//! Pure translation of services into the datapath's map entries (switcher_common's
//! `#[repr(C)]` layouts) and the choice of service ids, so both are tested without root.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use switcher_common::{
    Backend, Endpoint, ReverseValue, ServiceValue, FAMILY_V4, FAMILY_V6, MAX_SERVICES,
    SVC_F_REDIRECT, SVC_F_UDP_AFFINITY,
};

use crate::{
    config::Service,
    domain::{Color, Forward},
};

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// An address in the maps' 16-byte form: IPv4 in the first four bytes, the rest zero.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

pub fn endpoint(ip: IpAddr, port: u16, proto: u8) -> Endpoint {
    Endpoint {
        addr: addr_bytes(ip),
        port_be: port.to_be(),
        proto,
        family: family(ip),
    }
}

/// The SERVICES key of a service: (VIP, port, protocol).
pub fn service_key(s: &Service) -> Endpoint {
    endpoint(s.vip, s.port, s.protocol.number())
}

pub fn backend(a: SocketAddr) -> Backend {
    Backend {
        addr: addr_bytes(a.ip()),
        port_be: a.port().to_be(),
        family: family(a.ip()),
        valid: 1,
    }
}

/// The SERVICES value of service `id`, with no canary share (only the controller sets one).
pub fn service_value(s: &Service, id: u32) -> ServiceValue {
    let mut flags = 0;
    if s.forward == Forward::Redirect {
        flags |= SVC_F_REDIRECT;
    }
    if s.udp_affinity_idle.is_some() {
        flags |= SVC_F_UDP_AFFINITY;
    }
    ServiceValue {
        id,
        flags,
        udp_idle_ns: s.udp_affinity_idle.map_or(0, |d| d.as_nanos() as u64),
        drain_ns: s.drain.as_nanos() as u64,
        canary_share: 0,
        _pad: 0,
    }
}

/// The REVERSE entry that translates replies from `s`'s `color` backend back to its VIP.
pub fn reverse(s: &Service, color: Color, id: u32) -> Option<(Endpoint, ReverseValue)> {
    let addr = s.backend(color)?;
    Some((
        endpoint(addr.ip(), addr.port(), s.protocol.number()),
        ReverseValue {
            vip: addr_bytes(s.vip),
            vport_be: s.port.to_be(),
            family: family(s.vip),
            color: color.index(),
            service_id: id,
        },
    ))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no free service slot (max {MAX_SERVICES})")]
pub struct NoFreeId;

/// The id of each wanted service key: a key already in the maps keeps its id (its counters,
/// flows and active colour are indexed by it), a new key takes the lowest id nobody holds.
pub fn assign_ids(
    existing: &HashMap<Endpoint, u32>,
    wanted: &[Endpoint],
) -> Result<Vec<u32>, NoFreeId> {
    let mut used = vec![false; MAX_SERVICES as usize];
    for key in wanted {
        if let Some(&id) = existing.get(key) {
            used[id as usize % MAX_SERVICES as usize] = true;
        }
    }
    let mut next_free = 0usize;
    wanted
        .iter()
        .map(|key| match existing.get(key) {
            Some(&id) => Ok(id),
            None => {
                while next_free < used.len() && used[next_free] {
                    next_free += 1;
                }
                let slot = used.get_mut(next_free).ok_or(NoFreeId)?;
                *slot = true;
                Ok(next_free as u32)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn services() -> Vec<Service> {
        let text = r#"
[daemon]
interfaces = ["lo"]
[[service]]
name = "u4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
blue = { backend = "198.18.1.2:5514" }
udp_affinity_idle_ms = 2000
forward = "pass"
[[service]]
name = "t6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
blue = { backend = "[2001:2:0:1::2]:601" }
green = { backend = "[2001:2:0:2::2]:601" }
drain_ms = 1500
"#;
        match Config::parse(text) {
            Ok(c) => c.services,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn keys_and_backends_are_in_network_order_with_v4_in_the_first_bytes() {
        let s = services();
        let k = service_key(&s[0]);
        assert_eq!(&k.addr[..4], &[198, 18, 10, 10]);
        assert_eq!(&k.addr[4..], &[0; 12]);
        // Network byte order, whatever the host's: the program compares raw header bytes.
        assert_eq!(k.port_be.to_ne_bytes(), 514u16.to_be_bytes());
        assert_eq!((k.proto, k.family), (17, FAMILY_V4));
        let k6 = service_key(&s[1]);
        assert_eq!(k6.addr[0..2], [0x20, 0x01]);
        assert_eq!(k6.addr[15], 0x10);
        assert_eq!((k6.proto, k6.family), (6, FAMILY_V6));
        let b = backend("198.18.1.2:5514".parse().expect("addr"));
        assert_eq!(b.port_be.to_ne_bytes(), 5514u16.to_be_bytes());
        assert_eq!(b.valid, 1);
    }

    #[test]
    fn service_values_carry_flags_and_timeouts() {
        let s = services();
        let u = service_value(&s[0], 7);
        assert_eq!(u.id, 7);
        assert_eq!(u.flags, SVC_F_UDP_AFFINITY, "pass mode, affinity on");
        assert_eq!(u.udp_idle_ns, 2_000_000_000);
        let t = service_value(&s[1], 8);
        assert_eq!(t.flags, SVC_F_REDIRECT);
        assert_eq!(t.drain_ns, Duration::from_millis(1500).as_nanos() as u64);
        assert_eq!(t.canary_share, 0);
    }

    #[test]
    fn reverse_entries_map_each_backend_to_its_vip() {
        let s = services();
        assert!(
            reverse(&s[0], Color::Green, 0).is_none(),
            "no green backend"
        );
        let (k, v) = reverse(&s[1], Color::Green, 3).expect("green backend");
        assert_eq!(k.addr[..8], [0x20, 0x01, 0, 2, 0, 0, 0, 2], "2001:2:0:2::");
        assert_eq!(k.proto, 6);
        assert_eq!(v.vip, addr_bytes(s[1].vip));
        assert_eq!(v.vport_be.to_ne_bytes(), 601u16.to_be_bytes());
        assert_eq!((v.color, v.service_id), (Color::Green.index(), 3));
    }

    fn key(n: u8) -> Endpoint {
        endpoint(IpAddr::from([198, 18, 10, n]), 514, 17)
    }

    #[test]
    fn known_services_keep_their_ids_and_new_ones_fill_the_lowest_holes() {
        let existing: HashMap<Endpoint, u32> = [(key(1), 0), (key(2), 2), (key(9), 5)].into();
        // key(9) is no longer wanted: its id 5 may be reused only after 1, 3 and 4.
        let ids =
            assign_ids(&existing, &[key(3), key(2), key(4), key(1), key(5), key(6)]).expect("room");
        assert_eq!(ids, [1, 2, 3, 0, 4, 5]);
    }

    #[test]
    fn a_full_table_is_an_error_not_a_reused_id() {
        let wanted: Vec<Endpoint> = (0..=MAX_SERVICES)
            .map(|i| endpoint(IpAddr::from((0xc612_0000u32 + i).to_be_bytes()), 514, 17))
            .collect();
        assert_eq!(assign_ids(&HashMap::new(), &wanted), Err(NoFreeId));
        assert!(assign_ids(&HashMap::new(), &wanted[..MAX_SERVICES as usize]).is_ok());
    }
}
