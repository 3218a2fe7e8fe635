//! The etcd of fleet tests ([`Etcd`]): a real 3-member cluster in its own namespace, reached
//! from a lab's edge over `ctl0`. It serves the edge, keeps accepting writes with its leader
//! killed, lets the killed member rejoin, stalls the edge (without resets) while partitioned
//! and serves it again once healed, compacts, and leaves nothing behind.
//! Needs root; without root it fails under CI and is skipped (visibly) otherwise.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use switcher_tests::lab::{
    self, base64_decode, base64_encode, etcd_member_v4, in_netns, Etcd, Host, Lab, CONTROL_IF,
    ETCD_CLIENT_PORT,
};
use switcher_tests::poll;
use switcher_tests::privilege::privileged;

/// POSTs `body` to `url` with curl from inside the lab's edge, so the request really crosses
/// `ctl0`; fails on a curl error or an etcd error answer.
fn edge_post(lab: &Lab, url: &str, body: &str) -> Result<Value> {
    let out = lab.run(
        Host::Edge,
        &["curl", "-sS", "--max-time", "5", "-d", body, url],
    )?;
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("curl {url}: not JSON: {out:?}"))?;
    if v.get("error").is_some() || v.get("code").is_some() {
        bail!("curl {url} {body}: etcd says {v}");
    }
    Ok(v)
}

fn revision_of(v: &Value) -> Result<i64> {
    let rev = &v["header"]["revision"];
    rev.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| rev.as_i64())
        .with_context(|| format!("no header.revision in {v}"))
}

fn edge_put(lab: &Lab, endpoint: &str, key: &str, value: &str) -> Result<i64> {
    let body = serde_json::json!({
        "key": base64_encode(key.as_bytes()),
        "value": base64_encode(value.as_bytes()),
    });
    revision_of(&edge_post(
        lab,
        &format!("{endpoint}/v3/kv/put"),
        &body.to_string(),
    )?)
}

/// `key`'s value read by the edge from `endpoint`; `serializable` reads answer from that
/// member's own store (no round to the leader), which shows what it has caught up on.
fn edge_get(lab: &Lab, endpoint: &str, key: &str, serializable: bool) -> Result<Option<String>> {
    let body = serde_json::json!({
        "key": base64_encode(key.as_bytes()),
        "serializable": serializable,
    });
    let v = edge_post(lab, &format!("{endpoint}/v3/kv/range"), &body.to_string())?;
    let Some(kv) = v["kvs"].as_array().and_then(|kvs| kvs.first()) else {
        return Ok(None);
    };
    let value = base64_decode(kv["value"].as_str().unwrap_or(""))?;
    Ok(Some(
        String::from_utf8(value).context("value is not UTF-8")?,
    ))
}

