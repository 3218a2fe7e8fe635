//! `cargo xtask setup`: installs what building and testing switcher needs, idempotently.
//!
//! Every check prints `ok: ...` when satisfied and `installing: ...` when it acts, so a second
//! run prints only `ok` lines.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{describe, output, run_visible, workspace_root};

/// Debian packages the lab, the tests and the demos use. rsyslog is only run by the tests as
/// their own `rsyslogd -n -f ...`; the system service is never relied on.
const PACKAGES: &[&str] = &[
    "rsyslog",
    // imrelp: RELP, the load step's acknowledged protocol against a real rsyslog.
    "rsyslog-relp",
    // TLS syslog in the lab: rsyslog's gtls driver, and openssl for the lab's certificates.
    "rsyslog-gnutls",
    "openssl",
    // promtool: the tests check the shipped alert rules and dashboard queries with it.
    "prometheus",
    // Fleet mode: the etcd server the fleet tests and lab run, and protoc for etcd-client's
    // build (it compiles etcd's .proto files).
    "etcd-server",
    "protobuf-compiler",
    "bpftool",
    "xdp-tools",
    "netsniff-ng",
    "iperf3",
    "nftables",
    "ethtool",
    "socat",
    "iproute2",
    "iputils-ping",
    "bsdutils",
    "tcpdump",
    // The benchmark's userspace proxy (nginx stream, a dynamic module in Debian) and the font
    // of its plot.
    "nginx",
    "libnginx-mod-stream",
    "fonts-dejavu-core",
    // The dashboard's browser test (headless, driven over the DevTools protocol) and the real
    // OpenMetrics parser the metrics tests check /metrics with.
    "chromium",
    "python3-prometheus-client",
    // The Debian package (`cargo xtask package`) and its test: strip and objdump for the
    // binary, man for the man pages, systemd-analyze (systemd) to verify the unit offline.
    "binutils",
    "man-db",
    "systemd",
    // The unit's test traces every system call the daemon makes (`perf trace`) and applies
    // the unit's capability set (`setpriv`, util-linux).
    "linux-perf",
    "util-linux",
];

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    packages(PACKAGES).context("Debian packages")?;
    build_tools()
}

/// What building the release binary and its package needs, and no more (no lab, no test
/// tools): protoc for etcd-client, strip/objdump and dpkg-deb for the package, the eBPF
/// toolchain and bpf-linker.
pub fn for_package() -> Result<()> {
    packages(&["protobuf-compiler", "binutils", "dpkg"]).context("Debian packages")?;
    build_tools()
}

fn build_tools() -> Result<()> {
    let toolchain = ebpf_toolchain().context("eBPF Rust toolchain")?;
    bpf_linker(&toolchain).context("bpf-linker")?;
    Ok(())
}

// ---- 1. Debian packages ----------------------------------------------------------------------

/// The installed version of `pkg`, or None when it is not (fully) installed.
fn installed_version(pkg: &str) -> Result<Option<String>> {
    let out = match Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", pkg])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("dpkg-query not found: setup supports Debian-based systems only")
        }
        Err(e) => return Err(e).context("running dpkg-query"),
    };
    // Unknown packages make dpkg-query exit non-zero: simply not installed.
    if !out.status.success() {
        return Ok(None);
    }
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&out.stdout)))
}

/// `install ok installed\t1.2-3` -> Some("1.2-3"); removed or half-installed -> None.
fn parse_dpkg_status(text: &str) -> Option<String> {
    let (status, version) = text.trim().split_once('\t')?;
    (status.split_whitespace().nth(2) == Some("installed")).then(|| version.to_owned())
}

