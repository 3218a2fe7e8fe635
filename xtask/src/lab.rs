//! `cargo xtask lab up|down`: a lab left running for manual experiments.

use anyhow::{Context, Result};
use clap::Subcommand;
use switcher_tests::lab::{self, Host, Lab};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create the topology (replacing one with the same prefix) and leave it running.
    Up {
        /// Namespaces are named PREFIX-client, PREFIX-edge, PREFIX-blue, PREFIX-green.
        #[arg(long, default_value = "swlab")]
        prefix: String,
    },
    /// Delete every namespace whose name starts with PREFIX (`--prefix sw` also sweeps
    /// namespaces left behind by killed test runs).
    Down {
        #[arg(long, default_value = "swlab")]
        prefix: String,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Up { prefix } => up(&prefix),
        Action::Down { prefix } => down(&prefix),
    }
}

fn up(prefix: &str) -> Result<()> {
    let lab = Lab::up(prefix).context("lab up")?;
    println!("lab {prefix} is up:");
    for host in Host::ALL {
        println!(
            "  {:<14} {:<15} {}",
            lab.ns(host),
            host.v4().to_string(),
            host.v6()
        );
    }
    println!(
        "  edge interfaces: {} ({} {}), {} ({} {}), {} ({} {})",
        lab::EDGE_TO_CLIENT,
        lab::EDGE_CLIENT_V4,
        lab::EDGE_CLIENT_V6,
        lab::EDGE_TO_BLUE,
        lab::EDGE_BLUE_V4,
        lab::EDGE_BLUE_V6,
        lab::EDGE_TO_GREEN,
        lab::EDGE_GREEN_V4,
        lab::EDGE_GREEN_V6,
    );
    println!(
        "  VIP nets (client routes them via the edge): {} {}",
        lab::VIP_NET_V4,
        lab::VIP_NET_V6
    );
    println!("enter a host:  ip netns exec {} bash", lab.ns(Host::Client));
    println!("remove it:     cargo xtask lab down --prefix {prefix}");
    lab.keep();
    Ok(())
}

fn down(prefix: &str) -> Result<()> {
    let removed = lab::cleanup_stale(prefix).context("lab down")?;
    if removed.is_empty() {
        println!("no namespaces starting with {prefix:?}");
    } else {
        println!("removed: {}", removed.join(" "));
    }
    Ok(())
}
