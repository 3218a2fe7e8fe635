//! Redirect mode (`forward = "redirect"`) through BPF_PROG_TEST_RUN with exact expected bytes:
//! `bpf_fib_lookup` + XDP_REDIRECT with the TTL / hop limit decremented and the MACs from the
//! FIB, and every fallback to XDP_PASS the README lists, each with its counter.
//!
//! `bpf_fib_lookup` in XDP consults the namespace of the program run's ingress device, and
//! BPF_PROG_TEST_RUN takes that device from the `xdp_md` context (`ingress_ifindex`), resolved
//! in the calling thread's namespace. So each test builds a private namespace with a FIB and
//! neighbour entries and runs the program from a thread inside it. A test run never transmits:
//! the redirect is only the program's verdict. Needs root.
//!
//! ```text
//!                  in0 198.18.0.254/24 2001:2::fe/64   (ingress; the edge's own address)
//!   edge netns ─┬─ out0 198.18.1.1/24 2001:2:0:1::1/64 mtu 1280, MAC 02:00:00:00:01:01
//!               │    neighbours .1.2 / :1::2 → 02:00:00:00:01:02 (permanent); .1.3 / :1::3 none
//!               └─ out1 198.18.2.1/24 2001:2:0:2::1/64 MAC 02:00:00:00:02:01, not in REDIRECT_OK
//!                    neighbours .2.2 / :2::2 → 02:00:00:00:02:02 (permanent)
//! ```

mod support;

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use support::netns::Netns;
use support::packets::Wire;
use support::*;
use switcher::domain::Color;
use switcher_common::Reason;

const SERVICES: &str = r#"
[[service]]
name = "udp4"
vip = "198.18.10.10"
port = 514
protocol = "udp"
forward = "redirect"
blue  = { backend = "198.18.1.2:5514" }
green = { backend = "198.18.1.3:6514" }

[[service]]
name = "tcp4"
vip = "198.18.10.10"
port = 601
protocol = "tcp"
forward = "redirect"
blue  = { backend = "198.18.1.2:1601" }
green = { backend = "198.18.2.2:2601" }

[[service]]
name = "udp6"
vip = "2001:2:0:10::10"
port = 514
protocol = "udp"
forward = "redirect"
blue  = { backend = "[2001:2:0:1::2]:5514" }
green = { backend = "[2001:2:0:1::3]:6514" }

[[service]]
name = "tcp6"
vip = "2001:2:0:10::10"
port = 601
protocol = "tcp"
forward = "redirect"
blue  = { backend = "[2001:2:0:1::2]:1601" }
green = { backend = "[2001:2:0:2::2]:2601" }

[[service]]
name = "local4"
vip = "198.18.10.10"
port = 515
protocol = "udp"
forward = "redirect"
blue  = { backend = "198.18.0.254:5515" }

[[service]]
name = "local6"
vip = "2001:2:0:10::10"
port = 515
protocol = "udp"
forward = "redirect"
blue  = { backend = "[2001:2::fe]:5515" }
"#;

const PAYLOAD: &[u8] = b"<14>1 2026-11-24T00:00:00Z client app - - - hello switcher";

const XDP_REDIRECT: u32 = 4;
const OUT0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const BLUE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const OUT1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const OUT1_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];
/// out0's MTU: the largest IP packet it takes.
const OUT0_MTU: usize = 1280;

/// What a redirect through out0 to the blue backend looks like on the wire.
const VIA_OUT0: Wire = Wire {
    src_mac: OUT0_MAC,
    dst_mac: BLUE_MAC,
    ttl: 63,
};

/// The edge namespace of the module docs, and a datapath whose REDIRECT_OK holds in0 and out0.
/// Fields drop in order: the datapath (and its pins) before the namespace.
struct Rig {
    t: TestDatapath,
    ns: Netns,
    in0: u32,
    out0: u32,
    out1: u32,
}

