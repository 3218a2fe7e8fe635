//! Which interfaces can take XDP_REDIRECTed frames. A redirect into a device without
//! `ndo_xdp_xmit` support (a bridge, many virtual devices, a veth whose peer has neither XDP
//! nor GRO) is dropped after the program returned, so the datapath redirects only to
//! interfaces listed here and passes everything else to the kernel. The kernel reports the
//! capability (NETDEV_XDP_ACT_NDO_XMIT) through the generic-netlink "netdev" family (6.3+).

use std::io;

use anyhow::{bail, Context as _, Result};

use super::netlink::{self, attr, attr_u32, find_attr};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// The ifindexes of this network namespace whose driver accepts redirected XDP frames now.
/// An interface that disappears between the listing and its question is left out; any other
/// failure fails the whole list (the caller keeps the previous one).
pub fn redirect_targets() -> Result<Vec<u32>> {
    let sock = GenlSocket::open()?;
    let family = sock.family_id("netdev").context(
        "the kernel has no \"netdev\" generic-netlink family (Linux 6.3+): redirect disabled",
    )?;
    let ifindexes: Vec<u32> = nix::net::if_::if_nameindex()
        .context("listing interfaces")?
        .iter()
        .map(|iface| iface.index())
        .collect();
    allow_list(ifindexes, |ifindex| {
        sock.exchange(
            family,
            NETDEV_CMD_DEV_GET,
            &mut attr_u32(NETDEV_A_DEV_IFINDEX, ifindex),
        )
    })
}

/// What one interface's NETDEV_CMD_DEV_GET reply means for the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// It takes redirected frames.
    Target,
    /// It does not (or the kernel does not say).
    NotTarget,
    /// It went away after the listing (ENODEV; ENOENT from the namespace's lookup).
    Gone,
}

/// Decodes one interface's raw reply; an error reply other than "no such device" is an error.
fn interface_answer(reply: &[u8]) -> Result<Answer> {
    match reply_attrs(reply) {
        Ok(attrs) if accepts_redirect(&attrs) => Ok(Answer::Target),
        Ok(_) => Ok(Answer::NotTarget),
        Err(e) => match e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            Some(libc::ENODEV | libc::ENOENT) => Ok(Answer::Gone),
            _ => Err(e),
        },
    }
}

/// The interfaces among `ifindexes` that take redirected frames, asking each with `ask` (its
/// raw reply). One that is gone is skipped; a failed exchange or any other refusal fails.
fn allow_list(
    ifindexes: impl IntoIterator<Item = u32>,
    mut ask: impl FnMut(u32) -> Result<Vec<u8>>,
) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for ifindex in ifindexes {
        let reply = ask(ifindex)?;
        match interface_answer(&reply).with_context(|| format!("interface {ifindex}"))? {
            Answer::Target => out.push(ifindex),
            Answer::NotTarget | Answer::Gone => {}
        }
    }
    Ok(out)
}

struct GenlSocket(netlink::Socket);

impl GenlSocket {
    fn open() -> Result<Self> {
        Ok(Self(netlink::Socket::open(libc::NETLINK_GENERIC)?))
    }

    fn family_id(&self, name: &str) -> Result<u16> {
        let mut payload = attr(CTRL_ATTR_FAMILY_NAME, &[name.as_bytes(), &[0]].concat());
        let attrs = self.request_raw(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &mut payload)?;
        match find_attr(&attrs, CTRL_ATTR_FAMILY_ID) {
            Some(v) if v.len() >= 2 => Ok(u16::from_ne_bytes([v[0], v[1]])),
            _ => bail!("no id for generic-netlink family {name:?}"),
        }
    }

    /// Sends one request and returns the attributes of its reply.
    fn request_raw(&self, family: u16, cmd: u8, attrs: &mut Vec<u8>) -> Result<Vec<u8>> {
        reply_attrs(&self.exchange(family, cmd, attrs)?)
    }

    /// Sends one request and returns its reply as it arrived (an error reply included).
    fn exchange(&self, family: u16, cmd: u8, attrs: &mut Vec<u8>) -> Result<Vec<u8>> {
        let mut msg = netlink::header(family, 4 + attrs.len());
        msg.extend_from_slice(&[cmd, 1, 0, 0]); // genl header: cmd, version
        msg.append(attrs);
        self.0.exchange(&msg)
    }
}

/// The attributes of a generic-netlink reply (after its 16-byte nlmsghdr and 4-byte
/// genlmsghdr), or the error the kernel answered with.
fn reply_attrs(reply: &[u8]) -> Result<Vec<u8>> {
    Ok(netlink::reply(reply, 20)?.1.to_vec())
}

