//! switcher: zero-downtime blue/green switching of log-ingest services with an XDP datapath.
//! The binary (`src/main.rs`) is a thin CLI over these modules.

pub mod api;
pub mod bpffs;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod deploy;
pub mod flow_table;
pub mod probe;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod web;
pub mod xdp_features;