impl Rig {
    fn new() -> Self {
        let ns = Netns::new();
        ns.ip(&["link", "add", "in0", "type", "veth", "peer", "name", "in0p"]);
        ns.veth("out0", OUT0_MAC, "out0p", BLUE_MAC);
        ns.veth("out1", OUT1_MAC, "out1p", OUT1_NEIGH_MAC);
        for dev in ["out0", "out0p"] {
            ns.ip(&["link", "set", dev, "mtu", &OUT0_MTU.to_string()]);
        }
        for (dev, a4, a6) in [
            ("in0", "198.18.0.254/24", "2001:2::fe/64"),
            ("out0", "198.18.1.1/24", "2001:2:0:1::1/64"),
            ("out1", "198.18.2.1/24", "2001:2:0:2::1/64"),
        ] {
            ns.ip(&["addr", "add", a4, "dev", dev]);
            ns.ip(&["addr", "add", a6, "dev", dev, "nodad"]);
        }
        for dev in ["in0", "in0p", "out0", "out0p", "out1", "out1p"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        for (addr, dev, lladdr) in [
            ("198.18.1.2", "out0", BLUE_MAC),
            ("2001:2:0:1::2", "out0", BLUE_MAC),
            ("198.18.2.2", "out1", OUT1_NEIGH_MAC),
            ("2001:2:0:2::2", "out1", OUT1_NEIGH_MAC),
        ] {
            ns.neighbour(addr, lladdr, dev);
        }
        // bpf_fib_lookup answers BPF_FIB_LKUP_RET_FWD_DISABLED unless the ingress device
        // forwards. Set after the devices exist: writing `all` updates every device.
        ns.sysctl("net/ipv4/conf/all/forwarding", "1");
        ns.sysctl("net/ipv6/conf/all/forwarding", "1");
        let (in0, out0, out1) = (ns.ifindex("in0"), ns.ifindex("out0"), ns.ifindex("out1"));
        let mut t = TestDatapath::new(SERVICES);
        t.dp()
            .set_redirect_targets(&[in0, out0])
            .expect("program REDIRECT_OK");
        Self {
            t,
            ns,
            in0,
            out0,
            out1,
        }
    }

    /// One run of the XDP program on `pkt` as if it arrived on in0: (action, output bytes).
    fn xdp(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let ctx = xdp_md(pkt.len(), self.in0);
        let prog = self.t.dp().xdp_program().expect("XDP program");
        self.ns.run(|| {
            let mut out = vec![0u8; pkt.len() + 256];
            let opts = TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            };
            let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN with xdp_md");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        })
    }

    fn reasons(&mut self) -> BTreeMap<&'static str, u64> {
        self.t
            .dp()
            .reader()
            .reasons()
            .expect("reason counters")
            .into_iter()
            .map(|(r, n)| (r.label(), n))
            .collect()
    }

    /// Runs `input`, then checks the action, the exact output and that `reason` is the only
    /// counter that moved (by one).
    fn check(&mut self, what: &str, input: &[u8], action: u32, want: &[u8], reason: Reason) {
        let before = self.reasons();
        let (got_action, out) = self.xdp(input);
        let after = self.reasons();
        assert!(
            out == want,
            "{what}: output bytes (action {got_action}) {}",
            first_difference(&out, want)
        );
        assert_eq!(got_action, action, "{what}: action");
        let moved: BTreeMap<&str, u64> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
            .collect();
        assert_eq!(
            moved,
            BTreeMap::from([(reason.label(), 1)]),
            "{what}: counters that moved"
        );
    }

    fn flip(&mut self, service: &str, to: Color) {
        let id = self.t.id(service);
        self.t.dp().flip(id, to).expect("flip");
    }
}

/// `struct xdp_md` from include/uapi/linux/bpf.h: six __u32 in host order, `data`, `data_end`,
/// `data_meta`, `ingress_ifindex`, `rx_queue_index`, `egress_ifindex`. For BPF_PROG_TEST_RUN
/// (net/bpf/test_run.c, xdp_convert_md_to_buff) `data` and `data_meta` must be 0, `data_end`
/// the frame length and `egress_ifindex` 0; `ingress_ifindex` is looked up in the calling
/// thread's namespace and becomes the run's rxq device.
fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    let len = u32::try_from(len).expect("frame length fits u32");
    [0, len, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect()
}

/// Where two frames first differ, with 16 bytes of each from a little before that point.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(4);
    let window = |b: &[u8]| hex(&b[from.min(b.len())..(from + 16).min(b.len())]);
    format!(
        "differ at byte {at} (lengths {} and {}):\n  got  [{from}..] {}\n  want [{from}..] {}",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )
}

#[test]
fn redirect_takes_macs_from_the_fib_and_decrements_ttl() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    let c = Wire::CLIENT;
    r.check(
        "udp4",
        &c.udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
        XDP_REDIRECT,
        &VIA_OUT0.udp4("198.18.0.1", 40000, "198.18.1.2", 5514, PAYLOAD),
        Reason::Redirected,
    );
    r.check(
        "tcp4 syn",
        &c.tcp4("198.18.0.1", 40001, "198.18.10.10", 601, "S"),
        XDP_REDIRECT,
        &VIA_OUT0.tcp4("198.18.0.1", 40001, "198.18.1.2", 1601, "S"),
        Reason::Redirected,
    );
    r.check(
        "udp6",
        &c.udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, PAYLOAD),
        XDP_REDIRECT,
        &VIA_OUT0.udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, PAYLOAD),
        Reason::Redirected,
    );
    r.check(
        "tcp6 syn",
        &c.tcp6("2001:2::1", 40001, "2001:2:0:10::10", 601, "S"),
        XDP_REDIRECT,
        &VIA_OUT0.tcp6("2001:2::1", 40001, "2001:2:0:1::2", 1601, "S"),
        Reason::Redirected,
    );
}

