//! Who owns which lab, one lab at a time, and sweeping what killed runs left.
//!
//! - **One lab at a time.** Lab tests assert latencies (p99 of a few ms) and zero
//!   receive-buffer drops; two labs sharing the machine's 2 CPUs can fail a correct build.
//!   [`Turn`] is an exclusive `flock` on `/run/switcher-lab/turn.lock`, taken by [`Lab::up`]
//!   and held until the lab is torn down (or kept), across test binaries, processes and
//!   threads. A thread that already holds it may build more labs (reentrant per thread);
//!   another thread of the same process waits like another process does. A lab built on a
//!   second thread while the first thread's lab is still up would wait for it: don't. The
//!   kernel drops the lock when its process dies, however it dies. The file names the holder,
//!   and a wait longer than a few seconds says so on stderr.
//! - **Owners.** A lab prefix is claimed by `/run/switcher-lab/owners/<prefix>`, `flock`ed by
//!   its owner for the lab's lifetime (created before any namespace, removed after the last
//!   one is gone), so "is its owner alive?" has an exact answer with no pid reuse to fool it.
//!   A claim that nobody holds and that does not say `kept` is stale: its owner died.
//! - **Sweeping.** [`sweep_stale`] removes what stale labs left: their namespaces (the four
//!   hosts' and an [`super::Etcd`]'s `<prefix>-etcd`) and the processes inside (sinks, daemons
//!   entered with nsenter, senders, etcd members), their bpffs pins, their
//!   temporary folders; plus those of labs made before owners were recorded (names of the old
//!   `sw<tag><pid%10000><n>` form, only once their namespaces are gone) and pins
//!   `/sys/fs/bpf/switcher-<tag>-<pid>-<n>` of a [`crate::loaded`]-style datapath whose pid is
//!   gone and that has nothing attached. A lab whose owner lives is never touched.
//!
//! `/run` is a tmpfs: after a reboot there is nothing to sweep, and nothing is left to do so.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::netns::{netns_list, remove_netns};
use super::topology::Host;
#[cfg(doc)]
use super::Lab;
use crate::privilege::notice;

const RUN_DIR: &str = "/run/switcher-lab";
const TURN_FILE: &str = "turn.lock";
const OWNERS_DIR: &str = "owners";
const BPFFS: &str = "/sys/fs/bpf";
/// What a kept lab's claim file starts with ([`Claim::keep`]).
const KEPT: &str = "kept";

/// How long [`Lab::up`] waits for its turn. Labs of a whole test binary queue behind each
/// other (a few minutes); an hour means something hangs.
const TURN_TIMEOUT: Duration = Duration::from_secs(3600);
/// A wait for another process's lab longer than this is reported on stderr.
const SAY_AFTER: Duration = Duration::from_secs(5);
/// A wait for another thread's lab longer than this too (normal while a test binary's lab
/// tests queue; a hang if that thread waits for this one).
const SAY_AFTER_IN_PROCESS: Duration = Duration::from_secs(600);
/// How long a claimant retries a claim that is briefly held by a sweeper.
const CLAIM_RETRY: Duration = Duration::from_secs(3);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(RUN_DIR).join(OWNERS_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(PathBuf::from(RUN_DIR))
}

fn owner_path(prefix: &str) -> Result<PathBuf> {
    Ok(run_dir()?.join(OWNERS_DIR).join(prefix))
}

/// `pid N: command line`, for the files that say who holds a lock.
fn me() -> String {
    let cmdline = fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!("pid {}: {cmdline}", std::process::id())
}

fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// Whether the open `file` is still the one at `path` (not unlinked or replaced meanwhile).
fn still_at(file: &File, path: &Path) -> Result<bool> {
    let open = file.metadata().context("fstat of a lock file")?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.ino() == open.ino() && now.dev() == open.dev()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
    }
}

fn read_all(file: &mut File) -> Result<String> {
    let mut s = String::new();
    file.rewind().context("rewinding a lock file")?;
    file.read_to_string(&mut s).context("reading a lock file")?;
    Ok(s)
}

