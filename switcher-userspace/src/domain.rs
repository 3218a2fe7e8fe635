//! The words every layer uses: colours (with the index the datapath's maps use for them),
//! protocols, how rewritten packets leave, XDP attach modes, and the clock the controller
//! records time with. Nothing here reads a file, a map or a socket.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use switcher_common::{BLUE, GREEN, PROTO_TCP, PROTO_UDP};

/// One of a service's two slots. The active colour gets new flows; the other is idle, draining
/// or kept warm for rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const BOTH: [Color; 2] = [Color::Blue, Color::Green];

    /// The index the datapath's maps use (switcher_common::BLUE / GREEN).
    pub fn index(self) -> u8 {
        match self {
            Color::Blue => BLUE,
            Color::Green => GREEN,
        }
    }

    pub fn from_index(i: u8) -> Self {
        if i & 1 == GREEN {
            Color::Green
        } else {
            Color::Blue
        }
    }

    pub fn other(self) -> Self {
        Self::from_index(self.index() ^ 1)
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Color::Blue => "blue",
            Color::Green => "green",
        })
    }
}

impl FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("expected blue or green, got {other:?}")),
        }
    }
}

/// The transport of a service, and of a synthetic load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Udp => PROTO_UDP,
            Protocol::Tcp => PROTO_TCP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Protocol::Udp),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(format!("expected udp or tcp, got {other:?}")),
        }
    }
}

/// How rewritten packets leave the edge host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// bpf_fib_lookup + XDP_REDIRECT, XDP_PASS when that cannot apply.
    Redirect,
    /// Always XDP_PASS: the kernel routes to the backend (local backends, netfilter wanted).
    Pass,
}

impl FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redirect" => Ok(Forward::Redirect),
            "pass" => Ok(Forward::Pass),
            other => Err(format!("expected redirect or pass, got {other:?}")),
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native where the driver supports it, generic otherwise (the kernel decides).
    #[default]
    Auto,
    Native,
    Generic,
}

impl FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            other => Err(format!("expected auto, native or generic, got {other:?}")),
        }
    }
}

/// Unix time in milliseconds: every transition, event and deadline is recorded in it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `base_ms` plus `d` in Unix milliseconds, saturating: a deadline that never wraps, whatever
/// duration it is given (the config bounds its own, this is for everything else).
pub fn ms_after(base_ms: u64, d: Duration) -> u64 {
    base_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as RFC 3339 UTC.
pub fn fmt_time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(fmt_time(1_795_478_400_000), "2026-11-24T00:00:00.000Z");
    }

    #[test]
    fn deadlines_saturate_instead_of_wrapping() {
        assert_eq!(ms_after(1_000, Duration::from_millis(500)), 1_500);
        assert_eq!(ms_after(now_ms(), Duration::MAX), u64::MAX);
        assert_eq!(
            ms_after(u64::MAX - 1, Duration::from_millis(u64::MAX)),
            u64::MAX
        );
    }

    #[test]
    fn colours_map_to_the_datapath_indexes_and_back() {
        for c in Color::BOTH {
            assert_eq!(Color::from_index(c.index()), c);
            assert_ne!(c.other(), c);
            assert_eq!(c.to_string().parse::<Color>(), Ok(c));
        }
        assert_eq!(Color::Blue.index(), BLUE);
        assert_eq!(Color::Green.index(), GREEN);
        assert!("red".parse::<Color>().is_err());
    }

    #[test]
    fn protocols_forward_and_modes_parse_what_the_config_documents() {
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("tcp".parse::<Protocol>().map(Protocol::number), Ok(6));
        assert_eq!(
            "sctp".parse::<Protocol>(),
            Err("expected udp or tcp, got \"sctp\"".into())
        );
        assert_eq!("pass".parse::<Forward>(), Ok(Forward::Pass));
        assert!("drop".parse::<Forward>().is_err());
        assert_eq!("generic".parse::<XdpMode>(), Ok(XdpMode::Generic));
        assert!("skb".parse::<XdpMode>().is_err());
    }
}
