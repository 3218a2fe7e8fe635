//! switcher: zero-downtime blue/green switching of log-ingest services with an XDP datapath.
//!
//! Layers, top to bottom; a module calls only modules below it:
//!
//! ```text
//! cli        the command line; talks to the daemon through `api` (wire types + client)
//! daemon     `switcher daemon`: the API socket, signals, lifecycle; starts `web`
//! web        HTTP: /metrics, the dashboard, its actions
//! fleet      fleet mode: etcd agent and writer, one more caller of the controller
//! telemetry  OpenMetrics text from the catalog, the maps and the recorded metrics
//! controller the one entry point for every operation; tasks, recovery, health monitor
//! judge      pure verdicts on measurements      deploy, state: state machine, durable state
//! datapath   the adapter trait and its aya implementation (load, program, read, encode)
//! probe      health, load and metrics probes    config: the file    domain: shared words
//! ```
//! The binary (`src/main.rs`) only calls [`cli::main`].

pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod deploy;
pub mod domain;
pub mod fleet;
pub mod judge;
pub mod probe;
#[cfg(test)]
mod refusing_port;
pub mod state;
pub mod telemetry;
pub mod web;
