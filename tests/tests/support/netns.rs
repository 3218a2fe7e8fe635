//! A private network namespace for one test, deleted when dropped (also when the test panics).
//! The redirect fixtures need a FIB, neighbour entries and interfaces that `bpf_fib_lookup` can
//! see (BPF_PROG_TEST_RUN runs in the caller thread's namespace); the CHECKSUM_PARTIAL test needs
//! a real veth to send through. Addresses stay inside 198.18.0.0/15 and 2001:2::/32, and nothing
//! leaves the namespace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use switcher_tests::lab::in_netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named namespace (`swfx<pid>-<n>`, under /run/netns) with its loopback up.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = format!(
            "swfx{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Only an earlier process that had our pid can have left this exact name behind.
        if Path::new("/run/netns").join(&name).exists() {
            run(Command::new("ip").args(["netns", "del", &name]));
        }
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS`; a failure fails the test with ip's message.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A veth pair `dev` (MAC `mac`) and `peer` (MAC `peer_mac`).
    pub fn veth(&self, dev: &str, mac: [u8; 6], peer: &str, peer_mac: [u8; 6]) {
        let (mac, peer_mac) = (mac_text(mac), mac_text(peer_mac));
        self.ip(&[
            "link", "add", dev, "address", &mac, "type", "veth", "peer", "name", peer, "address",
            &peer_mac,
        ]);
    }

    /// A permanent neighbour entry: `addr` is at `mac` on `dev`.
    pub fn neighbour(&self, addr: &str, mac: [u8; 6], dev: &str) {
        let mac = mac_text(mac);
        self.ip(&[
            "neigh",
            "add",
            addr,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    /// Writes `value` to /proc/sys/`key` as seen from inside the namespace (net.* sysctls are
    /// per namespace, resolved from the writing thread's namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| {
                panic!(
                    "writing {value} to {} in {}: {e}",
                    path.display(),
                    self.name
                )
            });
    }

    /// The ifindex of `dev` inside the namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        self.run(|| nix::net::if_::if_nametoindex(dev))
            .unwrap_or_else(|e| panic!("no interface {dev} in {}: {e}", self.name))
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f).unwrap_or_else(|e| panic!("entering {}: {e:#}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

fn run(cmd: &mut Command) {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {desc}: {e}"));
    assert!(
        out.status.success(),
        "{desc} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A MAC address as ip(8) writes it.
fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}
