//! What runs in the lab, shared by the rig, the demo and `cargo xtask lab up`: the standard
//! services and their pools over the ingest nodes (config text) and the reference sink's
//! arguments. No switcher dependency here, so
//! xtask can use it before bpf-linker exists.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::lab::{
    etcd_member_v4, Host, Node, BLUE_V4, BLUE_V6, ETCD_CLIENT_PORT, GREEN_V4, GREEN_V6, VIP_V4,
    VIP_V6,
};

pub const UDP_PORT: u16 = 514;
pub const TCP_PORT: u16 = 601;
pub const HTTP_PORT: u16 = 8080;
/// GELF over UDP on every sink (the standard GELF port), and a second GELF port for services
/// the tests set up differently (e.g. `gelf = false`).
pub const GELF_PORT: u16 = 12201;
pub const GELF_PORT_2: u16 = 12202;
/// Every reference sink's second UDP input: where shadowed copies are sent in the lab.
pub const SHADOW_PORT: u16 = 5140;
/// RELP (rsyslog imrelp) on every rsyslog ingest node.
pub const RELP_PORT: u16 = 2514;

/// Validation and watch settings for the standard services (append as `extra`): the sink's
/// HTTP health, a short acknowledged load on its TCP port compared with the serving colour,
/// its error counter, and a short watch window.
pub const STANDARD_CHECKS: &str = r#"
[service.health]
http = "http://{addr}:8080/health"
successes = 2
interval_ms = 100
deadline_ms = 3000
[service.load]
protocol = "tcp"
port = 601
lines = 300
rate = 1000
ack = "line"
timeout_ms = 5000
max_p99_ms = 25
[service.metrics]
url = "http://{addr}:8080/metrics"
[[service.metrics.check]]
name = "ingest_errors_total"
max_increase = 0
[service.watch]
window_ms = 3000
interval_ms = 250
failures = 2
"#;

/// Health for services whose nodes run rsyslog (no HTTP): a TCP connect to the node's
/// rsyslog on [`UDP_PORT`], which it serves over TCP as well (so UDP services are probed too).
/// Append as `extra`.
pub const RSYSLOG_HEALTH: &str = r#"
[service.health]
tcp_port = 514
timeout_ms = 500
"#;

/// The four standard services: udp4/tcp4 on the IPv4 VIP, udp6/tcp6 on the IPv6 VIP, with
/// the given forwarding mode. `extra` is appended to each service: keys, then sub-tables such
/// as `[service.health]`.
pub fn standard_services(forward: &str, extra: &str) -> String {
    let mut s = String::new();
    for (name, vip, proto, port, blue, green) in [
        (
            "udp4",
            VIP_V4.to_string(),
            "udp",
            UDP_PORT,
            BLUE_V4.to_string(),
            GREEN_V4.to_string(),
        ),
        (
            "tcp4",
            VIP_V4.to_string(),
            "tcp",
            TCP_PORT,
            BLUE_V4.to_string(),
            GREEN_V4.to_string(),
        ),
        (
            "udp6",
            VIP_V6.to_string(),
            "udp",
            UDP_PORT,
            format!("[{BLUE_V6}]"),
            format!("[{GREEN_V6}]"),
        ),
        (
            "tcp6",
            VIP_V6.to_string(),
            "tcp",
            TCP_PORT,
            format!("[{BLUE_V6}]"),
            format!("[{GREEN_V6}]"),
        ),
    ] {
        let _ = write!(
            s,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n\
             active = \"blue\"\nforward = \"{forward}\"\n\
             blue = {{ backend = \"{blue}:{port}\" }}\ngreen = {{ backend = \"{green}:{port}\" }}\n{extra}\n"
        );
    }
    s
}

/// GELF over UDP on the IPv4 VIP: `gelf4` on [`GELF_PORT`] (chunks of a message kept
/// together, the default) and `gelf4-plain` on [`GELF_PORT_2`] with `gelf = false` (each chunk
/// steered by itself), blue and green the standard sinks. `extra` is appended to each.
pub fn gelf_services(forward: &str, extra: &str) -> String {
    let mut s = String::new();
    for (name, port, setting) in [
        ("gelf4", GELF_PORT, ""),
        ("gelf4-plain", GELF_PORT_2, "gelf = false\n"),
    ] {
        let _ = write!(
            s,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP_V4}\"\nport = {port}\nprotocol = \"udp\"\n\
             active = \"blue\"\nforward = \"{forward}\"\n{setting}\
             blue = {{ backend = \"{BLUE_V4}:{port}\" }}\ngreen = {{ backend = \"{GREEN_V4}:{port}\" }}\n{extra}\n"
        );
    }
    s
}

