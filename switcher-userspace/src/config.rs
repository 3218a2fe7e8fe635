//! The TOML config: parsed into raw structs, then validated whole into [`Config`]. Any error is
//! reported with its field path and nothing is applied.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use switcher_common::{BLUE, GREEN, MAX_SERVICES, PROTO_TCP, PROTO_UDP};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/switcher";
pub const DEFAULT_SOCKET: &str = "/run/switcher/switcher.sock";
pub const DEFAULT_DRAIN_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid config, nothing applied:\n{}", .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

/// One validation failure: `field` is a path like `service[1].blue.backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: RawDaemon,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    interfaces: Vec<String>,
    xdp_mode: Option<String>,
    bpffs_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    forward: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: String,
    port: i64,
    protocol: String,
    active: Option<String>,
    blue: Option<RawColor>,
    green: Option<RawColor>,
    forward: Option<String>,
    udp_affinity_idle_ms: Option<u64>,
    drain_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColor {
    backend: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
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

impl std::str::FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("expected blue or green, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
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

/// How rewritten packets leave the edge host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// bpf_fib_lookup + XDP_REDIRECT, XDP_PASS when that cannot apply.
    Redirect,
    /// Always XDP_PASS: the kernel routes to the backend (local backends, netfilter wanted).
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpModeCfg {
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeCfg,
    pub bpffs_dir: PathBuf,
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub active: Color,
    pub blue: Option<SocketAddr>,
    pub green: Option<SocketAddr>,
    pub forward: Forward,
    /// UDP only: per-source-flow affinity with this idle timeout.
    pub udp_affinity_idle: Option<Duration>,
    pub drain: Duration,
}

impl Service {
    pub fn backend(&self, c: Color) -> Option<SocketAddr> {
        match c {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub services: Vec<Service>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ParseFailure::Invalid(errors) => ConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            },
        })
    }

    pub fn parse(text: &str) -> Result<Config, ParseFailure> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string()))?;
        validate(raw).map_err(ParseFailure::Invalid)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug)]
pub enum ParseFailure {
    Syntax(String),
    Invalid(Vec<FieldError>),
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    if raw.daemon.interfaces.is_empty() {
        errs.push("daemon.interfaces", "at least one interface is required");
    }
    for (i, ifname) in raw.daemon.interfaces.iter().enumerate() {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
            errs.push(
                format!("daemon.interfaces[{i}]"),
                format!("{ifname:?} is not a valid interface name"),
            );
        }
    }
    let xdp_mode = match raw.daemon.xdp_mode.as_deref() {
        None | Some("auto") => XdpModeCfg::Auto,
        Some("native") => XdpModeCfg::Native,
        Some("generic") => XdpModeCfg::Generic,
        Some(other) => {
            errs.push(
                "daemon.xdp_mode",
                format!("expected auto, native or generic, got {other:?}"),
            );
            XdpModeCfg::Auto
        }
    };
    let default_forward = parse_forward(raw.daemon.forward.as_deref(), "daemon.forward", &mut errs);

    if raw.services.len() > MAX_SERVICES as usize {
        errs.push(
            "service",
            format!("{} services, at most {MAX_SERVICES}", raw.services.len()),
        );
    }

    let mut services = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut backends: HashMap<(SocketAddr, Protocol), String> = HashMap::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        let at = |f: &str| format!("service[{i}].{f}");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            errs.push(
                at("name"),
                format!("{:?}: use letters, digits, - _ .", s.name),
            );
        } else if let Some(prev) = names.insert(s.name.clone(), i) {
            errs.push(
                at("name"),
                format!("{:?} already used by service[{prev}]", s.name),
            );
        }
        let vip: Option<IpAddr> = match s.vip.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                errs.push(
                    at("vip"),
                    format!("{:?} is not an IPv4 or IPv6 address", s.vip),
                );
                None
            }
        };
        let port = match u16::try_from(s.port) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                errs.push(at("port"), format!("{} is not a port (1-65535)", s.port));
                None
            }
        };
        let protocol = match s.protocol.as_str() {
            "udp" => Some(Protocol::Udp),
            "tcp" => Some(Protocol::Tcp),
            other => {
                errs.push(
                    at("protocol"),
                    format!("expected udp or tcp, got {other:?}"),
                );
                None
            }
        };
        let active = match s.active.as_deref().map(str::parse::<Color>).transpose() {
            Ok(c) => c.unwrap_or(Color::Blue),
            Err(e) => {
                errs.push(at("active"), e);
                Color::Blue
            }
        };
        let mut backend = |c: Option<RawColor>, color: Color| -> Option<SocketAddr> {
            let c = c?;
            let field = at(&format!("{color}.backend"));
            match c.backend.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => {
                    errs.push(field, "port 0 is not a backend port");
                    None
                }
                Ok(a) => {
                    if let Some(v) = vip {
                        if v.is_ipv4() != a.is_ipv4() {
                            errs.push(
                                field.clone(),
                                format!("{a} is not the same address family as vip {v}"),
                            );
                        }
                    }
                    if let Some(p) = protocol {
                        // Replies are translated back by backend address, so one backend
                        // cannot serve two services' VIPs.
                        if let Some(other) = backends.insert((a, p), s.name.clone()) {
                            if other != s.name {
                                errs.push(
                                    field.clone(),
                                    format!("{a}/{p} is already the backend of service {other:?}"),
                                );
                            }
                        }
                    }
                    Some(a)
                }
                Err(_) => {
                    errs.push(field, format!("{:?} is not ADDR:PORT", c.backend));
                    None
                }
            }
        };
        let blue = backend(s.blue, Color::Blue);
        let green = backend(s.green, Color::Green);
        let has_active = match active {
            Color::Blue => blue.is_some(),
            Color::Green => green.is_some(),
        };
        if !has_active {
            errs.push(at("active"), format!("{active} has no backend"));
        }
        if let (Some(v), Some(p), Some(pr)) = (vip, port, protocol) {
            if let Some(prev) = keys.insert((v, p, pr), i) {
                errs.push(
                    at("vip"),
                    format!("{v}:{p}/{pr} is already service[{prev}]"),
                );
            }
        }
        let forward = match s.forward.as_deref() {
            None => default_forward,
            f => parse_forward(f, &at("forward"), &mut errs),
        };
        let udp_affinity_idle = match s.udp_affinity_idle_ms {
            None | Some(0) => None,
            Some(ms) => {
                if protocol == Some(Protocol::Tcp) {
                    errs.push(
                        at("udp_affinity_idle_ms"),
                        "only for udp services (tcp is always pinned)",
                    );
                }
                Some(Duration::from_millis(ms))
            }
        };
        let drain = Duration::from_millis(s.drain_ms.unwrap_or(DEFAULT_DRAIN_MS));
        if let (Some(vip), Some(port), Some(protocol)) = (vip, port, protocol) {
            services.push(Service {
                name: s.name,
                vip,
                port,
                protocol,
                active,
                blue,
                green,
                forward,
                udp_affinity_idle,
                drain,
            });
        }
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Config {
        daemon: DaemonConfig {
            interfaces: raw.daemon.interfaces,
            xdp_mode,
            bpffs_dir: raw
                .daemon
                .bpffs_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR)),
            socket: raw
                .daemon
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        },
        services,
    })
}

