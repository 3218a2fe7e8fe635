//! Test support for switcher: the network-namespace lab and its helpers.

pub mod lab;
pub mod rig;