/// The standard services (udp4, tcp4, udp6, tcp6 as in [`standard_services`]) with each colour
/// a pool: blue's members are the ingest nodes `blue` (their address at the service's port),
/// green's `green`. `extra` is appended to each service.
pub fn pool_services(forward: &str, extra: &str, blue: &[Node], green: &[Node]) -> String {
    let pool = |nodes: &[Node], v6: bool, port: u16| {
        nodes
            .iter()
            .map(|n| {
                if v6 {
                    format!("\"[{}]:{port}\"", n.v6())
                } else {
                    format!("\"{}:{port}\"", n.v4())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::new();
    for (name, vip, proto, port, v6) in [
        ("udp4", VIP_V4.to_string(), "udp", UDP_PORT, false),
        ("tcp4", VIP_V4.to_string(), "tcp", TCP_PORT, false),
        ("udp6", VIP_V6.to_string(), "udp", UDP_PORT, true),
        ("tcp6", VIP_V6.to_string(), "tcp", TCP_PORT, true),
    ] {
        let _ = write!(
            s,
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n\
             active = \"blue\"\nforward = \"{forward}\"\n\
             blue = {{ backends = [{}] }}\ngreen = {{ backends = [{}] }}\n{extra}\n",
            pool(blue, v6, port),
            pool(green, v6, port),
        );
    }
    s
}

/// The daemon's metrics and dashboard listener, inside the edge host's network namespace.
pub const WEB_LISTEN: &str = "127.0.0.1:9477";

/// A whole daemon config for the lab's edge host; `work` holds the socket and the state.
pub fn lab_config(interface: &str, bpffs_dir: &Path, work: &Path, services: &str) -> String {
    format!(
        "[daemon]\ninterfaces = [\"{interface}\"]\nbpffs_dir = \"{}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"{WEB_LISTEN}\"\n{services}",
        bpffs_dir.display(),
        work.join("switcher.sock").display(),
        work.join("state").display(),
    )
}

/// Arguments of `ingest-sink` on a backend host: UDP 514 and TCP 601 on both families,
/// HTTP (/health, /metrics, /stats) on 8080, every line appended to `out`.
pub fn sink_args(host: Host, out: &Path) -> Vec<String> {
    sink_args_at(host.name(), host.v4(), host.v6(), out)
}

/// [`sink_args`] for one ingest node: the same ports on the node's own addresses.
pub fn node_sink_args(node: Node, out: &Path) -> Vec<String> {
    sink_args_at(&node.name(), node.v4(), node.v6(), out)
}

fn sink_args_at(name: &str, v4: Ipv4Addr, v6: Ipv6Addr, out: &Path) -> Vec<String> {
    [
        "--name".to_string(),
        name.into(),
        "--udp".into(),
        format!("{v4}:{UDP_PORT}"),
        "--udp".into(),
        format!("[{v6}]:{UDP_PORT}"),
        "--tcp".into(),
        format!("{v4}:{TCP_PORT}"),
        "--tcp".into(),
        format!("[{v6}]:{TCP_PORT}"),
        "--udp".into(),
        format!("{v4}:{SHADOW_PORT}"),
        "--udp".into(),
        format!("[{v6}]:{SHADOW_PORT}"),
        "--gelf".into(),
        format!("{v4}:{GELF_PORT}"),
        "--gelf".into(),
        format!("[{v6}]:{GELF_PORT}"),
        "--gelf".into(),
        format!("{v4}:{GELF_PORT_2}"),
        "--http".into(),
        format!("{v4}:{HTTP_PORT}"),
        "--http".into(),
        format!("[{v6}]:{HTTP_PORT}"),
        "--out".into(),
        out.display().to_string(),
        // Acknowledge each TCP line: the controller's load check measures write-to-ack.
        "--ack".into(),
    ]
    .into()
}

/// The `[fleet]` section of host `i` of `cluster`, reaching `members` etcd members: short
/// leases and deadlines, so failures show within seconds in the lab (3 s, not 2: five labs
/// and etcd on two shared vCPUs once kept a live host from renewing a 2 s lease in time).
/// Requests get the shipped default's 2 s: under the same load, etcd once took over 1 s to
/// answer a quorum read, and a fleet flip failed on it.
pub fn fleet_section(cluster: &str, i: usize, members: usize) -> String {
    let endpoints: Vec<String> = (0..members)
        .map(|m| format!("\"http://{}:{ETCD_CLIENT_PORT}\"", etcd_member_v4(m)))
        .collect();
    format!(
        "[fleet]\nendpoints = [{}]\ncluster = \"{cluster}\"\nhost_id = \"edge-{i}\"\n\
         lease_ttl_s = 3\nack_deadline_ms = 5000\nconnect_timeout_ms = 2000\n\n",
        endpoints.join(", ")
    )
}
