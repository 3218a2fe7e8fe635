//! A netlink request and its reply over a raw socket, and the attribute encoding both the
//! generic-netlink ("netdev": redirect capability) and the rtnetlink (RTM_GETLINK: the XDP
//! mode attached) queries use. One request, one reply datagram: enough for single-object
//! GET requests, which is all the daemon asks.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context as _, Result};

pub const NLM_F_REQUEST: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;

pub struct Socket(OwnedFd);

impl Socket {
    /// A netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_GENERIC).
    pub fn open(protocol: i32) -> Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a netlink socket");
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one whole message (header included) and returns the reply as it arrived.
    pub fn exchange(&self, msg: &[u8]) -> Result<Vec<u8>> {
        // SAFETY: msg is a valid buffer of msg.len() bytes.
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a netlink request");
        }
        let mut buf = vec![0u8; 16384];
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading a netlink reply");
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

/// One reply message: its type and the bytes after its first `header` bytes (the 16-byte
/// nlmsghdr plus the family's own header), up to the length it announces; an error reply is
/// the `io::Error` the kernel answered with.
pub fn reply(msg: &[u8], header: usize) -> Result<(u16, &[u8])> {
    if msg.len() < 20 {
        anyhow::bail!("short netlink reply ({} bytes)", msg.len());
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
        return Err(io::Error::from_raw_os_error(-errno)).context("netlink request refused");
    }
    let total = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).min(msg.len());
    Ok((kind, msg.get(header.min(total)..total).unwrap_or_default()))
}

/// A 16-byte nlmsghdr for a request of `kind` whose payload is `payload_len` bytes.
pub fn header(kind: u16, payload_len: usize) -> Vec<u8> {
    let len = 16 + payload_len;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
    msg
}

pub fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut v = Vec::with_capacity((len + 3) & !3);
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize((len + 3) & !3, 0);
    v
}

pub fn attr_u32(kind: u16, value: u32) -> Vec<u8> {
    attr(kind, &value.to_ne_bytes())
}

/// The payload of the first attribute of `kind` in a flat attribute list (the nested and
/// byte-order flags of the type are ignored).
pub fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut list = attr(2, b"netdev\0");
        assert_eq!(list.len(), 12, "4 header + 7 value, padded to 12");
        list.extend(attr_u32(1, 0x1234));
        assert_eq!(find_attr(&list, 2), Some(&b"netdev\0"[..]));
        assert_eq!(find_attr(&list, 1), Some(&0x1234u32.to_ne_bytes()[..]));
        assert_eq!(find_attr(&list, 3), None);
        // A truncated list is not read past its end.
        assert_eq!(find_attr(&list[..6], 1), None);
    }
}