fn packages(wanted: &[&'static str]) -> Result<()> {
    let mut missing = Vec::new();
    for pkg in wanted {
        match installed_version(pkg)? {
            Some(version) => println!("ok: package {pkg} {version}"),
            None => missing.push(*pkg),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing packages: {list}; run as root: apt-get update && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y {list}"
        );
    }
    println!("installing: packages {list}");
    run_visible(Command::new("apt-get").arg("update"))?;
    run_visible(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    for pkg in &missing {
        match installed_version(pkg)? {
            Some(version) => println!("ok: package {pkg} {version}"),
            None => bail!("apt-get reported success but {pkg} is still not installed"),
        }
    }
    Ok(())
}

// ---- 2. toolchain for the eBPF build ---------------------------------------------------------

/// Whether a `rustup toolchain list` line names the plain `nightly` channel (what `+nightly`
/// selects), not a dated one like `nightly-2025-01-01-...`.
fn is_plain_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or("");
    name == "nightly"
        || name
            .strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn is_plain_stable(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or("");
    name == "stable" || name.starts_with("stable-")
}

const RUSTUP: &str = "rustup (https://rustup.rs)";

/// The toolchain that builds the eBPF crate: nightly if installed, else stable (with
/// RUSTC_BOOTSTRAP=1). switcher-userspace/build.rs makes the same choice.
pub fn chosen_toolchain() -> Result<&'static str> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]), RUSTUP)?;
    if list.lines().any(is_plain_nightly) {
        Ok("nightly")
    } else if list.lines().any(is_plain_stable) {
        Ok("stable")
    } else {
        bail!("neither a nightly nor a stable toolchain is installed; run `rustup toolchain install nightly --component rust-src`");
    }
}

/// Picks the eBPF toolchain and makes sure it has rust-src (needed for `-Z build-std` of the
/// BPF target).
fn ebpf_toolchain() -> Result<String> {
    let rustup = RUSTUP;
    let toolchain = chosen_toolchain()?;
    println!("ok: eBPF toolchain {toolchain}");
    if toolchain == "stable" {
        println!(
            "ok: note: no nightly toolchain, the eBPF build uses stable with RUSTC_BOOTSTRAP=1"
        );
    }

    let components = output(
        Command::new("rustup").args(["component", "list", "--installed", "--toolchain", toolchain]),
        rustup,
    )?;
    // Installed components are listed with their target triple, except target-less ones like rust-src.
    if components
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-"))
    {
        println!("ok: rust-src for {toolchain}");
    } else {
        println!("installing: rust-src for {toolchain}");
        run_visible(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            toolchain,
        ]))?;
    }

    Ok(toolchain.to_owned())
}

// ---- 3. bpf-linker ---------------------------------------------------------------------------

/// What `rustc -vV` says about the release and its LLVM.
#[derive(Debug, PartialEq, Eq)]
struct RustcInfo {
    release: String,
    llvm_major: u32,
    llvm_minor: u32,
}