fn parse_forward(v: Option<&str>, field: &str, errs: &mut Errors) -> Forward {
    match v {
        None | Some("redirect") => Forward::Redirect,
        Some("pass") => Forward::Pass,
        Some(other) => {
            errs.push(field, format!("expected redirect or pass, got {other:?}"));
            Forward::Redirect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "syslog-udp"
vip = "198.18.0.10"
port = 514
protocol = "udp"
active = "blue"
blue  = { backend = "198.18.1.2:514" }
green = { backend = "198.18.2.2:514" }

[[service]]
name = "syslog-tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
blue  = { backend = "[2001:2:0:1::2]:601" }
forward = "pass"
"#;

    fn errors(text: &str) -> Vec<FieldError> {
        match Config::parse(text) {
            Err(ParseFailure::Invalid(e)) => e,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD).expect("valid config");
        assert_eq!(c.daemon.interfaces, vec!["eth0"]);
        assert_eq!(c.daemon.bpffs_dir, PathBuf::from(DEFAULT_BPFFS_DIR));
        assert_eq!(c.services.len(), 2);
        let s = &c.services[0];
        assert_eq!(s.port, 514);
        assert_eq!(s.protocol, Protocol::Udp);
        assert_eq!(s.green, Some("198.18.2.2:514".parse().expect("addr")));
        assert_eq!(s.forward, Forward::Redirect);
        assert_eq!(c.services[1].forward, Forward::Pass);
        assert_eq!(c.services[1].active, Color::Blue);
    }

    #[test]
    fn reports_every_bad_field_with_its_path() {
        let text = GOOD
            .replace("port = 514", "port = 70000")
            .replace("\"198.18.2.2:514\"", "\"198.18.2.2\"")
            .replace("protocol = \"tcp\"", "protocol = \"sctp\"");
        let e = errors(&text);
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"service[0].port"), "{e:?}");
        assert!(fields.contains(&"service[0].green.backend"), "{e:?}");
        assert!(fields.contains(&"service[1].protocol"), "{e:?}");
    }

    #[test]
    fn rejects_duplicates_family_mismatch_and_missing_active_backend() {
        let text = GOOD
            .replace("name = \"syslog-tcp6\"", "name = \"syslog-udp\"")
            .replace("[2001:2:0:1::2]:601", "198.18.1.9:601")
            .replace(
                "active = \"blue\"",
                "active = \"green\"\nudp_affinity_idle_ms = 5",
            )
            .replace("green = { backend = \"198.18.2.2:514\" }", "");
        let e = errors(&text);
        let msg = e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            msg.contains("service[1].name: \"syslog-udp\" already used"),
            "{msg}"
        );
        assert!(
            msg.contains("service[1].blue.backend") && msg.contains("address family"),
            "{msg}"
        );
        assert!(
            msg.contains("service[0].active: green has no backend"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_shared_backend_and_duplicate_service_key() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"dup\"\nvip = \"198.18.0.10\"\nport = 514\nprotocol = \"udp\"\nblue = {{ backend = \"198.18.1.2:514\" }}\n"
        );
        let e = errors(&text);
        let msg = e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            msg.contains("service[2].vip: 198.18.0.10:514/udp is already service[0]"),
            "{msg}"
        );
        assert!(
            msg.contains("already the backend of service \"syslog-udp\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_rejected() {
        let text = GOOD.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\ninterface = 1",
        );
        match Config::parse(&text) {
            Err(ParseFailure::Syntax(m)) => assert!(m.contains("interface"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Config::parse("[daemon"),
            Err(ParseFailure::Syntax(_))
        ));
    }

    #[test]
    fn tcp_service_rejects_udp_affinity() {
        let text = GOOD.replace("forward = \"pass\"", "udp_affinity_idle_ms = 1000");
        let e = errors(&text);
        assert_eq!(e[0].field, "service[1].udp_affinity_idle_ms");
    }
}
