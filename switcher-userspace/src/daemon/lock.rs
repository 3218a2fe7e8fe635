//! One daemon per datapath and per state folder: exclusive `flock`s, taken before either is
//! touched and held for the daemon's lifetime, so a second daemon (or `switcher detach`) with
//! the same `bpffs_dir` or `state_dir` stops at once and names the holder, whatever socket it
//! was given.
//!
//! bpffs holds only BPF objects and folders (creating a regular file there is refused),
//! so the datapath's lock lives in [`LOCK_DIR`], named after the bpffs folder's absolute path
//! the way `systemd-escape --path` names it: `/sys/fs/bpf/switcher` locks
//! `/run/switcher/datapath-sys-fs-bpf-switcher.lock`. The state folder's is
//! `<state_dir>/daemon.lock`. Each holds the holder's pid and role (`1234 daemon`).
//!
//! flock belongs to the open file description: the kernel drops it when the holder exits,
//! however it exits, so a stale file never blocks. The holder removes the file as it lets go
//! (while still holding the lock); a contender that locked a file removed meanwhile notices
//! (its descriptor is no longer the file at the path) and tries again.

use std::{
    ffi::OsStr,
    fmt,
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::private_dir;

/// Where the datapath locks live (a tmpfs: they vanish at reboot, like the pins).
pub const LOCK_DIR: &str = "/run/switcher";
/// The state folder's lock file.
pub const STATE_LOCK: &str = "daemon.lock";

/// Who holds a lock, as written into its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Daemon,
    Detach,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Daemon => "daemon",
            Role::Detach => "detach",
        }
    }
}

/// What a lock file says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub role: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what} is in use by {} (lock {path}): stop it first", holder_text(.holder))]
    Held {
        what: String,
        path: PathBuf,
        holder: Option<Holder>,
    },
    #[error("locking {what} ({path}): {source}")]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn holder_text(h: &Option<Holder>) -> String {
    match h {
        Some(h) if h.role == "detach" => format!("`switcher detach` (pid {})", h.pid),
        Some(h) => format!("another switcher {} (pid {})", h.role, h.pid),
        // Locked an instant ago, its pid not written yet.
        None => "another switcher process (its pid is not written yet)".into(),
    }
}

/// An exclusive lock on `path`, held until dropped; the file names this process.
#[derive(Debug)]
pub struct Lock {
    file: Flock<File>,
    path: PathBuf,
}

/// Attempts before giving up on a lock file its holders keep replacing.
const ATTEMPTS: usize = 10;