impl RustcInfo {
    fn parse(vv: &str) -> Result<RustcInfo> {
        let field = |key: &str| {
            vv.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .with_context(|| format!("no `{key}` line in rustc -vV output:\n{vv}"))
        };
        let release = field("release:")?.to_owned();
        let llvm = field("LLVM version:")?;
        let mut parts = llvm.split('.');
        let mut number = |what: &str| -> Result<u32> {
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("no LLVM {what} version in {llvm:?}"))
        };
        let llvm_major = number("major")?;
        let llvm_minor = number("minor")?;
        Ok(RustcInfo {
            release,
            llvm_major,
            llvm_minor,
        })
    }

    /// The shared LLVM library rustup ships in the toolchain's `lib/`.
    fn libllvm_name(&self) -> String {
        format!(
            "libLLVM.so.{}.{}-rust-{}",
            self.llvm_major, self.llvm_minor, self.release
        )
    }
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The first runnable bpf-linker (PATH, then ~/.cargo/bin) with its `--version` line.
fn find_bpf_linker() -> Option<(PathBuf, String)> {
    let mut candidates: Vec<PathBuf> = which("bpf-linker").into_iter().collect();
    if let Some(home) = cargo_home() {
        candidates.push(home.join("bin").join("bpf-linker"));
    }
    candidates.into_iter().find_map(|path| {
        // A binary whose libLLVM vanished (toolchain update, cleaned prefix) fails here.
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| (path, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    })
}

/// The LLVM major version a dynamically linked bpf-linker loads, from `ldd`; None if unknown.
fn linked_llvm_major(path: &Path) -> Option<u32> {
    let out = Command::new("ldd")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    parse_ldd_llvm_major(&String::from_utf8_lossy(&out.stdout))
}

/// Finds `libLLVM.so.22.1-rust-...` or `libLLVM-22.so` in ldd output and returns 22.
fn parse_ldd_llvm_major(ldd: &str) -> Option<u32> {
    ldd.split_whitespace().find_map(|word| {
        let rest = word
            .strip_prefix("libLLVM.so.")
            .or_else(|| word.strip_prefix("libLLVM-"))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Points `prefix/lib/{libLLVM.so, <libllvm_name>}` at the toolchain's libLLVM, so bpf-linker
/// links (and, through its rpath, later loads) exactly the LLVM rustc uses.
fn make_llvm_prefix(prefix: &Path, lib: &Path, libllvm_name: &str) -> Result<()> {
    let dir = prefix.join("lib");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in ["libLLVM.so", libllvm_name] {
        let link = dir.join(name);
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
        }
        std::os::unix::fs::symlink(lib, &link)
            .with_context(|| format!("symlinking {} -> {}", link.display(), lib.display()))?;
    }
    Ok(())
}

fn bpf_linker(toolchain: &str) -> Result<()> {
    let plus = format!("+{toolchain}");
    let vv = output(Command::new("rustc").args([plus.as_str(), "-vV"]), "rustup")?;
    let rustc = RustcInfo::parse(&vv)?;

    match find_bpf_linker() {
        Some((path, version)) => match linked_llvm_major(&path) {
            Some(major) if major != rustc.llvm_major => println!(
                "installing: {} links LLVM {major} but rustc {} uses LLVM {}; rebuilding",
                path.display(),
                rustc.release,
                rustc.llvm_major
            ),
            _ => {
                println!("ok: {version} ({})", path.display());
                if which("bpf-linker").is_none() {
                    println!(
                        "ok: note: {} is not in PATH; add its directory",
                        path.display()
                    );
                }
                return Ok(());
            }
        },
        None => println!("installing: bpf-linker (none runnable in PATH or ~/.cargo/bin)"),
    }

    let sysroot = output(
        Command::new("rustc").args([plus.as_str(), "--print", "sysroot"]),
        "rustup",
    )?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm_name = rustc.libllvm_name();
    let lib = sysroot_lib.join(&libllvm_name);
    if !lib.is_file() {
        let listing = fs::read_dir(&sysroot_lib)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        bail!(
            "{} not found, cannot build bpf-linker against rustc's LLVM; {} has: {listing}",
            lib.display(),
            sysroot_lib.display()
        );
    }

    // bpf-linker loads libLLVM through this folder at run time, so it lives beside the
    // installed binary (not in target/, which `cargo clean` and fresh checkouts lose).
    let prefix = cargo_home()
        .map(|h| h.join("switcher-llvm-prefix"))
        .unwrap_or_else(|| workspace_root().join("target").join("llvm-prefix"));
    make_llvm_prefix(&prefix, &lib, &libllvm_name)?;
    println!(
        "installing: bpf-linker against LLVM {}.{} of rustc {} ({})",
        rustc.llvm_major,
        rustc.llvm_minor,
        rustc.release,
        lib.display()
    );
    let feature = format!("llvm-{}", rustc.llvm_major);
    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        // --force: a broken binary of the same version would otherwise count as installed.
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
            &feature,
        ]);
    let manual = describe(&install);
    run_visible(&mut install).with_context(|| {
        format!(
            "building bpf-linker failed. It needs a C/C++ toolchain with libstdc++ (Debian: \
             build-essential) and a bpf-linker release with the `{feature}` feature. Command: {manual}"
        )
    })?;
    match find_bpf_linker() {
        Some((path, version)) => {
            println!("ok: {version} ({})", path.display());
            Ok(())
        }
        None => bail!("bpf-linker was installed but does not run; try by hand: {manual}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSTC_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn derives_llvm_library_from_rustc_vv() -> Result<()> {
        let info = RustcInfo::parse(RUSTC_VV)?;
        assert_eq!(
            info,
            RustcInfo {
                release: "1.97.0-nightly".into(),
                llvm_major: 22,
                llvm_minor: 1
            }
        );
        assert_eq!(info.libllvm_name(), "libLLVM.so.22.1-rust-1.97.0-nightly");
        Ok(())
    }

    #[test]
    fn stable_rustc_vv() -> Result<()> {
        let vv = "rustc 1.95.0 (abc 2026-04-01)\nrelease: 1.95.0\nLLVM version: 21.1.8\n";
        assert_eq!(
            RustcInfo::parse(vv)?.libllvm_name(),
            "libLLVM.so.21.1-rust-1.95.0"
        );
        assert!(RustcInfo::parse("rustc 1.0\nrelease: 1.0.0\n").is_err());
        Ok(())
    }

    #[test]
    fn toolchain_names() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_plain_nightly(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(!is_plain_nightly(
            "nightly-2025-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly(
            "stable-x86_64-unknown-linux-gnu (active, default)"
        ));
        assert!(is_plain_stable(
            "stable-x86_64-unknown-linux-gnu (active, default)"
        ));
        assert!(!is_plain_stable("1.95.0-x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn dpkg_status() {
        assert_eq!(
            parse_dpkg_status("install ok installed\t1:6.1-1"),
            Some("1:6.1-1".into())
        );
        assert_eq!(
            parse_dpkg_status("deinstall ok config-files\t8.2302.0-1"),
            None
        );
        assert_eq!(parse_dpkg_status(""), None);
    }

    #[test]
    fn ldd_llvm_major() {
        let ldd = "\tlinux-vdso.so.1 (0x00007fff)\n\tlibLLVM.so.22.1-rust-1.97.0-nightly => /x/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x1)\n";
        assert_eq!(parse_ldd_llvm_major(ldd), Some(22));
        assert_eq!(
            parse_ldd_llvm_major("\tlibLLVM-19.so.1 => /usr/lib/x (0x1)"),
            Some(19)
        );
        assert_eq!(parse_ldd_llvm_major("\tlibc.so.6 => /lib/libc.so.6"), None);
    }
}
