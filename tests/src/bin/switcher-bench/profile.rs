//! Where the CPU goes while a contender forwards: `perf record -a -e cpu-clock` over every CPU
//! during a paced run, each sample folded by its symbol into a stage of the path (the XDP
//! program, its helpers, redirect and veth's XDP receive, skb allocation, GRO, conntrack/NAT,
//! routing, ...). With a fixed sample period (`-c`), every sample is the same CPU time, so a
//! stage's samples × period / forwarded packets is its cost per packet.
//!
//! For the switcher rows the kernel's own account of the XDP program is reported beside it
//! (`kernel.bpf_stats_enabled`: run time and run count of the program, from `bpftool`).

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

/// CPU-clock time per sample: 250 µs, 4000 samples per busy CPU-second.
pub const PERIOD_NS: u64 = 250_000;

/// Stages of the path, in the order a symbol is matched against them (first match wins).
/// Idle is matched first and left out of every figure.
const STAGES: &[(&str, &[&str])] = &[
    (
        "idle",
        &[
            "pv_native_safe_halt",
            "native_safe_halt",
            "default_idle",
            "cpu_idle",
            "do_idle",
            "poll_idle",
            "acpi_idle",
            "intel_idle",
            "cpuidle_",
            "arch_cpu_idle",
        ],
    ),
    (
        "veth: skb copied for xdp headroom",
        &["skb_pp_cow_data", "veth_convert_skb_to_xdp_buff"],
    ),
    (
        "irq-enable points (samples deferred while interrupts were off)",
        &[
            "_raw_spin_unlock_irq",
            "_raw_spin_unlock_bh",
            "__local_bh_enable_ip",
            "local_bh_enable",
        ],
    ),
    (
        "rcu + locks",
        &["__rcu_read", "_raw_spin_lock", "queued_spin", "rcu_"],
    ),
    (
        "clock reads",
        &["pvclock", "ktime_get", "read_tsc", "kvm_clock"],
    ),
    (
        "generator send",
        &[
            "packet_",
            "tpacket",
            "sendmmsg",
            "sendmsg",
            "sock_",
            "__sock",
            "security_socket",
            "copy_msghdr",
            "_copy_from_user",
            "_copy_from_iter",
            "__check_object_size",
            "__dev_direct_xmit",
            "*sendmsg",
            "*sendmmsg",
            "bpf_test_run",
            "xdp_test_run",
            "bpf_prog_test_run",
        ],
    ),
    (
        "xdp redirect + veth xdp receive",
        &[
            "xdp_do_redirect",
            "xdp_do_flush",
            "dev_xdp_enqueue",
            "bq_enqueue",
            "__dev_flush",
            "bpf_xdp_redirect",
            "dev_map_",
            "__dev_map",
            "veth_xdp",
            "veth_ndo_xdp",
            "__xdp_",
            "xdp_",
            "veth_convert",
            "bpf_prog_run_generic_xdp",
            "do_xdp_generic",
            "netif_receive_generic_xdp",
        ],
    ),
    (
        "bpf helpers + maps",
        &[
            "bpf_fib_lookup",
            "bpf_ipv4_fib_lookup",
            "bpf_ipv6_fib_lookup",
            "bpf_",
            "htab_",
            "__htab",
            "array_map",
            "percpu_array",
            "lookup_nulls_elem",
            "lookup_elem",
            "jhash",
        ],
    ),
    ("gro", &["*gro_", "gro_"]),
    (
        "conntrack + nat",
        &[
            "nf_conntrack",
            "nf_ct_",
            "__nf_ct",
            "nf_nat",
            "__nf_nat",
            "hash_conntrack",
            "ipv4_confirm",
            "ipv4_conntrack",
            "nf_confirm",
        ],
    ),
    (
        "netfilter hooks + nft rules",
        &["nft_", "nf_hook", "nf_ingress", "nf_egress", "__nf_"],
    ),
    (
        "skb alloc/free + copies",
        &[
            "kmem_cache",
            "alloc_skb",
            "build_skb",
            "skb_release",
            "kfree_skb",
            "__kfree_skb",
            "consume_skb",
            "skb_free",
            "kmalloc",
            "kfree",
            "slab",
            "page_frag",
            "page_pool",
            "skb_attempt_defer",
            "skb_clone",
            "pskb_",
            "skb_copy",
            "memcpy",
            "memmove",
            "memset",
            "__alloc_pages",
            "free_unref",
            "get_page_from_freelist",
        ],
    ),
    (
        "veth transmit",
        &["veth_xmit", "veth_forward", "__veth_xdp_flush"],
    ),
    (
        "ip routing + forwarding",
        &[
            "ip_",
            "__ip_",
            "fib_",
            "ipv4_",
            "rt_",
            "dst_",
            "neigh_",
            "inet_",
            "udp_v4_early",
            "raw_local",
        ],
    ),
    (
        "device transmit",
        &[
            "dev_queue_xmit",
            "__dev_queue_xmit",
            "dev_hard_start_xmit",
            "sch_direct_xmit",
            "validate_xmit",
            "netif_skb_features",
            "qdisc",
            "netdev_core_pick_tx",
            "skb_network_protocol",
        ],
    ),
    (
        "netif receive + softirq",
        &[
            "netif_receive",
            "__netif_receive",
            "veth_poll",
            "process_backlog",
            "net_rx_action",
            "napi_",
            "__napi",
            "netif_rx",
            "__netif_rx",
            "enqueue_to_backlog",
            "*softirq",
            "__local_bh_enable",
            "eth_type_trans",
            "skb_defer",
            "rps_",
            "__do_softirq",
        ],
    ),
];

