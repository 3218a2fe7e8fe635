//! The lab's address plan: the v4/v6 addresses and subnets of every namespace and the VIP
//! nets, and the veth interface names.

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

/// Interface name of the client's and the backends' veth end.
pub const HOST_IF: &str = "eth0";
/// Edge interface towards the client (where the XDP program is attached).
pub const EDGE_TO_CLIENT: &str = "to-client";
/// Edge interface towards blue.
pub const EDGE_TO_BLUE: &str = "to-blue";
/// Edge interface towards green.
pub const EDGE_TO_GREEN: &str = "to-green";
