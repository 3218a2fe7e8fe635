//! The process supervisor: [`Proc`], a process started in the lab whose stdout and stderr are
//! drained into bounded buffers, and stopping processes (SIGTERM, then SIGKILL).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::command::describe;
#[cfg(doc)]
use super::Lab;

/// How long [`Lab::down`] waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Lines of stdout/stderr kept per process; older lines are dropped so chatty processes don't
/// grow memory without bound.
const KEEP_LINES: usize = 10_000;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make teardown panic as well.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Streams {
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
    /// Lines ever read from stdout, including dropped ones.
    stdout_total: u64,
    stdout_closed: bool,
}

/// What a process wrote, shared by the threads that pump its pipes and its handle.
#[derive(Default)]
struct Output {
    streams: Mutex<Streams>,
    changed: Condvar,
}

struct ProcInner {
    label: String,
    pid: u32,
    child: Mutex<Child>,
    shared: Arc<Output>,
}

/// A process started by a [`Lab`]. Cheap to clone; the lab keeps a clone and stops the process
/// on [`Lab::down`]. Its stdout and stderr are drained continuously into bounded buffers.
#[derive(Clone)]
pub struct Proc(Arc<ProcInner>);

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.0.pid)
            .field("label", &self.0.label)
            .finish()
    }
}

impl Proc {
    pub(super) fn start(mut cmd: Command) -> Result<Proc> {
        let label = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{label}`"))?;
        let shared = Arc::new(Output::default());
        if let Some(out) = child.stdout.take() {
            pump(out, Arc::clone(&shared), true);
        } else {
            lock(&shared.streams).stdout_closed = true;
        }
        if let Some(err) = child.stderr.take() {
            pump(err, Arc::clone(&shared), false);
        }
        Ok(Proc(Arc::new(ProcInner {
            label,
            pid: child.id(),
            child: Mutex::new(child),
            shared,
        })))
    }

    /// The process id (of the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The stdout lines kept so far (the last 10 000).
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.0.shared.streams)
            .stdout
            .iter()
            .cloned()
            .collect()
    }

    /// The stderr lines kept so far (the last 10 000).
    pub fn stderr_lines(&self) -> Vec<String> {
        lock(&self.0.shared.streams)
            .stderr
            .iter()
            .cloned()
            .collect()
    }

    /// The last `n` stderr lines joined, for error messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let streams = lock(&self.0.shared.streams);
        let skip = streams.stderr.len().saturating_sub(n);
        streams
            .stderr
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a kept stdout line satisfies `pred` and returns it. Fails when stdout closes
    /// (the process exited) or on timeout, with the stderr tail in the message.
    pub fn wait_for_stdout(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let shared = &self.0.shared;
        let mut checked = 0u64;
        let mut streams = lock(&shared.streams);
        loop {
            let total = streams.stdout_total;
            let first = total - streams.stdout.len() as u64;
            for abs in checked.max(first)..total {
                if let Some(line) = streams.stdout.get((abs - first) as usize) {
                    if pred(line) {
                        return Ok(line.clone());
                    }
                }
            }
            checked = total;
            if streams.stdout_closed {
                drop(streams);
                bail!(
                    "`{}` closed stdout (exited: {:?}) before the expected line; stderr:\n{}",
                    self.0.label,
                    self.try_wait().ok().flatten(),
                    self.stderr_tail(20)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(streams);
                bail!(
                    "timed out after {timeout:?} waiting for a line from `{}`; stderr:\n{}",
                    self.0.label,
                    self.stderr_tail(20)
                );
            }
            streams = shared
                .changed
                .wait_timeout(streams, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The exit status if the process has exited (never blocks).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        lock(&self.0.child)
            .try_wait()
            .with_context(|| format!("waiting for `{}`", self.0.label))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after 2 s; returns the exit status. Idempotent.
    pub fn stop(&self) -> Result<ExitStatus> {
        stop_all(std::slice::from_ref(self))?
            .pop()
            .context("stop_all returned no status")
    }

    fn terminate(&self) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.0.pid).context("pid out of range")?;
        // The child is not reaped yet, so its pid cannot have been reused.
        match kill(Pid::from_raw(pid), Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("SIGTERM to `{}`", self.0.label)),
        }
    }

    /// SIGKILL at once (no grace) and reap; the status if it had already exited.
    pub(super) fn kill_and_wait(&self) -> Result<ExitStatus> {
        let mut child = lock(&self.0.child);
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // Already exiting processes make kill() fail harmlessly; wait() below settles it.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("reaping `{}`", self.0.label))
    }
}

/// Stops all `procs` in parallel: SIGTERM to all, a shared grace period, then SIGKILL.
pub(super) fn stop_all(procs: &[Proc]) -> Result<Vec<ExitStatus>> {
    for p in procs {
        p.terminate()?;
    }
    let deadline = Instant::now() + TERM_GRACE;
    let mut statuses = Vec::with_capacity(procs.len());
    for p in procs {
        let left = deadline.saturating_duration_since(Instant::now());
        statuses.push(match p.wait_timeout(left)? {
            Some(status) => status,
            None => p.kill_and_wait()?,
        });
    }
    Ok(statuses)
}

/// Drains one pipe into the shared buffers, line by line.
fn pump(pipe: impl Read + Send + 'static, shared: Arc<Output>, is_stdout: bool) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    let mut streams = lock(&shared.streams);
                    let queue = if is_stdout {
                        &mut streams.stdout
                    } else {
                        &mut streams.stderr
                    };
                    if queue.len() >= KEEP_LINES {
                        queue.pop_front();
                    }
                    queue.push_back(line);
                    if is_stdout {
                        streams.stdout_total += 1;
                    }
                    shared.changed.notify_all();
                }
            }
        }
        if is_stdout {
            lock(&shared.streams).stdout_closed = true;
            shared.changed.notify_all();
        }
    });
}
