//! `cargo xtask soak --minutes N [--seed S]`: sets up, builds the binaries the way `test`
//! does (debug, `switcher-userspace` and `switcher-tests` bins), then runs `switcher-soak`,
//! the lab under live syslog traffic and a seeded random schedule of operations
//! (tests/src/bin/switcher-soak).

use std::process::Command;

use anyhow::{bail, Result};

use crate::{run, setup, util::run_visible};

#[derive(clap::Args)]
pub struct Args {
    /// How long the traffic and the operations run.
    #[arg(long, default_value_t = 2)]
    pub minutes: u64,
    /// The schedule's seed (printed by every run; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the soak builds network namespaces and loads BPF programs");
    }
    setup::run(setup::Args {})?;
    let bins = run::build_debug_bins()?;
    let mut c = Command::new(bins.join("switcher-soak"));
    c.args(["--minutes", &args.minutes.to_string()]);
    if let Some(seed) = args.seed {
        c.args(["--seed", &seed.to_string()]);
    }
    run_visible(&mut c)
}