fn overwrite(file: &mut File, text: &str) -> Result<()> {
    file.set_len(0).context("truncating a lock file")?;
    file.rewind().context("rewinding a lock file")?;
    file.write_all(text.as_bytes())
        .context("writing a lock file")?;
    Ok(())
}

fn first_line(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "an unknown process".to_owned())
}

// ---------------------------------------------------------------------------------------------
// One lab at a time.

struct TurnState {
    holder: Option<ThreadId>,
    depth: usize,
    file: Option<Flock<File>>,
}

static TURN: Mutex<TurnState> = Mutex::new(TurnState {
    holder: None,
    depth: 0,
    file: None,
});
static TURN_FREED: Condvar = Condvar::new();

/// This thread's turn to run a lab; released on drop (the last one of the thread's labs).
#[must_use = "the turn ends when this is dropped"]
pub(super) struct Turn {
    _private: (),
}

/// Waits for this thread's turn to run a lab (`what`: for the message another waiter sees).
pub(super) fn take_turn(what: &str) -> Result<Turn> {
    let me_thread = thread::current().id();
    let started = Instant::now();
    let deadline = started + TURN_TIMEOUT;
    let mut said = false;
    let mut st = lock(&TURN);
    loop {
        match st.holder {
            None => break,
            Some(h) if h == me_thread => {
                st.depth += 1;
                return Ok(Turn { _private: () });
            }
            Some(h) => {
                let now = Instant::now();
                if now >= deadline {
                    bail!(
                        "waited {TURN_TIMEOUT:?} for another thread of this process to finish its lab"
                    );
                }
                if !said && now - started >= SAY_AFTER_IN_PROCESS {
                    said = true;
                    notice(&format!(
                        "lab {what}: waiting {:?} so far for the lab of thread {h:?} of this process \
                         (a test that builds a lab on a second thread while holding one waits forever)",
                        now - started
                    ));
                }
                let slice = (deadline - now).min(Duration::from_secs(10));
                st = TURN_FREED
                    .wait_timeout(st, slice)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
    st.holder = Some(me_thread);
    st.depth = 1;
    drop(st);
    // Across processes, outside the in-process mutex: other threads wait on the condvar.
    match lock_turn_file(what, deadline) {
        Ok(file) => {
            lock(&TURN).file = Some(file);
            Ok(Turn { _private: () })
        }
        Err(e) => {
            let mut st = lock(&TURN);
            st.holder = None;
            st.depth = 0;
            TURN_FREED.notify_all();
            Err(e)
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = lock(&TURN);
        st.depth = st.depth.saturating_sub(1);
        if st.depth == 0 {
            st.holder = None;
            // Closing the file releases the flock.
            st.file = None;
            TURN_FREED.notify_all();
        }
    }
}

fn lock_turn_file(what: &str, deadline: Instant) -> Result<Flock<File>> {
    let path = run_dir()?.join(TURN_FILE);
    let started = Instant::now();
    let mut said = false;
    loop {
        let file = open_rw(&path, true).with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                overwrite(&mut file, &format!("{}\nlab {what}\n", me()))?;
                if said {
                    notice(&format!(
                        "lab {what}: got the lab lock after {:.1?}",
                        started.elapsed()
                    ));
                }
                return Ok(file);
            }
            Err((_, Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => {
                return Err(e).with_context(|| format!("flock {}", path.display()));
            }
        }
        if !said && started.elapsed() >= SAY_AFTER {
            said = true;
            notice(&format!(
                "lab {what}: waiting for the lab lock {} held by {} (labs run one at a time)",
                path.display(),
                first_line(&path)
            ));
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {TURN_TIMEOUT:?} for the lab lock {}, held by {}",
                path.display(),
                first_line(&path)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Owners.

/// This process's claim on a lab prefix: held while the lab exists.
pub(super) struct Claim {
    path: PathBuf,
    file: Flock<File>,
}

impl Claim {
    /// Claims `prefix` for this process. Fails when a live process owns it. A claim left by a
    /// dead owner, or by a kept lab, is taken over: the caller removes what it left.
    pub(super) fn take(prefix: &str) -> Result<Claim> {
        let path = owner_path(prefix)?;
        let started = Instant::now();
        loop {
            let file =
                open_rw(&path, true).with_context(|| format!("opening {}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut file) => {
                    if !still_at(&file, &path)? {
                        // A sweeper removed it between our open and our lock: start over.
                        continue;
                    }
                    overwrite(&mut file, &format!("{}\n", me()))?;
                    return Ok(Claim { path, file });
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    // A live owner, or a sweeper looking at it for a moment.
                    if started.elapsed() >= CLAIM_RETRY {
                        bail!(
                            "lab prefix {prefix:?} is in use by {} (its claim {} is held)",
                            first_line(&path),
                            path.display()
                        );
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => return Err(e).with_context(|| format!("flock {}", path.display())),
            }
        }
    }

    /// The lab is gone: removes the claim (while still holding it).
    pub(super) fn release(self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }

    /// The lab outlives this process (`cargo xtask lab up`): marked kept, so sweeps leave it
    /// alone; [`super::cleanup_stale`] or a later [`Lab::up`] with the same prefix replace it.
    pub(super) fn keep(mut self) -> Result<()> {
        let text = format!("{KEPT} by {}\n", me());
        overwrite(&mut self.file, &text)
    }
}

/// What a lab prefix's claim says about its owner.
pub(super) enum Owner {
    /// No claim file.
    Unclaimed,
    /// Held by a live process (described).
    Live(String),
    /// A kept lab's claim (held here until dropped).
    Kept(StaleClaim),
    /// A dead owner's claim (held here until dropped).
    Dead(StaleClaim),
    /// A claim being created this very moment (empty): treat as live.
    Starting,
}

/// A claim nobody else holds, locked by us: [`StaleClaim::remove`] it once its lab is gone.
pub(super) struct StaleClaim {
    path: PathBuf,
    _file: Flock<File>,
}

impl StaleClaim {
    pub(super) fn remove(self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }
}

/// Looks at `prefix`'s claim without waiting.
pub(super) fn owner(prefix: &str) -> Result<Owner> {
    let path = owner_path(prefix)?;
    for _ in 0..10 {
        let file = match open_rw(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Owner::Unclaimed),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(Owner::Live(first_line(&path))),
            Err((_, e)) => return Err(e).with_context(|| format!("flock {}", path.display())),
        };
        if !still_at(&file, &path)? {
            continue;
        }
        let text = read_all(&mut file)?;
        let claim = StaleClaim {
            path: path.clone(),
            _file: file,
        };
        return Ok(if text.is_empty() {
            Owner::Starting
        } else if text.starts_with(KEPT) {
            Owner::Kept(claim)
        } else {
            Owner::Dead(claim)
        });
    }
    bail!("{} keeps changing", path.display())
}

// ---------------------------------------------------------------------------------------------
// Leftovers.

/// The work folders and pins that belong to lab `prefix` by convention.
pub(super) fn work_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("switcher-{prefix}"))
}

pub(super) fn bpffs_dir(prefix: &str) -> PathBuf {
    PathBuf::from(BPFFS).join(format!("switcher-{prefix}"))
}

/// Folders some users of a lab make next to [`work_dir`] (the benchmark's; the rsyslog
/// smoke test's of earlier versions).
fn other_dirs(prefix: &str) -> [PathBuf; 2] {
    let tmp = std::env::temp_dir();
    [
        tmp.join(format!("switcher-bench-{prefix}")),
        tmp.join(format!("{prefix}-rsyslog")),
    ]
}

/// Namespaces a lab's owner makes besides the four [`Host`]s: `{prefix}-etcd`
/// ([`super::Etcd`]). Swept, and removed by [`Lab::down`], like the hosts' own.
const EXTRA_NETNS: [&str; 1] = ["etcd"];

/// Every namespace suffix of a lab: the hosts' names, then [`EXTRA_NETNS`].
fn netns_suffixes() -> impl Iterator<Item = &'static str> {
    Host::ALL
        .iter()
        .map(|h| h.name())
        .chain(EXTRA_NETNS.iter().copied())
}

/// The namespaces besides the hosts' that lab `prefix` may have (see [`EXTRA_NETNS`]).
pub(super) fn extra_netns(prefix: &str) -> impl Iterator<Item = String> + '_ {
    EXTRA_NETNS.iter().map(move |s| format!("{prefix}-{s}"))
}

/// Removes what lab `prefix` may have left: its namespaces (killing what runs inside), its
/// pins, its work folders. Missing pieces are fine. Returns what was removed.
pub(super) fn remove_leftovers(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let existing = netns_list()?;
    for suffix in netns_suffixes() {
        let name = format!("{prefix}-{suffix}");
        if existing.contains(&name) {
            match remove_netns(&name) {
                Ok(()) => removed.push(format!("namespace {name}")),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    let mut dirs = vec![bpffs_dir(prefix), work_dir(prefix)];
    dirs.extend(other_dirs(prefix));
    for dir in dirs {
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir.display().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", dir.display())),
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        bail!(
            "removing what lab {prefix} left: {} (removed: {})",
            errors.join("; "),
            removed.join(", ")
        )
    }
}

/// The form of a test lab's prefix ([`super::Lab::unique_prefix`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Form {
    /// `sw<letters><pid>_<n>`: claimed before anything is made, so no claim means dead.
    Claimed,
    /// `sw<letters><pid % 10000 as 4 digits><n>`, made before claims existed: no owner known.
    Legacy,
}

pub(super) fn test_prefix_form(prefix: &str) -> Option<Form> {
    let rest = prefix.strip_prefix("sw")?;
    let letters = rest.chars().take_while(char::is_ascii_alphabetic).count();
    if letters > 6 {
        return None;
    }
    let rest = &rest[letters..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let tail = &rest[digits..];
    if tail.is_empty() {
        return (digits >= 5).then_some(Form::Legacy);
    }
    let n = tail.strip_prefix('_')?;
    (!n.is_empty() && n.chars().all(|c| c.is_ascii_digit())).then_some(Form::Claimed)
}

/// The lab prefix of a namespace name (`<prefix>-client` ..., `<prefix>-etcd`).
pub(super) fn lab_of_netns(name: &str) -> Option<&str> {
    netns_suffixes().find_map(|s| name.strip_suffix(s)?.strip_suffix('-'))
}

fn list_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what labs of dead owners left (see the module docs). Returns a line per lab swept;
/// never touches a lab whose owner lives, or a kept one.
pub(super) fn sweep_stale() -> Result<Vec<String>> {
    let run = run_dir()?;
    let netns = netns_list()?;
    let mut prefixes: BTreeSet<String> = list_names(&run.join(OWNERS_DIR)).into_iter().collect();
    prefixes.extend(
        netns
            .iter()
            .filter_map(|n| lab_of_netns(n))
            .map(str::to_owned),
    );
    for name in list_names(Path::new(BPFFS)) {
        if let Some(p) = name.strip_prefix("switcher-") {
            prefixes.insert(p.to_owned());
        }
    }
    for name in list_names(&std::env::temp_dir()) {
        for p in [
            name.strip_prefix("switcher-bench-"),
            name.strip_prefix("switcher-"),
            name.strip_suffix("-rsyslog"),
        ]
        .into_iter()
        .flatten()
        {
            prefixes.insert(p.to_owned());
        }
    }

    let mut swept = Vec::new();
    let mut errors = Vec::new();
    let plausible = |p: &String| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    for prefix in prefixes.into_iter().filter(plausible) {
        let form = test_prefix_form(&prefix);
        let found = match owner(&prefix) {
            Ok(found) => found,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let claim = match found {
            Owner::Live(_) | Owner::Kept(_) | Owner::Starting => continue,
            Owner::Dead(claim) => Some(claim),
            Owner::Unclaimed => match form {
                Some(Form::Claimed) => None,
                // Its owner is unknown: only once its namespaces are gone.
                Some(Form::Legacy)
                    if !netns
                        .iter()
                        .any(|n| lab_of_netns(n) == Some(prefix.as_str())) =>
                {
                    None
                }
                _ => continue,
            },
        };
        match remove_leftovers(&prefix) {
            Ok(removed) => {
                if let Some(claim) = claim {
                    if let Err(e) = claim.remove() {
                        errors.push(format!("{e:#}"));
                    }
                }
                if !removed.is_empty() {
                    swept.push(format!("lab {prefix}: {}", removed.join(", ")));
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    match sweep_loaded_pins() {
        Ok(mut more) => swept.append(&mut more),
        Err(e) => errors.push(format!("{e:#}")),
    }
    if errors.is_empty() {
        Ok(swept)
    } else {
        bail!(
            "sweeping leftovers of dead labs: {} (swept: {})",
            errors.join("; "),
            swept.join("; ")
        )
    }
}

/// `/sys/fs/bpf/switcher-<tag>-<pid>-<n>` of a datapath loaded for BPF_PROG_TEST_RUN whose
/// process is gone. Only folders with nothing attached (no link pins) are removed.
fn sweep_loaded_pins() -> Result<Vec<String>> {
    let mut swept = Vec::new();
    for name in list_names(Path::new(BPFFS)) {
        let Some(pid) = loaded_pins_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let dir = Path::new(BPFFS).join(&name);
        let attached = fs::read_dir(&dir)
            .map(|versions| {
                versions
                    .flatten()
                    .any(|v| !list_names(&v.path().join("links")).is_empty())
            })
            .unwrap_or(true);
        if attached {
            continue;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => swept.push(dir.display().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(swept)
}

/// The pid of `switcher-<tag>-<pid>-<n>` (tag: letters, digits and dashes, starting with a letter).
fn loaded_pins_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("switcher-")?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let tag = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let tag_ok = tag.starts_with(|c: char| c.is_ascii_alphabetic())
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !(digits(n) && digits(pid) && tag_ok) || tag.starts_with("lab-") {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0: only checks. EPERM still means it exists.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_prefix_forms() {
        assert_eq!(test_prefix_form("swsmoke123_0"), Some(Form::Claimed));
        assert_eq!(test_prefix_form("sw4194304_12"), Some(Form::Claimed));
        assert_eq!(test_prefix_form("swad04211"), Some(Form::Legacy));
        assert_eq!(test_prefix_form("swlab"), None);
        assert_eq!(test_prefix_form("swlab2"), None);
        assert_eq!(test_prefix_form("swad1234"), None);
        assert_eq!(test_prefix_form("swad12_"), None);
        assert_eq!(test_prefix_form("swad12_x"), None);
        assert_eq!(test_prefix_form("swtoolongtag12_0"), None);
        assert_eq!(test_prefix_form("lab-swx12_0"), None);
    }

    #[test]
    fn namespace_names_map_to_their_lab() {
        assert_eq!(lab_of_netns("swad12_0-edge"), Some("swad12_0"));
        assert_eq!(lab_of_netns("swlab-client"), Some("swlab"));
        assert_eq!(lab_of_netns("x-green"), Some("x"));
        assert_eq!(lab_of_netns("swad12_0-etcd"), Some("swad12_0"));
        assert_eq!(lab_of_netns("etcd"), None);
        assert_eq!(lab_of_netns("green"), None);
        assert_eq!(lab_of_netns("other"), None);
    }

    #[test]
    fn loaded_datapath_pins_name_their_pid() {
        assert_eq!(loaded_pins_pid("switcher-test-1234-0"), Some(1234));
        assert_eq!(loaded_pins_pid("switcher-bench-scale-77-3"), Some(77));
        assert_eq!(loaded_pins_pid("switcher-swad12_0"), None);
        assert_eq!(loaded_pins_pid("switcher-lab-swlab"), None);
        assert_eq!(loaded_pins_pid("switcher-lab-x-1-2"), None);
        assert_eq!(loaded_pins_pid("switcher-1-2"), None);
    }
}
