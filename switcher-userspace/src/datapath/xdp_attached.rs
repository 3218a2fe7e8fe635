//! The XDP mode the kernel actually runs the ingress program in on each interface, as
//! `ip link` shows it (`xdp` native, `xdpgeneric`): with `xdp_mode = "auto"` a driver
//! without native XDP silently gets the generic hook, several times slower. Asked with
//! RTM_GETLINK, read from IFLA_XDP's IFLA_XDP_ATTACHED.

use anyhow::{bail, Context as _, Result};

use super::netlink::{self, find_attr};

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;

/// What an interface's XDP hook holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    None,
    /// The driver's hook.
    Native,
    /// The generic (skb) hook.
    Generic,
    Offload,
    /// Programs in more than one mode.
    Multi,
}

impl Attached {
    pub fn label(self) -> &'static str {
        match self {
            Attached::None => "none",
            Attached::Native => "native",
            Attached::Generic => "generic",
            Attached::Offload => "offload",
            Attached::Multi => "multi",
        }
    }

    pub const ALL: [Attached; 5] = [
        Attached::None,
        Attached::Native,
        Attached::Generic,
        Attached::Offload,
        Attached::Multi,
    ];
}

/// The mode and program id on interface `ifname` (in this network namespace).
pub fn query(ifname: &str) -> Result<(Attached, u32)> {
    let ifindex =
        nix::net::if_::if_nametoindex(ifname).with_context(|| format!("interface {ifname}"))?;
    let sock = netlink::Socket::open(libc::NETLINK_ROUTE)?;
    let mut msg = netlink::header(RTM_GETLINK, 16);
    msg.extend_from_slice(&ifinfomsg(ifindex));
    let reply = sock
        .exchange(&msg)
        .with_context(|| format!("RTM_GETLINK {ifname}"))?;
    decode(&reply).with_context(|| format!("RTM_GETLINK {ifname}"))
}

/// struct ifinfomsg: family (AF_UNSPEC), pad, type, index, flags, change.
fn ifinfomsg(ifindex: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m
}

fn decode(reply: &[u8]) -> Result<(Attached, u32)> {
    // After the nlmsghdr, a struct ifinfomsg (16 bytes), then the attributes.
    let (kind, attrs) = netlink::reply(reply, 32)?;
    if kind != RTM_NEWLINK {
        bail!("unexpected reply type {kind}");
    }
    let Some(xdp) = find_attr(attrs, IFLA_XDP) else {
        return Ok((Attached::None, 0));
    };
    let mode = match find_attr(xdp, IFLA_XDP_ATTACHED).and_then(|v| v.first()) {
        Some(1) => Attached::Native,
        Some(2) => Attached::Generic,
        Some(3) => Attached::Offload,
        Some(4) => Attached::Multi,
        _ => Attached::None,
    };
    let prog = match find_attr(xdp, IFLA_XDP_PROG_ID) {
        Some(v) if v.len() >= 4 => u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
        _ => 0,
    };
    Ok((mode, prog))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::netlink::{attr, attr_u32};

    /// An RTM_NEWLINK reply: nlmsghdr, ifinfomsg, IFLA_IFNAME, then IFLA_XDP nested (with
    /// NLA_F_NESTED set, as the kernel sends it).
    fn newlink(xdp: Option<Vec<u8>>) -> Vec<u8> {
        let mut attrs = attr(3, b"eth0\0");
        if let Some(inner) = xdp {
            attrs.extend(attr(IFLA_XDP | 0x8000, &inner));
        }
        let mut msg = netlink::header(RTM_NEWLINK, 16 + attrs.len());
        msg.extend_from_slice(&ifinfomsg(7));
        msg.extend(attrs);
        msg
    }

    #[test]
    fn the_attached_mode_and_program_are_read() {
        let mut inner = attr(IFLA_XDP_ATTACHED, &[2]);
        inner.extend(attr_u32(IFLA_XDP_PROG_ID, 42));
        assert_eq!(
            decode(&newlink(Some(inner))).expect("decoded"),
            (Attached::Generic, 42)
        );
        let inner = attr(IFLA_XDP_ATTACHED, &[1]);
        assert_eq!(
            decode(&newlink(Some(inner))).expect("decoded"),
            (Attached::Native, 0)
        );
        assert_eq!(
            decode(&newlink(None)).expect("decoded"),
            (Attached::None, 0)
        );
    }

    #[test]
    fn errors_and_short_replies_are_errors() {
        let mut err = netlink::header(netlink::NLMSG_ERROR, 4);
        err.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert!(decode(&err).is_err());
        assert!(decode(&[0; 10]).is_err());
    }
}
