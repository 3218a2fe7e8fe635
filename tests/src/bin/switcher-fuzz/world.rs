//! The services the fuzz configures, and what the datapath made of them: ids, active colours
//! and each colour's pool as the maps hold it (read back, not assumed from the config).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use switcher::domain::Color;
use switcher_tests::loaded::LoadedDatapath;

/// IPv4 and IPv6, UDP with and without affinity, TCP; pools of one to three members with
/// weights; both colours active somewhere (a datapath that always took blue would be caught);
/// pass mode and redirect mode (which falls back to the kernel here: the fuzz runs in a
/// network namespace of its own with no route and an empty REDIRECT_OK map, so the rewrite is
/// all there is to see). Every member is unique across services (egress maps a member back
/// to its one service).
pub const SERVICES: &str = r#"
[[service]]
name = "udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "pass"
active = "blue"
blue  = { backends = ["198.18.1.2:5514", "198.18.1.3:5514", "198.18.1.4:5514"], weights = [1, 2, 1] }
green = { backend = "198.18.2.2:6514" }

[[service]]
name = "udp4-affinity"
vip = "198.18.10.10"
port = 515
protocol = "udp"
active = "green"
udp_affinity_idle_ms = 30000
blue  = { backend = "198.18.1.2:5515" }
green = { backends = ["198.18.2.2:6515", "198.18.2.3:6515"] }

[[service]]
name = "tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "pass"
active = "green"
blue  = { backend = "198.18.1.2:1601" }
green = { backends = ["198.18.2.2:2601", "198.18.2.3:2601", "198.18.2.4:2601"] }

[[service]]
name = "tcp4-b"
vip = "198.18.10.11"
port = 601
protocol = "tcp"
active = "blue"
blue  = { backends = ["198.18.1.5:1601", "198.18.1.6:1601"] }
green = { backend = "198.18.2.5:2601" }

[[service]]
name = "udp6"
vip = "2001:2:0:10::10"
port = 514
protocol = "udp"
forward = "pass"
active = "green"
blue  = { backend = "[2001:2:0:1::2]:5514" }
green = { backends = ["[2001:2:0:2::2]:6514", "[2001:2:0:2::3]:6514"] }

[[service]]
name = "udp6-affinity"
vip = "2001:2:0:10::10"
port = 515
protocol = "udp"
active = "blue"
udp_affinity_idle_ms = 30000
blue  = { backends = ["[2001:2:0:1::2]:5515", "[2001:2:0:1::3]:5515"] }
green = { backend = "[2001:2:0:2::2]:6515" }

[[service]]
name = "tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
active = "blue"
blue  = { backends = ["[2001:2:0:1::2]:1601", "[2001:2:0:1::3]:1601"] }
green = { backend = "[2001:2:0:2::2]:2601" }
"#;

/// Client addresses the generator uses most (others come from mutations).
pub const CLIENT4: [u8; 3] = [198, 18, 0];
pub const CLIENT6: [u8; 14] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// A router between client and backends (sends ICMP errors about others' packets).
pub const ROUTER4: [u8; 4] = [198, 18, 0, 254];
pub const ROUTER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub tcp: bool,
    pub affinity: bool,
    /// The colour new flows get (no flips during a fuzz run).
    pub active: Color,
    /// Each colour's members, as the pool in the maps lists them.
    pub members: [Vec<SocketAddr>; 2],
}

impl Service {
    pub fn proto(&self) -> u8 {
        if self.tcp {
            crate::wire::TCP
        } else {
            crate::wire::UDP
        }
    }

    pub fn vip_bytes(&self) -> Vec<u8> {
        addr_bytes(self.vip)
    }

    /// A UDP service without affinity keeps no flow state: egress translates every reply of
    /// its members.
    pub fn stateless(&self) -> bool {
        !self.tcp && !self.affinity
    }

    pub fn active_members(&self) -> &[SocketAddr] {
        &self.members[self.active.index() as usize]
    }
}

pub fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

pub struct World {
    pub services: Vec<Service>,
}

impl World {
    /// Applies [`SERVICES`] and reads back what the maps hold.
    pub fn configure(dp: &mut LoadedDatapath) -> Result<Self> {
        let cfg = dp.apply(SERVICES)?;
        let mut services = Vec::new();
        for s in &cfg.services {
            let id = dp.id(&s.name)?;
            let active = Color::from_index(dp.read(id)?.active.color());
            let mut members = [Vec::new(), Vec::new()];
            for c in Color::BOTH {
                let reader = dp.dp()?.reader();
                members[c.index() as usize] = reader
                    .members(id, c)
                    .with_context(|| format!("reading the {c} pool of {}", s.name))?
                    .into_iter()
                    .map(|m| m.addr)
                    .collect();
            }
            services.push(Service {
                name: s.name.clone(),
                id,
                vip: s.vip,
                port: s.port,
                tcp: s.protocol == switcher::domain::Protocol::Tcp,
                affinity: s.udp_affinity_idle.is_some(),
                active,
                members,
            });
        }
        anyhow::ensure!(
            services.iter().all(|s| !s.active_members().is_empty()),
            "every service needs members in its active colour"
        );
        Ok(Self { services })
    }

    /// The service a packet to `dst`:`port` over `proto` belongs to.
    pub fn service(&self, dst: IpAddr, port: u16, proto: u8) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.vip == dst && s.port == port && s.proto() == proto)
    }

    /// The service and colour whose member `addr` is.
    pub fn member_of(&self, addr: SocketAddr, proto: u8) -> Option<(&Service, Color)> {
        self.services
            .iter()
            .filter(|s| s.proto() == proto)
            .find_map(|s| {
                Color::BOTH
                    .into_iter()
                    .find(|c| s.members[c.index() as usize].contains(&addr))
                    .map(|c| (s, c))
            })
    }
}
