//! Brings a lab up, checks it works, and checks that teardown leaves nothing behind; labs run
//! one at a time, and what a killed run left is swept without touching a running lab.
//! Needs root; without root it fails under CI and is skipped (visibly) otherwise.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use switcher_tests::lab::{self, Host, Lab, BLUE_V4, BLUE_V6, EDGE_CLIENT_V4};
use switcher_tests::poll;
use switcher_tests::privilege::privileged;

#[test]
fn lab_up_ping_snmp_down() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let mut lab = Lab::up(&Lab::unique_prefix("smoke"))?;
    let names: Vec<String> = Host::ALL.iter().map(|h| lab.ns(*h).to_owned()).collect();

    lab.run(
        Host::Client,
        &["ping", "-c1", "-W1", &EDGE_CLIENT_V4.to_string()],
    )?;
    let snmp = lab.snmp(Host::Client)?;
    // The ping above is ICMP; the named UDP/TCP counters of a fresh namespace are all zero.
    assert_eq!(snmp.udp_in_datagrams, 0, "{snmp:?}");
    assert!(snmp.get("IcmpInEchoReps").unwrap_or(0) >= 1, "{snmp:?}");

    // Ignores SIGTERM, so down() must escalate to SIGKILL; its `sleep` child is untracked and
    // must be killed by the namespace sweep.
    let stubborn = lab.spawn_ready(
        Host::Blue,
        "sh",
        &["-c", "trap '' TERM; echo READY; sleep 600; echo done"],
        "READY",
        Duration::from_secs(5),
    )?;

    let started = Instant::now();
    lab.down()?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "down took {:?}",
        started.elapsed()
    );
    assert!(
        stubborn.try_wait()?.is_some(),
        "tracked process still running after down()"
    );
    lab.down()?; // idempotent

    let left = lab::netns_list()?;
    for name in &names {
        assert!(
            !left.contains(name),
            "namespace {name} still exists: {left:?}"
        );
    }
    Ok(())
}

#[test]
fn rsyslog_receives_udp_and_tcp() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let mut lab = Lab::up(&Lab::unique_prefix("rsl"))?;
    // The lab's own work folder: removed by down(), swept if this process dies.
    let dir = lab.work_dir();
    let out = dir.join("out.log");
    let port = 5514;
    let rsyslog = lab.start_rsyslog(Host::Blue, port, &out, &dir)?;

    let v4 = SocketAddr::from((BLUE_V4, port));
    let v6 = SocketAddr::from((BLUE_V6, port));
    lab::in_netns(lab.ns(Host::Client), || -> Result<()> {
        let udp4 = UdpSocket::bind("0.0.0.0:0")?;
        udp4.send_to(b"<13>Jan  1 00:00:00 client smoke: udp4 line", v4)?;
        let udp6 = UdpSocket::bind("[::]:0")?;
        udp6.send_to(b"<13>Jan  1 00:00:00 client smoke: udp6 line", v6)?;
        let mut tcp = TcpStream::connect_timeout(&v6, Duration::from_secs(2))?;
        tcp.write_all(b"<13>Jan  1 00:00:00 client smoke: tcp6 line\n")?;
        Ok(())
    })??;

    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    rsyslog.stop()?;
    lab.down()?;
    assert!(!dir.exists(), "{} left after down()", dir.display());

    for want in ["smoke: udp4 line", "smoke: udp6 line", "smoke: tcp6 line"] {
        assert!(
            text.lines().any(|l| l.ends_with(want)),
            "{want:?} missing in:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), 3, "unexpected extra lines:\n{text}");
    Ok(())
}

/// Holds the lab lock file the way another process's lab would (a separate open file
/// description conflicts even within this process).
fn hold_turn_lock() -> Result<Flock<fs::File>> {
    let path = Path::new("/run/switcher-lab/turn.lock");
    fs::create_dir_all("/run/switcher-lab")?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // Blocking: waits for whatever lab runs now.
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

/// Labs never overlap: one held by another process (the lock file), or by another thread,
/// makes `Lab::up` wait until it is down; a thread holding a lab may build a second one.
#[test]
fn labs_run_one_at_a_time() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    // Another process's lab: Lab::up on a thread must wait until the lock is released.
    let held = hold_turn_lock()?;
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Instant>();
    let waiter = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || -> Result<()> {
            let lab = Lab::up(&Lab::unique_prefix("wait"))?;
            let _ = tx.send(Instant::now());
            done.store(true, Ordering::SeqCst);
            // Held until the main thread has looked (then down on drop).
            std::thread::sleep(Duration::from_millis(200));
            drop(lab);
            Ok(())
        })
    };
    // Long enough for Lab::up to have finished twice over were it not waiting.
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(4) {
        assert!(
            !done.load(Ordering::SeqCst),
            "Lab::up ran while another lab held the lock"
        );
        std::thread::sleep(poll::EVERY);
    }
    let released = Instant::now();
    drop(held);
    let up_at = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the waiting lab never came up")?;
    assert!(up_at >= released);
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))??;

    // One thread, two labs at once: no deadlock (the turn is the thread's).
    let first = Lab::up(&Lab::unique_prefix("nesta"))?;
    let second = Lab::up(&Lab::unique_prefix("nestb"))?;
    // Another thread waits for both to be down.
    let (tx, rx) = mpsc::channel::<Instant>();
    let other = std::thread::spawn(move || -> Result<()> {
        let lab = Lab::up(&Lab::unique_prefix("after"))?;
        let _ = tx.send(Instant::now());
        drop(lab);
        Ok(())
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "a second thread got a lab while this thread held two"
    );
    drop(second);
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "a second thread got a lab while this thread still held one"
    );
    let first_down = Instant::now();
    drop(first);
    let up_at = rx
        .recv_timeout(Duration::from_secs(60))
        .context("the other thread never got its lab")?;
    assert!(up_at >= first_down);
    other
        .join()
        .map_err(|_| anyhow::anyhow!("other thread panicked"))??;
    Ok(())
}