pub const FRAME_SOURCE: &str = "frame source (bench_tx, live frames)";
/// The XDP program and its subprograms (`forward`, `pick`, ...): no other BPF program runs on
/// the measured path (no reply traffic, so no TC egress program).
pub const SWITCHER_PROGRAM: &str = "switcher xdp program";

/// A JIT-compiled BPF program's symbol: `bpf_prog_<16 hex digits of its tag>_<name>` (kernel
/// functions such as `bpf_prog_run_generic_xdp` are not).
fn jit_program(sym: &str) -> Option<&str> {
    let rest = sym.strip_prefix("bpf_prog_")?;
    let (tag, name) = (rest.get(..16)?, rest.get(16..)?);
    (tag.bytes().all(|b| b.is_ascii_hexdigit()) && name.starts_with('_')).then_some(&name[1..])
}

/// The stage a symbol belongs to. A pattern is a prefix; `pre*part` is a prefix followed
/// somewhere by `part` (BPF programs appear as `bpf_prog_<tag>_<name>`, the name maybe cut to
/// 15 characters).
pub fn stage_of(sym: &str) -> &'static str {
    if let Some(name) = jit_program(sym) {
        return if name.starts_with("bench_tx") {
            FRAME_SOURCE
        } else {
            SWITCHER_PROGRAM
        };
    }
    for (stage, pats) in STAGES {
        for p in *pats {
            let hit = match p.split_once('*') {
                Some((pre, part)) => sym.starts_with(pre) && sym[pre.len()..].contains(part),
                None => sym.starts_with(p),
            };
            if hit {
                return stage;
            }
        }
    }
    OTHER
}

const OTHER: &str = "other kernel";

/// Samples per symbol, from `perf report` of `data`: `(user, symbol, samples)`.
fn symbols(data: &Path) -> Result<Vec<(bool, String, u64)>> {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "-q",
            "-n",
            "--sort",
            "sym",
            "-F",
            "sample,sym",
            "-i",
        ])
        .arg(data)
        .output()
        .context("running perf report")?;
    if !out.status.success() {
        bail!(
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = parse_report(&String::from_utf8_lossy(&out.stdout));
    if v.is_empty() {
        bail!("perf report of {} has no samples", data.display());
    }
    Ok(v)
}

/// Lines of `perf report -F sample,sym`: `<samples> [k] <symbol>` (`[.]` for user space).
fn parse_report(text: &str) -> Vec<(bool, String, u64)> {
    let mut v = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(n), Some(kind), Some(sym)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        if kind != "[k]" && kind != "[.]" {
            continue;
        }
        v.push((kind == "[.]", sym.to_owned(), n));
    }
    v
}

/// A contender's profile: busy samples per stage.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub stages: BTreeMap<String, u64>,
    /// The busiest symbols outside idle, for the reader.
    pub top: Vec<(String, u64)>,
    /// The busiest symbols no stage claims.
    pub unclaimed: Vec<(String, u64)>,
}

impl Profile {
    pub fn read(data: &Path) -> Result<Profile> {
        let mut p = Profile::default();
        let mut syms = symbols(data)?;
        syms.sort_by_key(|s| std::cmp::Reverse(s.2));
        for (user, sym, n) in syms {
            let stage = if user { "userspace" } else { stage_of(&sym) };
            if stage == "idle" {
                continue;
            }
            *p.stages.entry(stage.to_owned()).or_default() += n;
            if stage == OTHER && p.unclaimed.len() < 12 {
                p.unclaimed.push((sym.clone(), n));
            }
            if p.top.len() < 12 {
                p.top.push((sym, n));
            }
        }
        Ok(p)
    }

