//! What the daemon exports about itself: Prometheus metrics built at scrape time from the BPF
//! maps, the controller's catalog and health board, and the metrics the controller records as
//! things happen. The dashboard's snapshots read the same sources.

pub mod exposition;