/// A fake lab made by hand for the sweep test: a claim file, a namespace with a process in it,
/// a work folder and a bpffs folder. Removed on drop whatever happened.
struct FakeLab {
    prefix: String,
    claim_path: PathBuf,
    claim: Option<Flock<fs::File>>,
    child: Option<Child>,
}

impl FakeLab {
    /// Made while its claim is held (so no concurrent sweep takes it for dead halfway).
    fn make(prefix: &str) -> Result<FakeLab> {
        let owners = Path::new("/run/switcher-lab/owners");
        fs::create_dir_all(owners)?;
        let claim_path = owners.join(prefix);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&claim_path)?;
        let mut claim = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", claim_path.display()))?;
        // What a real owner writes: its pid (one that cannot exist: above pid_max).
        writeln!(claim, "pid 9999999: a killed test run")?;
        let mut fake = FakeLab {
            prefix: prefix.to_owned(),
            claim_path,
            claim: Some(claim),
            child: None,
        };
        let ns = fake.ns();
        let st = Command::new("ip").args(["netns", "add", &ns]).status()?;
        if !st.success() {
            bail!("ip netns add {ns}: {st}");
        }
        fake.child = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns, "sleep", "600"])
                .stdin(Stdio::null())
                .spawn()?,
        );
        for dir in fake.dirs() {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(fake)
    }

    fn ns(&self) -> String {
        format!("{}-edge", self.prefix)
    }

    fn dirs(&self) -> [PathBuf; 2] {
        [
            std::env::temp_dir().join(format!("switcher-{}", self.prefix)),
            PathBuf::from(format!("/sys/fs/bpf/switcher-{}", self.prefix)),
        ]
    }

    /// Its owner "dies": the claim is no longer held.
    fn orphan(&mut self) {
        self.claim = None;
    }

    fn child_exited_within(&mut self, timeout: Duration) -> Result<bool> {
        let child = self.child.as_mut().context("no child")?;
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(poll::EVERY);
        }
    }
}

