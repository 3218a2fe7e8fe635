//! The subcommands that build and run the project: `build`, `test`, `lint`, `demo`, `bench`.
//! Each first runs `setup`, so on a fresh machine one command installs what it needs.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{
    setup,
    util::{run_visible, target_dir, workspace_root},
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The fleet demo: this many edge hosts (2-8, default 3) kept together through etcd.
    #[arg(long, value_name = "HOSTS", num_args = 0..=1, default_missing_value = "3")]
    pub fleet: Option<u32>,
    /// Arguments for the demo (`--seconds`, `--udp-rate`, `--forward`), after `--`.
    #[arg(last = true)]
    pub demo_args: Vec<String>,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The short run (under 3 minutes), as CI's smoke step runs it.
    #[arg(long)]
    pub quick: bool,
    /// Arguments for the benchmark (`--quick`, `--only datapath_cost,scale`, `--out DIR`,
    /// `--repeat`, `--rounds`, `--flips`; `switcher-bench --help` lists them), after `--`.
    #[arg(last = true)]
    pub bench_args: Vec<String>,
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let mut c = Command::new(env_cargo());
    c.current_dir(workspace_root()).args(args);
    run_visible(&mut c)
}

/// Builds the debug binaries that the lab tests, the fuzz and the soak start; returns their
/// folder.
pub fn build_debug_bins() -> Result<PathBuf> {
    cargo(&[
        "build",
        "-p",
        "switcher-userspace",
        "-p",
        "switcher-tests",
        "--bins",
    ])?;
    Ok(target_dir().join("debug"))
}

fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Release build of the `switcher` binary.
pub fn build() -> Result<()> {
    setup::run(setup::Args {})?;
    cargo(&["build", "--release", "-p", "switcher-userspace"])?;
    println!("built {}", target_dir().join("release/switcher").display());
    Ok(())
}

/// Every test: host unit tests and, as root, the privileged datapath and lab tests. In CI
/// (CI set) not being root is an error, so privileged tests can never be skipped there.
pub fn test(args: TestArgs) -> Result<()> {
    if !is_root() {
        if switcher_tests::privilege::in_ci() {
            bail!("CI must run the tests as root: the datapath and lab tests load BPF programs");
        }
        println!("note: not root, the privileged tests will report SKIPPED");
    }
    setup::run(setup::Args {})?;
    // The lab tests start these binaries; `cargo test` alone builds only the tests' own.
    build_debug_bins()?;
    let mut a = vec!["test", "--workspace", "--exclude", "switcher-ebpf"];
    if !args.cargo_args.is_empty() {
        a.push("--");
        a.extend(args.cargo_args.iter().map(String::as_str));
    }
    // Skipped privileged tests are listed at the end, passed or failed: a run that skipped
    // them must not read like one that ran them.
    let skips = target_dir().join("privileged-skips.txt");
    let _ = std::fs::remove_file(&skips);
    let mut c = Command::new(env_cargo());
    c.current_dir(workspace_root())
        .args(&a)
        .env("SWITCHER_SKIPS_FILE", &skips);
    let result = run_visible(&mut c);
    if let Ok(text) = std::fs::read_to_string(&skips) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.is_empty() {
            println!("{} privileged tests were SKIPPED (not root):", lines.len());
            for l in lines {
                println!("  {l}");
            }
        }
    }
    result
}

/// Formatting and clippy, the eBPF crate linted for its own target.
pub fn lint() -> Result<()> {
    setup::run(setup::Args {})?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "switcher-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let toolchain = setup::chosen_toolchain()?;
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root().join("switcher-ebpf"))
        .arg(format!("+{toolchain}"))
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
    if toolchain != "nightly" {
        c.env("RUSTC_BOOTSTRAP", "1");
    }
    run_visible(&mut c)
}

pub fn demo(args: DemoArgs) -> Result<()> {
    require_root("the demo builds network namespaces and loads BPF programs")?;
    let mut a = args.demo_args;
    if let Some(n) = args.fleet {
        a.extend(["--fleet".to_string(), n.to_string()]);
    }
    run_release_bin("switcher-demo", &a)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    require_root("the benchmark loads BPF programs and builds network namespaces")?;
    let mut a = args.bench_args;
    if args.quick {
        a.push("--quick".into());
    }
    run_release_bin("switcher-bench", &a)
}

/// Sets up, builds the release binaries and runs one of them.
fn run_release_bin(name: &str, args: &[String]) -> Result<()> {
    setup::run(setup::Args {})?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "switcher-userspace",
        "-p",
        "switcher-tests",
        "--bins",
    ])?;
    let mut c = Command::new(target_dir().join("release").join(name));
    c.args(args);
    run_visible(&mut c)
}

fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("run as root: {why}");
    }
    Ok(())
}
