//! What the daemon exports about itself: Prometheus metrics built at scrape time from the BPF
//! maps, the controller's catalog and the health board, plus the metrics the controller
//! records as things happen. The dashboard's snapshots come from the same sources.

pub mod exposition;
pub mod health;
pub mod maps;
pub mod recorded;