    pub fn busy_samples(&self) -> u64 {
        self.stages.values().sum()
    }

    /// ns per packet of every stage, over `packets`.
    pub fn per_packet(&self, packets: u64) -> BTreeMap<String, f64> {
        self.stages
            .iter()
            .map(|(k, &n)| (k.clone(), ns_per(n, packets)))
            .collect()
    }

    pub fn to_json(&self, packets: u64) -> Value {
        json!({
            "period_ns": PERIOD_NS,
            "busy_samples": self.busy_samples(),
            "busy_ns_per_packet": ns_per(self.busy_samples(), packets),
            "stages_ns_per_packet": self.per_packet(packets),
            "top_symbols": symbols_json(&self.top, packets),
            "top_unclaimed_symbols": symbols_json(&self.unclaimed, packets),
        })
    }
}

fn symbols_json(v: &[(String, u64)], packets: u64) -> Value {
    v.iter()
        .map(|(s, n)| json!({"symbol": s, "ns_per_packet": ns_per(*n, packets)}))
        .collect()
}

fn ns_per(samples: u64, packets: u64) -> f64 {
    (samples * PERIOD_NS) as f64 / packets.max(1) as f64
}

/// `cmd` run under `perf record` of every CPU, the samples written to `data`; returns the
/// command's stdout.
pub fn record(cmd: &Command, data: &Path) -> Result<String> {
    let mut perf = Command::new("perf");
    perf.args(["record", "-a", "-q", "-e", "cpu-clock", "-c"])
        .arg(PERIOD_NS.to_string())
        .arg("-o")
        .arg(data)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let out = perf.output().context("running perf record")?;
    if !out.status.success() {
        bail!(
            "perf record failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kernel.bpf_stats_enabled` on while it lives; restored on drop.
pub struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let before =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats {
            before: before.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.before) {
            eprintln!("bench: restoring {BPF_STATS}: {e}");
        }
    }
}

/// The kernel's (run time ns, run count) of program `id` so far (needs [`BpfStats`] on).
pub fn prog_run(id: u64) -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .context("running bpftool prog show")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    // Without bpf_stats the fields are absent: nothing has been counted.
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::{parse_report, stage_of};

    #[test]
    fn report_lines_give_samples_per_symbol() {
        let text = "\n             1  [k] __srcu_read_lock\n           886  [k] pv_native_safe_halt\n             3  [.] main\n# comment line\n";
        assert_eq!(
            parse_report(text),
            vec![
                (false, "__srcu_read_lock".to_string(), 1),
                (false, "pv_native_safe_halt".to_string(), 886),
                (true, "main".to_string(), 3),
            ]
        );
    }

    #[test]
    fn symbols_fold_into_their_stage() {
        let cases = [
            ("pv_native_safe_halt", "idle"),
            (
                "bpf_prog_6deef7357e7b4530_switcher_ingress",
                "switcher xdp program",
            ),
            ("bpf_prog_bd4b82e549cf554c_forward", "switcher xdp program"),
            (
                "bpf_prog_run_generic_xdp",
                "xdp redirect + veth xdp receive",
            ),
            ("bpf_prog_test_run_xdp", "generator send"),
            ("ipv4_conntrack_in", "conntrack + nat"),
            ("veth_poll", "netif receive + softirq"),
            (
                "bpf_prog_5d4b82e549cf554c_bench_tx",
                "frame source (bench_tx, live frames)",
            ),
            ("bpf_xdp_redirect_map", "xdp redirect + veth xdp receive"),
            ("bpf_fib_lookup", "bpf helpers + maps"),
            ("inet_gro_receive", "gro"),
            ("nf_conntrack_in", "conntrack + nat"),
            ("nft_do_chain", "netfilter hooks + nft rules"),
            ("ip_forward", "ip routing + forwarding"),
            ("veth_xmit", "veth transmit"),
            ("packet_sendmsg", "generator send"),
            ("xdp_test_run_batch", "generator send"),
            ("dev_gro_receive", "gro"),
            ("skb_pp_cow_data", "veth: skb copied for xdp headroom"),
            ("schedule", "other kernel"),
        ];
        for (symbol, stage) in cases {
            assert_eq!(stage_of(symbol), stage, "{symbol}");
        }
    }
}