impl Drop for FakeLab {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns()])
            .stderr(Stdio::null())
            .status();
        for dir in self.dirs() {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_file(&self.claim_path);
        self.claim = None;
    }
}

/// `Lab::up` sweeps what a run that died left (namespace and the process inside, work
/// folder, pins folder, claim), also when no claim is left at all, and never touches a lab
/// whose owner is alive.
#[test]
fn leftovers_of_dead_runs_are_swept_but_running_labs_are_not() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let id = std::process::id();
    let mut dead = FakeLab::make(&format!("swdead9999999_{id}"))?;
    let mut unclaimed = FakeLab::make(&format!("swgone9999999_{id}"))?;
    let mut live = FakeLab::make(&format!("swlive9999999_{id}"))?;
    dead.orphan();
    // Died before even its claim was written back: no claim file at all.
    unclaimed.orphan();
    fs::remove_file(&unclaimed.claim_path)?;

    let mut lab = Lab::up(&Lab::unique_prefix("sweep"))?;
    let names = lab::netns_list()?;
    for gone in [&mut dead, &mut unclaimed] {
        assert!(
            !names.contains(&gone.ns()),
            "{} of a dead run survived: {names:?}",
            gone.ns()
        );
        assert!(
            gone.child_exited_within(Duration::from_secs(5))?,
            "the process in {} survived",
            gone.ns()
        );
        for dir in gone.dirs() {
            assert!(!dir.exists(), "{} survived", dir.display());
        }
        assert!(
            !gone.claim_path.exists(),
            "claim of {} survived",
            gone.prefix
        );
    }
    assert!(
        names.contains(&live.ns()),
        "a running lab was swept: {names:?}"
    );
    assert!(
        !live.child_exited_within(Duration::ZERO)?,
        "a running lab's process was killed"
    );
    for dir in live.dirs() {
        assert!(
            dir.exists(),
            "a running lab's {} was removed",
            dir.display()
        );
    }
    // Its prefix cannot be taken either.
    let e = Lab::up(&live.prefix).expect_err("a live owner's prefix");
    assert!(format!("{e:#}").contains("in use"), "{e:#}");
    lab.down()?;
    drop(live);
    Ok(())
}

/// `cargo xtask lab up` keeps its lab: sweeps leave a kept lab (and what runs in it) alone,
/// `Lab::up` with the same prefix replaces it, and `cleanup_stale` (`cargo xtask lab down`)
/// removes it with its claim.
#[test]
fn a_kept_lab_survives_sweeps_until_replaced_or_removed() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = lab::cleanup_stale(&self.0);
        }
    }
    let prefix = Lab::unique_prefix("kept");
    let _cleanup = Cleanup(format!("{prefix}-"));
    let kept = Lab::up(&prefix)?;
    let names: Vec<String> = Host::ALL.iter().map(|h| kept.ns(*h).to_owned()).collect();
    let sleeper = kept.spawn(Host::Blue, "sleep", &["600"])?;
    kept.keep();

    // Another lab's sweep leaves it alone.
    let mut other = Lab::up(&Lab::unique_prefix("other"))?;
    let present = lab::netns_list()?;
    for name in &names {
        assert!(present.contains(name), "a kept lab was swept: {name}");
    }
    assert!(
        sleeper.try_wait()?.is_none(),
        "a kept lab's process was killed"
    );
    other.down()?;

    // The same prefix again replaces it.
    let again = Lab::up(&prefix)?;
    assert!(
        sleeper.wait_timeout(Duration::from_secs(5))?.is_some(),
        "the kept lab's process survived its replacement"
    );
    again.run(
        Host::Client,
        &["ping", "-c1", "-W1", &EDGE_CLIENT_V4.to_string()],
    )?;

    // Kept again, then removed as `cargo xtask lab down` does.
    again.keep();
    let removed = lab::cleanup_stale(&format!("{prefix}-"))?;
    assert_eq!(removed.len(), 4, "{removed:?}");
    assert!(
        !Path::new("/run/switcher-lab/owners").join(&prefix).exists(),
        "the kept lab's claim survived lab down"
    );
    Ok(())
}
