//! Pure translation of services into the datapath's map entries (switcher_common's
//! `#[repr(C)]` layouts) and the choice of service ids, so both are tested without root.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use switcher_common::{
    maglev, port_slot, Backend, Endpoint, FlowKey, Pool, ReverseValue, ServiceValue, FAMILY_V4,
    FAMILY_V6, MAX_MEMBERS, MAX_SERVICES, PORT_SHARED, REV_F_STATELESS, SVC_F_GELF, SVC_F_REDIRECT,
    SVC_F_UDP_AFFINITY,
};

use crate::{
    config::{Member, Service},
    domain::{Color, Forward, Protocol},
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

/// The SERVICES key a client's flow (as ingress keys it) was looked up under.
pub fn flow_service_key(k: &FlowKey) -> Endpoint {
    Endpoint {
        addr: k.dst,
        port_be: k.dport_be,
        proto: k.proto,
        family: k.family,
    }
}

/// A member as the datapath stores it, with its counter slot.
pub fn backend(a: SocketAddr, slot: u16) -> Backend {
    Backend {
        addr: addr_bytes(a.ip()),
        port_be: a.port().to_be(),
        family: family(a.ip()),
        valid: 1,
        slot,
        _pad: [0; 2],
    }
}

/// One member of a pool being written: where it is, its counter slot, whether it takes new
/// flows (its health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolMember {
    pub member: Member,
    pub slot: u16,
    pub in_service: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a pool has at most {MAX_MEMBERS} members, not {0}")]
pub struct TooManyMembers(pub usize);

/// A colour's pool: its members in order and the consistent-hashing table. The table is
/// built over every member at its weight, then the members out of service hand their slots
/// to the others ([`maglev::exclude`]): a health change moves exactly the member's own
/// share. When none is in service all of them keep their share: the switch never stops
/// sending a service's traffic by itself.
pub fn pool(members: &[PoolMember]) -> Result<Pool, TooManyMembers> {
    if members.len() > MAX_MEMBERS {
        return Err(TooManyMembers(members.len()));
    }
    let mut p = Pool::default();
    if members.is_empty() {
        return Ok(p);
    }
    p.members = members.len() as u32;
    let mut table_members = [maglev::Member {
        addr: [0; 16],
        port: 0,
        weight: 0,
    }; MAX_MEMBERS];
    let mut out = [false; MAX_MEMBERS];
    let any_in_service = members.iter().any(|m| m.in_service);
    for (i, m) in members.iter().enumerate() {
        p.member[i] = backend(m.member.addr, m.slot);
        table_members[i] = maglev::Member {
            addr: addr_bytes(m.member.addr.ip()),
            port: m.member.addr.port(),
            weight: m.member.weight.max(1),
        };
        out[i] = any_in_service && !m.in_service;
    }
    let table_members = &table_members[..members.len()];
    maglev::build(table_members, &mut p.table).map_err(|_| TooManyMembers(members.len()))?;
    if out.iter().any(|&o| o) {
        maglev::exclude(table_members, &out[..members.len()], &mut p.table)
            .map_err(|_| TooManyMembers(members.len()))?;
    }
    Ok(p)
}

/// The SERVICES value of service `id`, with no canary share (only the controller sets one)
/// and affinity epoch `epoch` (kept across re-programming; rollbacks bump it).
pub fn service_value(s: &Service, id: u32, epoch: u32) -> ServiceValue {
    let mut flags = 0;
    if s.forward == Forward::Redirect {
        flags |= SVC_F_REDIRECT;
    }
    if s.udp_affinity_idle.is_some() {
        flags |= SVC_F_UDP_AFFINITY;
    }
    if s.gelf {
        flags |= SVC_F_GELF;
    }
    ServiceValue {
        id,
        flags,
        udp_idle_ns: s.udp_affinity_idle.map_or(0, |d| d.as_nanos() as u64),
        drain_ns: s.drain.as_nanos() as u64,
        canary_share: 0,
        epoch,
        udp_max_age_ns: s.udp_affinity_max_age.as_nanos() as u64,
    }
}

/// The REVERSE entries that translate replies from `s`'s `color` members back to its VIP.
pub fn reverse(s: &Service, color: Color, id: u32) -> Vec<(Endpoint, ReverseValue)> {
    s.members(color)
        .iter()
        .map(|m| {
            (
                endpoint(m.addr.ip(), m.addr.port(), s.protocol.number()),
                ReverseValue {
                    vip: addr_bytes(s.vip),
                    vport_be: s.port.to_be(),
                    family: family(s.vip),
                    color: color.index(),
                    service_id: id,
                    flags: if s.protocol == Protocol::Udp && s.udp_affinity_idle.is_none() {
                        REV_F_STATELESS
                    } else {
                        0
                    },
                    _pad: [0; 3],
                },
            )
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no free service slot (max {MAX_SERVICES})")]
pub struct NoFreeId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no free member counter slot (max {0})")]
pub struct NoFreeSlot(pub u32);

/// Counter slots for `wanted` members (any key that names a member for good, e.g. service,
/// colour and address): a member already holding one keeps it, a new one takes the next free
/// slot below `max` from `from` on, wrapping around. Handing slots out in turn keeps a slot
/// a member just left unused for long: flows still pinned to that member carry it (for
/// their counters and their UDP affinity), and must not be taken for a new member's.
/// Returns the slots in order and the ones given out new (their counters must start at
/// zero).
pub fn assign_slots<K: std::hash::Hash + Eq + Clone>(
    existing: &HashMap<K, u16>,
    wanted: &[K],
    max: u32,
    from: u32,
) -> Result<(Vec<u16>, Vec<u16>), NoFreeSlot> {
    let mut used = vec![false; max as usize];
    for k in wanted {
        if let Some(&s) = existing.get(k) {
            if let Some(u) = used.get_mut(s as usize) {
                *u = true;
            }
        }
    }
    let mut fresh = Vec::new();
    let n = used.len();
    let mut next = from as usize % n.max(1);
    let mut given: HashMap<K, u16> = HashMap::new();
    let mut out = Vec::with_capacity(wanted.len());
    for k in wanted {
        if let Some(&s) = existing.get(k).or_else(|| given.get(k)) {
            out.push(s);
            continue;
        }
        let free = (0..n)
            .map(|i| (next + i) % n)
            .find(|&i| !used[i])
            .ok_or(NoFreeSlot(max))?;
        used[free] = true;
        next = free + 1;
        let s = free as u16;
        given.insert(k.clone(), s);
        fresh.push(s);
        out.push(s);
    }
    Ok((out, fresh))
}

/// The id of each wanted service key: a key already in the maps keeps its id (its counters,
/// flows and active colour are indexed by it), a new key takes the lowest id nobody holds and
/// no recently removed service held (`quarantined`: its fragment entries may still name it).
pub fn assign_ids(
    existing: &HashMap<Endpoint, u32>,
    wanted: &[Endpoint],
    quarantined: &HashSet<u32>,
) -> Result<Vec<u32>, NoFreeId> {
    let mut used = vec![false; MAX_SERVICES as usize];
    for &id in quarantined {
        if let Some(u) = used.get_mut(id as usize) {
            *u = true;
        }
    }
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

/// SERVICE_PORTS for services (key, id): each used slot → the only service's id + 1, or
/// PORT_SHARED when several use it. Unused slots are left out (they hold PORT_NONE).
pub fn port_slots<'a>(
    services: impl IntoIterator<Item = (&'a Endpoint, u32)>,
) -> BTreeMap<u32, u32> {
    let mut slots = BTreeMap::new();
    for (key, id) in services {
        slots
            .entry(port_slot(key.port(), key.proto, key.family))
            .and_modify(|v| *v = PORT_SHARED)
            .or_insert(id + 1);
    }
    slots
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
        let b = backend("198.18.1.2:5514".parse().expect("addr"), 9);
        assert_eq!(b.port_be.to_ne_bytes(), 5514u16.to_be_bytes());
        assert_eq!((b.valid, b.slot), (1, 9));
    }

    #[test]
    fn a_port_one_service_uses_leads_to_it_and_a_shared_one_to_the_hash() {
        use switcher_common::{PROTO_TCP, PROTO_UDP};
        let udp4 = Endpoint::v4([198, 18, 10, 10], 514, PROTO_UDP);
        let udp6 = Endpoint::v6([0x20; 16], 514, PROTO_UDP);
        let tcp4 = Endpoint::v4([198, 18, 10, 10], 514, PROTO_TCP);
        let other = Endpoint::v4([198, 18, 10, 11], 601, PROTO_TCP);
        let udp4b = Endpoint::v4([198, 18, 10, 11], 514, PROTO_UDP);
        // UDP and TCP, IPv4 and IPv6 on one port are different slots: each leads to its only
        // service.
        let slots = port_slots([(&udp4, 0), (&tcp4, 1), (&udp6, 3), (&other, 7)]);
        assert_eq!(
            slots,
            BTreeMap::from([
                (514, 1),
                (514 | 1 << 16, 2),
                (514 | 1 << 17, 4),
                (601 | 1 << 16, 8)
            ])
        );
        // A second IPv4 VIP on 514/udp: that slot sends packets to the hash.
        let slots = port_slots([(&udp4, 0), (&udp4b, 5), (&udp6, 3), (&tcp4, 1)]);
        assert_eq!(slots.get(&514), Some(&PORT_SHARED));
        assert_eq!(slots.get(&(514 | 1 << 17)), Some(&4));
        assert_eq!(slots.get(&(514 | 1 << 16)), Some(&2));
        assert!(port_slots([]).is_empty());
    }

    #[test]
    fn service_values_carry_flags_and_timeouts() {
        let s = services();
        let u = service_value(&s[0], 7, 3);
        assert_eq!(u.epoch, 3);
        assert_eq!(u.id, 7);
        assert_eq!(
            u.flags,
            SVC_F_UDP_AFFINITY | SVC_F_GELF,
            "pass mode, affinity on, GELF chunks kept whole (the UDP default)"
        );
        assert_eq!(u.udp_idle_ns, 2_000_000_000);
        let t = service_value(&s[1], 8, 0);
        assert_eq!(t.flags, SVC_F_REDIRECT, "no GELF flag on tcp");
        let mut plain = s[0].clone();
        plain.gelf = false;
        assert_eq!(service_value(&plain, 7, 3).flags, SVC_F_UDP_AFFINITY);
        assert_eq!(t.drain_ns, Duration::from_millis(1500).as_nanos() as u64);
        assert_eq!(t.canary_share, 0);
    }

    #[test]
    fn reverse_entries_map_each_backend_to_its_vip() {
        let s = services();
        assert!(
            reverse(&s[0], Color::Green, 0).is_empty(),
            "no green backend"
        );
        let (k, v) = reverse(&s[1], Color::Green, 3)[0];
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
        let ids = assign_ids(
            &existing,
            &[key(3), key(2), key(4), key(1), key(5), key(6)],
            &none(),
        )
        .expect("room");
        assert_eq!(ids, [1, 2, 3, 0, 4, 5]);
    }

    fn none() -> HashSet<u32> {
        HashSet::new()
    }

    #[test]
    fn a_quarantined_id_is_not_given_to_a_new_service() {
        let existing: HashMap<Endpoint, u32> = [(key(1), 0)].into();
        // Id 1 belonged to a service removed a moment ago: its fragments may still be around.
        let ids = assign_ids(&existing, &[key(1), key(2), key(3)], &[1].into()).expect("room");
        assert_eq!(ids, [0, 2, 3]);
        // A known service keeps its id even if it is listed (it was never removed).
        let ids = assign_ids(&existing, &[key(1)], &[0].into()).expect("room");
        assert_eq!(ids, [0]);
    }

    #[test]
    fn members_keep_their_counter_slots_and_new_ones_take_free_ones() {
        let existing: HashMap<&str, u16> = [("a", 0), ("b", 2), ("gone", 1)].into();
        let (slots, fresh) =
            assign_slots(&existing, &["b", "c", "a", "d", "c"], 8, 0).expect("room");
        assert_eq!(
            slots,
            [2, 1, 0, 3, 1],
            "a repeated key keeps the slot it was given"
        );
        assert_eq!(fresh, [1, 3]);
        // From a cursor on: the slot "gone" just left (1) is not taken before the others...
        let (slots, fresh) = assign_slots(&existing, &["a", "b", "x", "y"], 8, 3).expect("room");
        assert_eq!((slots, fresh), (vec![0, 2, 3, 4], vec![3, 4]));
        // ... and wrapping around, once the end is reached.
        let (slots, fresh) = assign_slots(&existing, &["a", "b", "x", "y"], 8, 7).expect("room");
        assert_eq!((slots, fresh), (vec![0, 2, 7, 1], vec![7, 1]));
        assert_eq!(
            assign_slots(&HashMap::new(), &["a", "b", "c"], 2, 0),
            Err(NoFreeSlot(2))
        );
    }

    fn pool_member(last: u8, slot: u16, in_service: bool) -> PoolMember {
        PoolMember {
            member: Member::new(SocketAddr::from(([198, 18, 1, last], 514))),
            slot,
            in_service,
        }
    }

    #[test]
    fn pools_hold_their_members_and_a_table_over_those_in_service() {
        assert_eq!(pool(&[]).expect("empty").members, 0);
        let p = pool(&[
            pool_member(2, 5, true),
            pool_member(3, 6, false),
            pool_member(4, 7, true),
        ])
        .expect("pool");
        assert_eq!(p.members, 3);
        assert_eq!((p.member[1].slot, p.member[1].valid), (6, 1));
        assert_eq!(p.member[1].addr[..4], [198, 18, 1, 3]);
        assert!(
            p.table.iter().all(|&i| i == 0 || i == 2),
            "member 1 is out of service"
        );
        // All out of service: all keep their share rather than the pool going dark.
        let dark = pool(&[pool_member(2, 5, false), pool_member(3, 6, false)]).expect("pool");
        assert!(dark.table.contains(&0) && dark.table.contains(&1));
        let many: Vec<PoolMember> = (0..65).map(|i| pool_member(i, i as u16, true)).collect();
        assert_eq!(pool(&many), Err(TooManyMembers(65)));
    }

    #[test]
    fn a_full_table_is_an_error_not_a_reused_id() {
        let wanted: Vec<Endpoint> = (0..=MAX_SERVICES)
            .map(|i| endpoint(IpAddr::from((0xc612_0000u32 + i).to_be_bytes()), 514, 17))
            .collect();
        assert_eq!(assign_ids(&HashMap::new(), &wanted, &none()), Err(NoFreeId));
        assert!(assign_ids(&HashMap::new(), &wanted[..MAX_SERVICES as usize], &none()).is_ok());
    }
}
