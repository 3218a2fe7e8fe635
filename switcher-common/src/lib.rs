//! Shared between the eBPF datapath (no_std) and userspace: the `#[repr(C)]` layouts of every
//! map key and value, and the pure logic both sides rely on (packet parsing, checksum updates,
//! colour and flow decisions), so that logic is unit-tested on the host.
#![no_std]

pub mod csum;
pub mod decide;
pub mod gelf;
pub mod hash;
pub mod maglev;
pub mod maps;
pub mod parse;
pub mod reason;

pub use maps::*;
pub use reason::Reason;
