//! Test support for switcher: the network-namespace lab and its helpers.

#[cfg(feature = "rig")]
pub mod fleet;
pub mod lab;
#[cfg(feature = "rig")]
pub mod loaded;
pub mod poll;
pub mod privilege;
#[cfg(feature = "rig")]
pub mod rig;
pub mod services;
