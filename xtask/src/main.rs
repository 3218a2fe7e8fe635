//! `cargo xtask <cmd>`: project automation for switcher.
//!
//! One module per subcommand; add a variant to [`Cmd`] and a `run` in its module.

mod lab;
mod setup;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "switcher project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the project needs (Debian packages, eBPF toolchain, bpf-linker); idempotent.
    Setup(setup::Args),
    /// Create or remove the network-namespace lab for manual experiments.
    Lab(lab::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup(args) => setup::run(args),
        Cmd::Lab(args) => lab::run(args),
    }
}
