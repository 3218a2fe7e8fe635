//! `cargo xtask fuzz --packets N [--seed S]`: sets up, builds the binaries the way `test` does
//! (debug, `switcher-userspace` and `switcher-tests` bins: in CI, after `test`, nothing is
//! left to build), then runs `switcher-fuzz` as root: generated and mutated packets through
//! the real XDP and TC programs (BPF_PROG_TEST_RUN), each judged by an independent oracle
//! (tests/src/bin/switcher-fuzz).

use std::process::Command;

use anyhow::{bail, Result};

use crate::{run, setup, util::run_visible};

#[derive(clap::Args)]
pub struct Args {
    /// Packets to run through the programs (ingress and egress together).
    #[arg(long, default_value_t = 100_000)]
    pub packets: u64,
    /// The packet sequence's seed (printed by every run; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this long even if fewer packets ran (default: the fuzz's own, 30 minutes).
    #[arg(long)]
    pub max_seconds: Option<u64>,
    /// Share of packets that go through egress, in percent (default: the fuzz's own).
    #[arg(long)]
    pub egress_percent: Option<u32>,
    /// Share of packets mutated, in percent (default: the fuzz's own).
    #[arg(long)]
    pub mutate_percent: Option<u32>,
    /// Count the known (fixed) datapath issues without failing; by default they fail.
    #[arg(long)]
    pub allow_known: bool,
}

pub fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the fuzz loads BPF programs and makes a network namespace");
    }
    setup::run(setup::Args {})?;
    let bins = run::build_debug_bins()?;
    let mut c = Command::new(bins.join("switcher-fuzz"));
    c.args(["--packets", &args.packets.to_string()]);
    let optional = [
        ("--seed", args.seed),
        ("--max-seconds", args.max_seconds),
        ("--egress-percent", args.egress_percent.map(u64::from)),
        ("--mutate-percent", args.mutate_percent.map(u64::from)),
    ];
    for (flag, value) in optional {
        if let Some(v) = value {
            c.args([flag, &v.to_string()]);
        }
    }
    if args.allow_known {
        c.arg("--allow-known");
    }
    run_visible(&mut c)
}
