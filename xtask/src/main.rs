//! `cargo xtask <cmd>`: project automation for switcher.
//!
//! `setup`, `lab`, `soak`, `fuzz` and `package` have a module each; the subcommands that
//! build and run the project (`build`, `test`, `lint`, `demo`, `bench`) share `run`. A new
//! subcommand is a variant of [`Cmd`] and a function in the module it belongs with.

mod fuzz;
mod lab;
mod package;
mod run;
mod setup;
mod soak;
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
    /// Release build of the `switcher` binary.
    Build,
    /// All tests; as root the privileged datapath and lab tests run too (required in CI).
    Test(run::TestArgs),
    /// rustfmt and clippy (-D warnings), the eBPF crate for its BPF target.
    Lint,
    /// The lab demo: live syslog traffic flipped blue → green → blue with zero loss.
    Demo(run::DemoArgs),
    /// Per-packet cost of the datapath (BPF_PROG_TEST_RUN), side by side.
    Bench(run::BenchArgs),
    /// The lab under live syslog traffic and a seeded random schedule of operations.
    Soak(soak::Args),
    /// Generated and mutated packets through the real XDP and TC programs, judged one by one.
    Fuzz(fuzz::Args),
    /// The Debian package (target/debian/switcher_<version>_<arch>.deb): binary, unit, example
    /// config, completions, man pages, monitoring kit.
    Package,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup(args) => setup::run(args),
        Cmd::Lab(args) => lab::run(args),
        Cmd::Build => run::build(),
        Cmd::Test(args) => run::test(args),
        Cmd::Lint => run::lint(),
        Cmd::Demo(args) => run::demo(args),
        Cmd::Bench(args) => run::bench(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Package => package::run(),
    }
}
