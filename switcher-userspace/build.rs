//! Builds the eBPF datapath (switcher-ebpf) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where src/datapath/loader.rs embeds it. `cargo xtask setup` installs what this needs.

use std::process::Command;

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../switcher-common/src");
    println!("cargo:rerun-if-env-changed=SWITCHER_EBPF_TOOLCHAIN");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../switcher-ebpf");

    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "bpf-linker is not installed (needed to link the eBPF datapath); \
             run `cargo xtask setup` to build it against the nightly's LLVM"
        );
    }
    // Nightly builds core for the BPF target with -Z build-std; a machine without nightly can
    // use stable, whose rust-src and LLVM are the same, with RUSTC_BOOTSTRAP=1.
    let toolchain = match std::env::var("SWITCHER_EBPF_TOOLCHAIN") {
        Ok(t) => t,
        Err(_) if has_toolchain("nightly") => "nightly".to_string(),
        Err(_) => "stable".to_string(),
    };
    if toolchain != "nightly" {
        // SAFETY: single-threaded build script; the child cargo inherits it.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    // aya-build relays every line the child cargo prints as a `cargo:warning`; its progress
    // lines ("Compiling ...", "Finished ...") would read as warnings of this build. Quiet
    // keeps compiler diagnostics (relayed from its JSON messages) and errors.
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "switcher-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| format!("building switcher-ebpf with the {toolchain} toolchain"))
}

fn has_toolchain(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
