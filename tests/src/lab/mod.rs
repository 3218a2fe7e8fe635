//! The lab: four network namespaces wired with veth pairs, built with iproute2.
//!
//! ```text
//! client ns  eth0 198.18.0.1/24, 2001:2::1/64      ──veth── edge ns  to-client 198.18.0.254/24, 2001:2::fe/64
//! blue ns    eth0 198.18.1.2/24, 2001:2:0:1::2/64  ──veth── edge ns  to-blue   198.18.1.1/24,   2001:2:0:1::1/64
//! green ns   eth0 198.18.2.2/24, 2001:2:0:2::2/64  ──veth── edge ns  to-green  198.18.2.1/24,   2001:2:0:2::1/64
//! ```
//!
//! A lab built with [`Lab::up_with_nodes`] has N ingest nodes per colour: blue's and green's
//! `eth0` carry N addresses each (198.18.1.2, 198.18.1.3, ...; 2001:2:0:1::2, ...), one per
//! [`Node`]; [`Lab::start_rsyslog_at`] binds a real rsyslog to one node's addresses.
//!
//! The client reaches the VIP nets (198.18.10.0/24, 2001:2:0:10::/64) and the backend nets via
//! the edge; the backends default-route via the edge; the edge forwards (v4 and v6) with
//! `rp_filter` off. Namespaces are named `{prefix}-client`, `{prefix}-edge`, `{prefix}-blue` and
//! `{prefix}-green`; tests use [`Lab::unique_prefix`] (the whole pid is in it).
//!
//! Labs run one at a time on the machine: [`Lab::up`] waits for its turn (an exclusive lock
//! held until the lab is down), claims its prefix for this process, and first sweeps what
//! labs of dead owners left (`claim.rs` says how an owner is known to be dead).
//!
//! Fleet tests add an etcd cluster in a namespace of its own, `{prefix}-etcd`, on the control
//! net 198.19.0.0/24, and join edges to it with `ctl0` ([`Etcd`], `etcd.rs`).
//!
//! Everything a [`Lab`] starts ([`Lab::spawn`], [`Lab::spawn_ready`], [`Lab::start_rsyslog`]) is
//! tracked and killed, and the namespaces deleted, by [`Lab::down`] or when the `Lab` is dropped
//! (also while a test panics).
//!
//! ```no_run
//! use switcher_tests::lab::{Host, Lab, EDGE_CLIENT_V4};
//! # fn main() -> anyhow::Result<()> {
//! let mut lab = Lab::up(&Lab::unique_prefix("ex"))?;
//! lab.run(Host::Client, &["ping", "-c1", "-W1", &EDGE_CLIENT_V4.to_string()])?;
//! let sink = lab.spawn_ready(Host::Blue, "sh", &["-c", "echo READY; exec sleep 60"], "READY",
//!     std::time::Duration::from_secs(5))?;
//! println!("sink pid {}", sink.pid());
//! lab.down()?;
//! # Ok(()) }
//! ```

mod addr;
mod certs;
mod claim;
mod command;
mod etcd;
mod flows;
mod forwarder;
mod netns;
mod proc;
mod rsyslog;
mod snmp;
mod topology;

pub use addr::*;
pub use certs::Certs;
pub use command::run_command;
pub use etcd::{base64_decode, base64_encode, Etcd, Kv};
pub use flows::{flow_port, flow_stream, send_flows, FlowProto, FlowReport, Flows};
pub use forwarder::{Forwarder, Shipping};
pub use netns::{cleanup_stale, in_netns, netns_list, require_root};
pub use proc::Proc;
pub use rsyslog::{RsyslogExtras, TlsInput};
pub use snmp::Snmp;
pub use topology::{Host, Lab, Node};