/// Processes whose command line mentions `token` (etcd members carry their namespace's name
/// as `--initial-cluster-token`).
fn processes_mentioning(token: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .filter_map(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (text.contains(token) && !text.is_empty())
                .then(|| format!("{}: {text}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
fn etcd_serves_the_edge_survives_a_member_and_a_partition() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let started = Instant::now();
    let mut lab = Lab::up(&Lab::unique_prefix("etcd"))?;
    let prefix = lab.prefix().to_owned();
    // Declared after the lab, so dropped before it (also on panic).
    let mut etcd = Etcd::up(&lab, 3)?;
    let up_took = started.elapsed();
    let ns = etcd.ns().to_owned();
    assert_eq!(ns, format!("{prefix}-etcd"));
    let data_root = etcd
        .data_dir(0)
        .parent()
        .context("data dir has a parent")?
        .to_owned();
    let pids: Vec<u32> = (0..3).filter_map(|i| etcd.pid(i)).collect();
    assert_eq!(pids.len(), 3, "all members run");
    let eps = etcd.endpoints();
    assert_eq!(
        eps,
        [
            "http://198.19.0.1:2379",
            "http://198.19.0.2:2379",
            "http://198.19.0.3:2379"
        ]
    );

    // The edge reaches the control net over ctl0 only.
    etcd.connect(&lab, 0)?;
    let route = lab.run(Host::Edge, &["ip", "route", "get", "198.19.0.2"])?;
    assert!(route.contains(&format!("dev {CONTROL_IF}")), "{route}");
    let to_client = lab.run(Host::Edge, &["ip", "route", "get", "198.18.0.1"])?;
    assert!(to_client.contains("dev to-client"), "{to_client}");

    // Edge writes, the helpers read; the helpers write, the edge reads.
    let rev = edge_put(&lab, &eps[0], "fleet/edge", "from-edge")?;
    let kvs = etcd.get_prefix("fleet/")?;
    assert_eq!(kvs.len(), 1, "{kvs:?}");
    assert_eq!(
        (kvs[0].key.as_str(), kvs[0].value.as_str()),
        ("fleet/edge", "from-edge")
    );
    assert_eq!((kvs[0].mod_revision, kvs[0].lease), (rev, 0));
    let rev2 = etcd.put("fleet/etcd", "from-etcd")?;
    assert!(rev2 > rev, "{rev2} after {rev}");
    assert_eq!(etcd.revision()?, rev2);
    assert_eq!(
        edge_get(&lab, &eps[1], "fleet/etcd", false)?.as_deref(),
        Some("from-etcd")
    );

    // Kill the leader (the hardest member to lose): 2 of 3 elect another and take writes.
    let leader = etcd.leader()?;
    etcd.stop_member(leader)?;
    assert!(!etcd.is_running(leader));
    let live = (leader + 1) % 3;
    // A put in flight when the leader dies waits out etcd's request timeout (7 s here), so
    // wait for the election first: then writes go through at once.
    let t = Instant::now();
    let new_leader = poll::until("a new leader", Duration::from_secs(10), || {
        Ok(etcd.leader().ok().filter(|l| *l != leader))
    })?;
    let elected = t.elapsed();
    let rev3 = etcd.put("fleet/degraded", "2 of 3")?;
    let edge_rev = edge_put(&lab, &eps[live], "fleet/degraded-edge", "yes")?;
    assert!(edge_rev > rev3);
    eprintln!("member {new_leader} took over from killed leader {leader} in {elected:?}");

    // It rejoins on its data dir and catches up on what it missed (its own store answers).
    etcd.start_member(leader)?;
    poll::until_true(
        "the restarted member to serve the writes it missed",
        Duration::from_secs(10),
        || {
            Ok(edge_get(&lab, &eps[leader], "fleet/degraded-edge", true)
                .ok()
                .flatten()
                .as_deref()
                == Some("yes"))
        },
    )?;

    // A connection the edge opened before the partition (as a daemon's gRPC stream is).
    let member0 = SocketAddr::from((etcd_member_v4(0), ETCD_CLIENT_PORT));
    let mut conn = in_netns(lab.ns(Host::Edge), || {
        TcpStream::connect_timeout(&member0, Duration::from_secs(2))
    })?
    .context("connecting from the edge before the partition")?;

    etcd.partition(&lab)?;
    etcd.partition(&lab)?; // idempotent
                           // A new request hangs until curl's own timeout (28): no RST, no ICMP error.
    let t = Instant::now();
    let body = serde_json::json!({ "key": base64_encode(b"fleet/cut"), "value": "eA==" });
    let out = lab
        .command(Host::Edge, "curl")
        .args(["-sS", "--max-time", "3", "-d", &body.to_string()])
        .arg(format!("{}/v3/kv/put", eps[0]))
        .output()
        .context("running curl in the edge")?;
    let waited = t.elapsed();
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl must time out while partitioned: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The established connection stalls too: the request goes out, nothing comes back, and
    // the socket sees neither a reset nor an end.
    let put = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: {member0}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.to_string().len()
    );
    conn.write_all(put.as_bytes())
        .context("writing on the established connection")?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    match conn.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => bail!("the established connection must stall while partitioned, got {other:?}"),
    }
    // The cluster itself is fine meanwhile.
    let during = etcd.put("fleet/during", "partition")?;

    etcd.heal(&lab)?;
    etcd.heal(&lab)?; // idempotent
                      // TCP retransmits: the stalled request completes on the same connection.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(20);
    let mut answer = Vec::new();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer on the stalled connection within 20 s of healing");
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => bail!(
                "the stalled connection closed without an answer: {:?}",
                String::from_utf8_lossy(&answer)
            ),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading on the healed connection"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eprintln!(
        "the stalled request was answered {:?} after healing",
        t.elapsed()
    );
    drop(conn);
    let after = poll::until(
        "a put from the healed edge",
        Duration::from_secs(10),
        || Ok(edge_put(&lab, &eps[0], "fleet/healed", "yes").ok()),
    )?;
    assert!(after > during);
    assert_eq!(
        etcd.get_prefix("fleet/cut")?
            .first()
            .map(|kv| kv.value.as_str()),
        Some("x"),
        "the request sent on the stalled connection was applied once healed"
    );

    // Physical compaction; compacting the same revision again is refused.
    let keys_before = etcd.get_prefix("fleet/")?;
    let rev = etcd.revision()?;
    etcd.put("fleet/edge", "rewritten")?;
    etcd.compact(rev)?;
    let again = etcd
        .compact(rev)
        .expect_err("a second compaction at the same revision");
    assert!(format!("{again:#}").contains("compacted"), "{again:#}");
    let keys_after = etcd.get_prefix("fleet/")?;
    assert_eq!(keys_after.len(), keys_before.len(), "{keys_after:?}");
    assert!(keys_after
        .iter()
        .any(|kv| kv.key == "fleet/edge" && kv.value == "rewritten"));

    // Teardown: members, namespace, control link and data all gone.
    etcd.down()?;
    etcd.down()?; // idempotent
    drop(etcd);
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd pid {pid} still exists"
        );
    }
    assert!(!lab::netns_list()?.contains(&ns), "{ns} still exists");
    let links = lab.run(Host::Edge, &["ip", "-o", "link", "show"])?;
    assert!(!links.contains(CONTROL_IF), "{links}");
    assert!(!data_root.exists(), "{} still exists", data_root.display());
    lab.down()?;
    let left: Vec<String> = lab::netns_list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let procs = processes_mentioning(&ns);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    eprintln!(
        "etcd lab: cluster up in {up_took:?}, whole test {:?}",
        started.elapsed()
    );
    Ok(())
}