impl Lock {
    /// Takes the lock on `path` (created 0600 if missing) without waiting; `what` names what
    /// it guards in errors. Fails with [`LockError::Held`] naming the holder's pid when another
    /// open file description holds it, in this process or another.
    pub fn acquire(path: &Path, what: &str, role: Role) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        };
        for _ in 0..ATTEMPTS {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(io)?;
            let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => f,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    return Err(LockError::Held {
                        what: what.to_string(),
                        path: path.to_path_buf(),
                        holder: read_holder(&mut file),
                    })
                }
                Err((_, e)) => return Err(io(e.into())),
            };
            if !is_file_at(&file, path).map_err(io)? {
                // The previous holder removed it as it let go: lock the one at `path` now.
                continue;
            }
            file.set_len(0).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            writeln!(file, "{} {}", std::process::id(), role.as_str()).map_err(io)?;
            return Ok(Self {
                file,
                path: path.to_path_buf(),
            });
        }
        Err(io(std::io::Error::other(
            "the lock file kept being replaced",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held (the lock goes with `file` right after): nobody can
        // lock this file's inode and believe it is the one at the path.
        if is_file_at(&self.file, &self.path).unwrap_or(false) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Whether the open `file` is the file now at `path`.
fn is_file_at(file: &File, path: &Path) -> std::io::Result<bool> {
    let open = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(at) => Ok(at.dev() == open.dev() && at.ino() == open.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(128).read_to_string(&mut text).ok()?;
    parse_holder(&text)
}

/// `"1234 daemon\n"` → pid 1234, role daemon.
fn parse_holder(text: &str) -> Option<Holder> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let role = words.next().unwrap_or("process").to_string();
    Some(Holder { pid, role })
}

/// The lock file of the datapath pinned under `bpffs_dir`, in `lock_dir`.
pub fn datapath_lock_path(lock_dir: &Path, bpffs_dir: &Path) -> PathBuf {
    let abs = std::path::absolute(bpffs_dir).unwrap_or_else(|_| bpffs_dir.to_path_buf());
    lock_dir.join(format!("datapath-{}.lock", escape_path(&abs)))
}

/// A path as one file name, as `systemd-escape --path` writes it: the folders joined by `-`,
/// every byte outside `[A-Za-z0-9:_.]` (and a leading `.`) as `\xNN`. Different paths give
/// different names (`a-b` is `a\x2db`, `a/b` is `a-b`).
pub fn escape_path(p: &Path) -> String {
    let parts: Vec<&OsStr> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            Component::ParentDir => Some(OsStr::new("..")),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.as_encoded_bytes().iter().enumerate() {
            let keep = b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.');
            if keep && !(i == 0 && j == 0 && *b == b'.') {
                out.push(char::from(*b));
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// The two locks a daemon holds for its lifetime.
pub struct DaemonLocks {
    pub datapath: Lock,
    pub state: Lock,
}

impl fmt::Debug for DaemonLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DaemonLocks({}, {})",
            self.datapath.path().display(),
            self.state.path().display()
        )
    }
}

impl DaemonLocks {
    /// Locks the datapath under `bpffs_dir` (in [`LOCK_DIR`]) and `state_dir` (creating
    /// both folders 0700 when missing), touching neither the pins nor the state.
    pub fn acquire(bpffs_dir: &Path, state_dir: &Path) -> Result<Self> {
        Self::acquire_in(Path::new(LOCK_DIR), bpffs_dir, state_dir)
    }

    fn acquire_in(lock_dir: &Path, bpffs_dir: &Path, state_dir: &Path) -> Result<Self> {
        let datapath = lock_datapath_in(lock_dir, bpffs_dir, Role::Daemon)?;
        private_dir::create(state_dir)?;
        let state = Lock::acquire(
            &state_dir.join(STATE_LOCK),
            &format!("the state folder {}", state_dir.display()),
            Role::Daemon,
        )?;
        Ok(Self { datapath, state })
    }
}

/// Locks the datapath pinned under `bpffs_dir` for `role`.
pub fn lock_datapath(bpffs_dir: &Path, role: Role) -> Result<Lock> {
    lock_datapath_in(Path::new(LOCK_DIR), bpffs_dir, role)
}

fn lock_datapath_in(lock_dir: &Path, bpffs_dir: &Path, role: Role) -> Result<Lock> {
    private_dir::prepare(lock_dir, is_lock_file)
        .with_context(|| format!("the lock folder {}", lock_dir.display()))?;
    Ok(Lock::acquire(
        &datapath_lock_path(lock_dir, bpffs_dir),
        &format!("the datapath pinned under {}", bpffs_dir.display()),
        role,
    )?)
}

/// A file the daemon keeps in its runtime folder for its locks.
pub fn is_lock_file(name: &OsStr) -> bool {
    name.as_encoded_bytes().ends_with(b".lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("switcher-lock-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn a_second_lock_on_one_path_fails_and_names_the_holder() {
        let dir = tempdir("held");
        let path = dir.join("daemon.lock");
        let first = Lock::acquire(&path, "the test datapath", Role::Daemon).expect("first lock");
        // flock belongs to the open file description: a second open in this very process
        // conflicts just as another process would.
        let err = Lock::acquire(&path, "the test datapath", Role::Daemon)
            .expect_err("the second lock must fail");
        let msg = err.to_string();
        let me = std::process::id();
        assert!(
            matches!(&err, LockError::Held { holder: Some(h), .. } if h.pid == me),
            "{err:?}"
        );
        assert!(
            msg.contains(&format!("another switcher daemon (pid {me})"))
                && msg.contains("the test datapath"),
            "{msg}"
        );
        assert_eq!(
            fs::read_to_string(&path).expect("lock file"),
            format!("{me} daemon\n")
        );
        // Let go: the file goes, and the next one takes the lock at once.
        drop(first);
        assert!(!path.exists(), "the holder removes its lock file");
        let again = Lock::acquire(&path, "the test datapath", Role::Detach).expect("free again");
        let msg = Lock::acquire(&path, "the test datapath", Role::Daemon)
            .expect_err("held by detach")
            .to_string();
        assert!(msg.contains("`switcher detach` (pid"), "{msg}");
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_daemon_needs_both_its_datapath_and_its_state_folder_free() {
        let dir = tempdir("daemon");
        let run = dir.join("run");
        let (bpf_a, bpf_b) = (dir.join("bpf-a"), dir.join("bpf-b"));
        let (state_a, state_b) = (dir.join("state-a"), dir.join("state-b"));
        let first = DaemonLocks::acquire_in(&run, &bpf_a, &state_a).expect("first daemon");
        assert!(state_a.join(STATE_LOCK).exists());
        assert!(!bpf_a.exists(), "the bpffs folder is not touched");
        let me = format!("pid {}", std::process::id());
        // Same datapath, its own state folder (and socket): refused on the datapath.
        let e = DaemonLocks::acquire_in(&run, &bpf_a, &state_b).expect_err("same datapath");
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("the datapath pinned under {}", bpf_a.display()))
                && msg.contains(&me),
            "{msg}"
        );
        // Its own datapath, the same state folder: refused on the state, and the datapath
        // lock it took on the way is let go.
        let e = DaemonLocks::acquire_in(&run, &bpf_b, &state_a).expect_err("same state");
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("the state folder {}", state_a.display())) && msg.contains(&me),
            "{msg}"
        );
        let other = DaemonLocks::acquire_in(&run, &bpf_b, &state_b).expect("nothing shared");
        drop((first, other));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stale_file_left_by_a_dead_holder_does_not_block() {
        let dir = tempdir("stale");
        let path = dir.join("daemon.lock");
        fs::write(&path, "999999 daemon\n").expect("stale file");
        let l = Lock::acquire(&path, "x", Role::Daemon).expect("a file without a lock is free");
        assert_eq!(
            fs::read_to_string(&path).expect("lock file"),
            format!("{} daemon\n", std::process::id())
        );
        drop(l);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn datapath_lock_names_are_one_per_bpffs_folder() {
        let run = Path::new("/run/switcher");
        assert_eq!(
            datapath_lock_path(run, Path::new("/sys/fs/bpf/switcher")),
            run.join("datapath-sys-fs-bpf-switcher.lock")
        );
        // The same folder written differently is the same lock ...
        assert_eq!(
            datapath_lock_path(run, Path::new("/sys/fs/bpf/switcher/")),
            datapath_lock_path(run, Path::new("/sys//fs/bpf/./switcher"))
        );
        // ... and different folders never share one.
        assert_eq!(
            escape_path(Path::new("/sys/fs/bpf/switcher-lab")),
            "sys-fs-bpf-switcher\\x2dlab"
        );
        assert_ne!(
            escape_path(Path::new("/a-b")),
            escape_path(Path::new("/a/b"))
        );
        assert_eq!(escape_path(Path::new("/.hidden x")), "\\x2ehidden\\x20x");
        assert_eq!(escape_path(Path::new("/")), "-");
    }

    #[test]
    fn holder_lines_parse() {
        assert_eq!(
            parse_holder("42 daemon\n"),
            Some(Holder {
                pid: 42,
                role: "daemon".into()
            })
        );
        assert_eq!(parse_holder(""), None);
        assert_eq!(parse_holder("x daemon"), None);
    }
}
