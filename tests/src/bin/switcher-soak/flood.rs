//! The SYN flood burst: trafgen (netsniff-ng) on the client host sends spoofed SYNs from
//! random sources in 198.18.100.0/24 and random ports to tcp4's VIP, bounded in count and
//! time, as `safety_lab` does. The established connections of the soak must not notice.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use switcher_tests::{
    lab::{Host, Lab, EDGE_TO_CLIENT, HOST_IF, VIP_V4},
    rig::{Rig, TCP_PORT},
};

/// SYNs per burst: more than the datapath's half-open table holds, so it must evict.
pub const PACKETS: u64 = 100_000;
/// Paced; still, the edge's veth ring fills at times and the client's kernel drops what it
/// sends then, our UDP lines included (counted: see `counters`).
pub const PPS: u64 = 20_000;
/// A burst that takes longer is stopped and fails.
const BOUND: Duration = Duration::from_secs(60);

fn mac(lab: &Lab, host: Host, ifname: &str) -> Result<String> {
    Ok(lab
        .run(host, &["cat", &format!("/sys/class/net/{ifname}/address")])?
        .trim()
        .to_string())
}

/// Writes trafgen's packet description to `path`.
pub fn write_config(lab: &Lab, path: &Path) -> Result<()> {
    let conf = format!(
        "{{ eth(sa={}, da={}), ipv4(sa=198.18.100.1, sa[3]=drnd(), da={VIP_V4}, ttl=64), \
         tcp(sp=drnd(1024, 65535), dp={TCP_PORT}, seq=drnd(), syn, win=64240) }}\n",
        mac(lab, Host::Client, HOST_IF)?,
        mac(lab, Host::Edge, EDGE_TO_CLIENT)?,
    );
    std::fs::write(path, conf).with_context(|| format!("writing {}", path.display()))
}

/// One burst of [`PACKETS`] SYNs at [`PPS`].
pub fn burst(rig: &Rig, conf: &Path) -> Result<()> {
    // Niced: trafgen spins, and the edge's softirq work (its share of the ring) must win.
    let mut cmd = rig.lab.command(Host::Client, "nice");
    cmd.args([
        "-n",
        "19",
        "trafgen",
        "--dev",
        HOST_IF,
        "--conf",
        &conf.display().to_string(),
        "-n",
        &PACKETS.to_string(),
        "-P",
        "1",
        "-b",
        &format!("{PPS}pps"),
        "--no-sock-mem",
        "--notouch-irq",
    ]);
    let p = rig
        .lab
        .spawn_command(cmd)
        .context("starting trafgen (Debian package netsniff-ng)")?;
    match p.wait_timeout(BOUND)? {
        Some(st) if st.success() => Ok(()),
        Some(st) => bail!("trafgen failed ({st}): {}", p.stderr_tail(10)),
        None => {
            let _ = p.stop();
            bail!("trafgen did not send {PACKETS} packets within {BOUND:?}")
        }
    }
}
