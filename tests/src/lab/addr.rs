//! The lab's address plan: the v4/v6 addresses and subnets of every namespace and the VIP
//! nets, the ingest nodes' addresses on the backend hosts, and the veth interface names.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Client `eth0`.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Client `eth0`.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
/// Edge `to-client`: the client's gateway.
pub const EDGE_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Edge `to-client`: the client's gateway.
pub const EDGE_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0xfe);
/// Blue `eth0`.
pub const BLUE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Blue `eth0`.
pub const BLUE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
/// Edge `to-blue`: blue's gateway.
pub const EDGE_BLUE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Edge `to-blue`: blue's gateway.
pub const EDGE_BLUE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
/// Green `eth0`.
pub const GREEN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// Green `eth0`.
pub const GREEN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 2);
/// Edge `to-green`: green's gateway.
pub const EDGE_GREEN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Edge `to-green`: green's gateway.
pub const EDGE_GREEN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
/// An example VIP inside [`VIP_NET_V4`].
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 10);
/// An example VIP inside [`VIP_NET_V6`].
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, 0x10);
/// The VIP net the client routes via the edge.
pub const VIP_NET_V4: &str = "198.18.10.0/24";
/// The VIP net the client routes via the edge.
pub const VIP_NET_V6: &str = "2001:2:0:10::/64";
/// Blue's subnet.
pub const BLUE_NET_V4: &str = "198.18.1.0/24";
/// Blue's subnet.
pub const BLUE_NET_V6: &str = "2001:2:0:1::/64";
/// Green's subnet.
pub const GREEN_NET_V4: &str = "198.18.2.0/24";
/// Green's subnet.
pub const GREEN_NET_V6: &str = "2001:2:0:2::/64";

/// Most ingest nodes a backend host carries (see [`node_v4`]).
pub const MAX_NODES: usize = 64;

/// Node `index` of a backend host whose main address is `main` (blue's [`BLUE_V4`] or green's
/// [`GREEN_V4`]): node 0 is that address, node `i` the `i`-th one after it (198.18.1.2,
/// 198.18.1.3, ...). Below [`MAX_NODES`], so never the subnet's broadcast address.
pub const fn node_v4(main: Ipv4Addr, index: usize) -> Ipv4Addr {
    assert!(index < MAX_NODES, "node index out of range");
    let [a, b, c, d] = main.octets();
    Ipv4Addr::new(a, b, c, d + index as u8)
}

/// Node `index`'s IPv6 address, from the host's main one (as [`node_v4`]: 2001:2:0:1::2,
/// 2001:2:0:1::3, ...).
pub const fn node_v6(main: Ipv6Addr, index: usize) -> Ipv6Addr {
    assert!(index < MAX_NODES, "node index out of range");
    let s = main.segments();
    Ipv6Addr::new(
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        s[5],
        s[6],
        s[7] + index as u16,
    )
}

/// Interface name of the client's and the backends' veth end.
pub const HOST_IF: &str = "eth0";
/// Edge interface towards the client (where the XDP program is attached).
pub const EDGE_TO_CLIENT: &str = "to-client";
/// Edge interface towards blue.
pub const EDGE_TO_BLUE: &str = "to-blue";
/// Edge interface towards green.
pub const EDGE_TO_GREEN: &str = "to-green";

/// The control net of fleet tests: the etcd members ([`etcd_member_v4`]) and the edges that
/// [`super::Etcd::connect`] joins to them ([`control_v4`]). Only the lab's edges and the etcd
/// namespace carry it (the benchmark's synthetic 198.19.0.0/16 SYN sources never enter a lab).
pub const CONTROL_NET_V4: &str = "198.19.0.0/24";
/// The edge's interface on the control net.
pub const CONTROL_IF: &str = "ctl0";
/// Most members of an [`super::Etcd`] cluster.
pub const MAX_ETCD_MEMBERS: usize = 3;
/// Most labs joined to one control net ([`control_v4`] indexes).
pub const MAX_CONTROL_LABS: usize = 100;
/// etcd's client port on every member.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port on every member.
pub const ETCD_PEER_PORT: u16 = 2380;

/// etcd member `index`'s address (198.19.0.1, .2, .3).
pub const fn etcd_member_v4(index: usize) -> Ipv4Addr {
    assert!(index < MAX_ETCD_MEMBERS, "etcd member index out of range");
    Ipv4Addr::new(198, 19, 0, 1 + index as u8)
}

/// The address of the edge joined to the control net as number `index` (198.19.0.100, ...).
pub const fn control_v4(index: usize) -> Ipv4Addr {
    assert!(index < MAX_CONTROL_LABS, "control net index out of range");
    Ipv4Addr::new(198, 19, 0, 100 + index as u8)
}