/// Whether a NETDEV_CMD_DEV_GET reply says the device takes redirected frames.
fn accepts_redirect(attrs: &[u8]) -> bool {
    match find_attr(attrs, NETDEV_A_DEV_XDP_FEATURES) {
        Some(v) if v.len() >= 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[..8]);
            u64::from_ne_bytes(b) & NETDEV_XDP_ACT_NDO_XMIT != 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NETDEV_CMD_DEV_GET reply laid out by hand from include/uapi/linux/netlink.h,
    /// genetlink.h and netdev.h (little-endian, as on the machines this runs on), not with
    /// the encoder above: nlmsghdr, genlmsghdr, then ifindex (u32), xdp-features (u64,
    /// with the NLA_F_NET_BYTEORDER bit set to check the type is masked), xdp-rx-metadata.
    #[cfg(target_endian = "little")]
    fn dev_get_reply(features: u64) -> Vec<u8> {
        let mut r = vec![
            52, 0, 0, 0, // nlmsg_len: 16 + 4 + 8 + 12 + 12
            0x1e, 0, // nlmsg_type: the netdev family's id (any)
            0, 0, // flags
            1, 0, 0, 0, // seq
            0, 0, 0, 0, // pid
            1, 1, 0, 0, // genl: NETDEV_CMD_DEV_GET, version 1
            8, 0, 1, 0, 7, 0, 0, 0, // NETDEV_A_DEV_IFINDEX = 7
            12, 0, 3, 0x40, // NETDEV_A_DEV_XDP_FEATURES, NLA_F_NET_BYTEORDER set
        ];
        r.extend_from_slice(&features.to_le_bytes());
        r.extend_from_slice(&[12, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        r
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_hand_laid_kernel_reply_is_decoded() {
        // basic | redirect | ndo-xmit | xsk-zerocopy
        let attrs = reply_attrs(&dev_get_reply(0b1111)).expect("reply");
        assert_eq!(attrs.len(), 32, "the attributes after the two headers");
        assert_eq!(
            find_attr(&attrs, NETDEV_A_DEV_IFINDEX),
            Some(&[7, 0, 0, 0][..])
        );
        assert!(accepts_redirect(&attrs));
        // basic | redirect only: it can redirect elsewhere but takes no redirected frames.
        assert!(!accepts_redirect(
            &reply_attrs(&dev_get_reply(0b011)).expect("reply")
        ));
        // No features attribute at all (an older kernel): not a target.
        assert!(!accepts_redirect(&attrs[..8]));
    }

    /// An NLMSG_ERROR reply carrying `-errno` (and the request's 16-byte header).
    #[cfg(target_endian = "little")]
    fn error_reply(errno: i32) -> Vec<u8> {
        let mut err = vec![36, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&(-errno).to_le_bytes());
        err.extend_from_slice(&[0; 16]);
        err
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_interface_gone_between_listing_and_asking_is_skipped() {
        assert_eq!(
            interface_answer(&error_reply(libc::ENODEV)).expect("gone"),
            Answer::Gone
        );
        assert_eq!(
            interface_answer(&error_reply(libc::ENOENT)).expect("gone"),
            Answer::Gone
        );
        assert_eq!(
            interface_answer(&dev_get_reply(0b100)).expect("reply"),
            Answer::Target
        );
        assert_eq!(
            interface_answer(&dev_get_reply(0b011)).expect("reply"),
            Answer::NotTarget
        );
        // Interface 2 vanished after the listing: 1 and 3 stay targets.
        let replies = |ifindex: u32| -> Result<Vec<u8>> {
            Ok(match ifindex {
                2 => error_reply(libc::ENODEV),
                4 => dev_get_reply(0b011),
                _ => dev_get_reply(0b100),
            })
        };
        assert_eq!(
            allow_list([1, 2, 3, 4], replies).expect("the rest is kept"),
            vec![1, 3]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn any_other_refusal_or_a_failed_exchange_fails_the_list() {
        let e = allow_list([1, 2], |i| {
            Ok(if i == 2 {
                error_reply(libc::EPERM)
            } else {
                dev_get_reply(0b100)
            })
        })
        .expect_err("EPERM is not a vanished interface");
        assert!(format!("{e:#}").contains("interface 2"), "{e:#}");
        assert!(allow_list([1], |_| anyhow::bail!("recv failed")).is_err());
        assert!(interface_answer(&dev_get_reply(1)[..19]).is_err());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn errors_and_short_replies_are_errors() {
        // NLMSG_ERROR carrying -ENODEV: the interface went away between list and ask.
        let err = error_reply(libc::ENODEV);
        let e = reply_attrs(&err).expect_err("refused");
        let io = e
            .downcast_ref::<io::Error>()
            .expect("the kernel's errno is kept");
        assert_eq!(io.raw_os_error(), Some(libc::ENODEV));
        assert!(reply_attrs(&dev_get_reply(1)[..19]).is_err());
        // A length field larger than what arrived is cut at what arrived.
        let mut long = dev_get_reply(0b100);
        long[0] = 200;
        assert!(accepts_redirect(&reply_attrs(&long).expect("reply")));
    }
}