#[test]
fn no_neighbour_entry_falls_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    // Green's backends (198.18.1.3, 2001:2:0:1::3) are routed via out0 but have no neighbour
    // entry: the kernel resolves them, so the packet goes up rewritten, MACs and TTL as sent.
    r.flip("udp4", Color::Green);
    r.flip("udp6", Color::Green);
    r.check(
        "udp4 to an unresolved backend",
        &udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
        XDP_PASS,
        &udp4("198.18.0.1", 40000, "198.18.1.3", 6514, PAYLOAD),
        Reason::FibFallback,
    );
    r.check(
        "udp6 to an unresolved backend",
        &udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, PAYLOAD),
        XDP_PASS,
        &udp6("2001:2::1", 40000, "2001:2:0:1::3", 6514, PAYLOAD),
        Reason::FibFallback,
    );
    // Control: the resolved blue backend of the same service is redirected.
    r.flip("udp4", Color::Blue);
    r.check(
        "udp4 to the resolved backend",
        &udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
        XDP_REDIRECT,
        &VIA_OUT0.udp4("198.18.0.1", 40000, "198.18.1.2", 5514, PAYLOAD),
        Reason::Redirected,
    );
}

#[test]
fn local_backend_falls_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    r.check(
        "udp4 to an address of the edge",
        &udp4("198.18.0.1", 40000, "198.18.10.10", 515, PAYLOAD),
        XDP_PASS,
        &udp4("198.18.0.1", 40000, "198.18.0.254", 5515, PAYLOAD),
        Reason::FibFallback,
    );
    r.check(
        "udp6 to an address of the edge",
        &udp6("2001:2::1", 40000, "2001:2:0:10::10", 515, PAYLOAD),
        XDP_PASS,
        &udp6("2001:2::1", 40000, "2001:2::fe", 5515, PAYLOAD),
        Reason::FibFallback,
    );
}

#[test]
fn vlan_tagged_frame_falls_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    // The FIB result carries no tag: the frame goes up rewritten with its tags, as in pass mode.
    r.check(
        "udp4 with an 802.1Q tag",
        &with_vlans(
            &udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
            &[(0x8100, 7)],
        ),
        XDP_PASS,
        &with_vlans(
            &udp4("198.18.0.1", 40000, "198.18.1.2", 5514, PAYLOAD),
            &[(0x8100, 7)],
        ),
        Reason::FibFallback,
    );
    r.check(
        "tcp6 with QinQ",
        &with_vlans(
            &tcp6("2001:2::1", 40001, "2001:2:0:10::10", 601, "S", b""),
            &[(0x88a8, 100), (0x8100, 7)],
        ),
        XDP_PASS,
        &with_vlans(
            &tcp6("2001:2::1", 40001, "2001:2:0:1::2", 1601, "S", b""),
            &[(0x88a8, 100), (0x8100, 7)],
        ),
        Reason::FibFallback,
    );
}

#[test]
fn fragments_fall_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    let big: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    // All fragments take the kernel path: the first (which has the ports) is a FIB fallback,
    // a later one follows its datagram without a FIB lookup.
    let (f1, f2) = fragment_v4(
        &udp4("198.18.0.1", 40000, "198.18.10.10", 514, &big),
        304,
        0x4242,
    );
    let (e1, e2) = fragment_v4(
        &udp4("198.18.0.1", 40000, "198.18.1.2", 5514, &big),
        304,
        0x4242,
    );
    r.check(
        "first ipv4 fragment",
        &f1,
        XDP_PASS,
        &e1,
        Reason::FibFallback,
    );
    r.check(
        "later ipv4 fragment",
        &f2,
        XDP_PASS,
        &e2,
        Reason::FragFollowed,
    );
    let (f1, f2) = fragment_v6(
        &udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, &big),
        304,
        77,
    );
    let (e1, e2) = fragment_v6(
        &udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, &big),
        304,
        77,
    );
    r.check(
        "first ipv6 fragment",
        &f1,
        XDP_PASS,
        &e1,
        Reason::FibFallback,
    );
    r.check(
        "later ipv6 fragment",
        &f2,
        XDP_PASS,
        &e2,
        Reason::FragFollowed,
    );
}

#[test]
fn ttl_about_to_expire_falls_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    // TTL 1 would reach 0 here: the kernel forwards nothing and sends the ICMP time exceeded.
    let c = Wire::CLIENT.ttl(1);
    r.check(
        "udp4 ttl 1",
        &c.udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
        XDP_PASS,
        &c.udp4("198.18.0.1", 40000, "198.18.1.2", 5514, PAYLOAD),
        Reason::FibFallback,
    );
    r.check(
        "udp6 hop limit 1",
        &c.udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, PAYLOAD),
        XDP_PASS,
        &c.udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, PAYLOAD),
        Reason::FibFallback,
    );
    // TTL 2 is the smallest that is redirected; it leaves with 1.
    let c = Wire::CLIENT.ttl(2);
    r.check(
        "udp4 ttl 2",
        &c.udp4("198.18.0.1", 40000, "198.18.10.10", 514, PAYLOAD),
        XDP_REDIRECT,
        &VIA_OUT0
            .ttl(1)
            .udp4("198.18.0.1", 40000, "198.18.1.2", 5514, PAYLOAD),
        Reason::Redirected,
    );
    r.check(
        "udp6 hop limit 2",
        &c.udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, PAYLOAD),
        XDP_REDIRECT,
        &VIA_OUT0
            .ttl(1)
            .udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, PAYLOAD),
        Reason::Redirected,
    );
}

#[test]
fn packet_over_the_egress_mtu_falls_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    // UDP payloads that make the IP packet exactly out0's MTU, and one byte more.
    let fits4 = vec![b'a'; OUT0_MTU - 20 - 8];
    let over4 = vec![b'a'; OUT0_MTU - 20 - 8 + 1];
    let fits6 = vec![b'a'; OUT0_MTU - 40 - 8];
    let over6 = vec![b'a'; OUT0_MTU - 40 - 8 + 1];
    r.check(
        "ipv4 packet of exactly the mtu",
        &udp4("198.18.0.1", 40000, "198.18.10.10", 514, &fits4),
        XDP_REDIRECT,
        &VIA_OUT0.udp4("198.18.0.1", 40000, "198.18.1.2", 5514, &fits4),
        Reason::Redirected,
    );
    r.check(
        "ipv4 packet one byte over the mtu",
        &udp4("198.18.0.1", 40000, "198.18.10.10", 514, &over4),
        XDP_PASS,
        &udp4("198.18.0.1", 40000, "198.18.1.2", 5514, &over4),
        Reason::FibFallback,
    );
    r.check(
        "ipv6 packet of exactly the mtu",
        &udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, &fits6),
        XDP_REDIRECT,
        &VIA_OUT0.udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, &fits6),
        Reason::Redirected,
    );
    r.check(
        "ipv6 packet one byte over the mtu",
        &udp6("2001:2::1", 40000, "2001:2:0:10::10", 514, &over6),
        XDP_PASS,
        &udp6("2001:2::1", 40000, "2001:2:0:1::2", 5514, &over6),
        Reason::FibFallback,
    );
}

#[test]
fn egress_interface_outside_redirect_ok_falls_back_to_pass() {
    if !privileged() {
        return;
    }
    let mut r = Rig::new();
    // Green's backends sit behind out1, which REDIRECT_OK does not list: a redirect there
    // would be dropped by the kernel, so the packet goes up untouched but for the rewrite.
    r.flip("tcp4", Color::Green);
    r.flip("tcp6", Color::Green);
    let syn4 = tcp4("198.18.0.1", 40000, "198.18.10.10", 601, "S", b"");
    let syn6 = tcp6("2001:2::1", 40000, "2001:2:0:10::10", 601, "S", b"");
    r.check(
        "tcp4 via out1",
        &syn4,
        XDP_PASS,
        &tcp4("198.18.0.1", 40000, "198.18.2.2", 2601, "S", b""),
        Reason::FibFallback,
    );
    r.check(
        "tcp6 via out1",
        &syn6,
        XDP_PASS,
        &tcp6("2001:2::1", 40000, "2001:2:0:2::2", 2601, "S", b""),
        Reason::FibFallback,
    );
    // Once the daemon lists out1 (it found it can transmit XDP frames), the same packets are
    // redirected there with out1's MAC: the allow-list alone made the difference.
    let (in0, out0, out1) = (r.in0, r.out0, r.out1);
    r.t.dp()
        .set_redirect_targets(&[in0, out0, out1])
        .expect("REDIRECT_OK");
    let via_out1 = Wire {
        src_mac: OUT1_MAC,
        dst_mac: OUT1_NEIGH_MAC,
        ttl: 63,
    };
    r.check(
        "tcp4 via out1, listed",
        &syn4,
        XDP_REDIRECT,
        &via_out1.tcp4("198.18.0.1", 40000, "198.18.2.2", 2601, "S"),
        Reason::Redirected,
    );
    r.check(
        "tcp6 via out1, listed",
        &syn6,
        XDP_REDIRECT,
        &via_out1.tcp6("2001:2::1", 40000, "2001:2:0:2::2", 2601, "S"),
        Reason::Redirected,
    );
}
