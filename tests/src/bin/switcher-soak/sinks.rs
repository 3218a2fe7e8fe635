//! What the sinks received: a thread follows both output files (blue's and green's) as they
//! grow and keeps, per stream, the sequence numbers each colour got. A long run writes
//! hundreds of MB; re-reading whole files (as `rig::received` does, fine for a test) would
//! load the machine the run measures, so each byte is parsed once.
//!
//! The line format is the tests' (`... stream=NAME seq=N ...`, see `rig::seqs`); lines of
//! other streams (the daemon's load probe, anything else) are ignored.

use std::{
    collections::HashMap,
    fs::File,
    io::{ErrorKind, Read, Seek, SeekFrom},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use switcher_tests::rig::Received;

const POLL: Duration = Duration::from_millis(250);

/// One followed file: where reading stopped, and an unfinished last line.
struct Follow {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    blue: bool,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<String, Received>,
    error: Option<String>,
}

/// Shared with the follower thread.
pub struct Tally {
    inner: Mutex<Inner>,
    stop: AtomicBool,
    files: Mutex<Vec<Follow>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tally {
    /// Follows `blue` and `green` (the sinks' output files) from their start.
    pub fn start(blue: PathBuf, green: PathBuf) -> (Arc<Tally>, thread::JoinHandle<()>) {
        let files = [(blue, true), (green, false)]
            .into_iter()
            .map(|(path, blue)| Follow {
                path,
                offset: 0,
                partial: Vec::new(),
                blue,
            })
            .collect();
        let tally = Arc::new(Tally {
            inner: Mutex::new(Inner::default()),
            stop: AtomicBool::new(false),
            files: Mutex::new(files),
        });
        let t = Arc::clone(&tally);
        let handle = thread::spawn(move || {
            while !t.stop.load(Ordering::Relaxed) {
                if let Err(e) = t.read_new() {
                    lock(&t.inner).error = Some(format!("{e:#}"));
                    return;
                }
                thread::sleep(POLL);
            }
        });
        (tally, handle)
    }

    /// Starts counting `stream` (lines of unknown streams are skipped).
    pub fn track(&self, stream: &str) {
        lock(&self.inner)
            .streams
            .entry(stream.to_string())
            .or_default();
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Reads whatever the files gained since the last read (the thread does this every
    /// 250 ms; call it for an up-to-date view).
    pub fn read_new(&self) -> Result<()> {
        let mut files = lock(&self.files);
        for f in files.iter_mut() {
            let mut file = match File::open(&f.path) {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {}", f.path.display())),
            };
            file.seek(SeekFrom::Start(f.offset))
                .with_context(|| format!("seeking in {}", f.path.display()))?;
            let mut buf = std::mem::take(&mut f.partial);
            let before = buf.len();
            file.read_to_end(&mut buf)
                .with_context(|| format!("reading {}", f.path.display()))?;
            f.offset += (buf.len() - before) as u64;
            let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            f.partial = buf.split_off(complete);
            let mut inner = lock(&self.inner);
            for line in buf.split(|b| *b == b'\n') {
                if let Some((stream, seq)) = parse(line) {
                    if let Some(r) = inner.streams.get_mut(stream) {
                        if f.blue {
                            r.blue.push(seq);
                        } else {
                            r.green.push(seq);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Lines of `stream` at (blue, green) so far.
    pub fn counts(&self, stream: &str) -> (usize, usize) {
        lock(&self.inner)
            .streams
            .get(stream)
            .map_or((0, 0), |r| (r.blue.len(), r.green.len()))
    }

    /// All lines of `streams` so far, both colours.
    pub fn total(&self, streams: &[String]) -> usize {
        let inner = lock(&self.inner);
        streams
            .iter()
            .filter_map(|s| inner.streams.get(s))
            .map(|r| r.blue.len() + r.green.len())
            .sum()
    }

    /// The sequence numbers of `stream` per colour (a copy).
    pub fn received(&self, stream: &str) -> Received {
        lock(&self.inner)
            .streams
            .get(stream)
            .map(|r| Received {
                blue: r.blue.clone(),
                green: r.green.clone(),
            })
            .unwrap_or_default()
    }

    /// Why the follower thread stopped early, if it did.
    pub fn error(&self) -> Option<String> {
        lock(&self.inner).error.clone()
    }
}

/// `(stream, seq)` of a line holding `stream=NAME ` and, after it, `seq=N`.
fn parse(line: &[u8]) -> Option<(&str, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = &line[line.find("stream=")? + "stream=".len()..];
    let (name, rest) = rest.split_once(' ')?;
    let seq = rest
        .split_whitespace()
        .find_map(|t| t.strip_prefix("seq="))?;
    Some((name, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lines_of_every_client() {
        // log-sender, logger (RFC 5424 with structured data), rsyslog's forward format.
        assert_eq!(
            parse(b"<14>1 - lab log-sender - - - stream=u4 seq=17"),
            Some(("u4", 17))
        );
        assert_eq!(
            parse(b"<13>1 2026-01-01T00:00:00Z client root - - [timeQuality tzKnown=\"1\"] stream=lgt seq=3"),
            Some(("lgt", 3))
        );
        assert_eq!(
            parse(b"<14>Jan  1 00:00:00 lab log-sender stream=rf seq=9 xxxx"),
            Some(("rf", 9))
        );
        assert_eq!(parse(b"probe line [switcher@32473 probe=\"1\"] n=5"), None);
        assert_eq!(parse(b"stream=x seq=notanumber"), None);
    }

    #[test]
    fn follows_a_growing_file_line_by_line() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("soak-sinks-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (blue, green) = (dir.join("blue.log"), dir.join("green.log"));
        let (tally, handle) = Tally::start(blue.clone(), green.clone());
        tally.stop();
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("follower panicked"))?;
        tally.track("a");
        std::fs::write(&blue, "x stream=a seq=0\nx stream=a seq=1\nx stream=a se")?;
        std::fs::write(&green, "x stream=b seq=0\nx stream=a seq=1\n")?;
        tally.read_new()?;
        assert_eq!(tally.counts("a"), (2, 1));
        std::fs::write(
            &blue,
            "x stream=a seq=0\nx stream=a seq=1\nx stream=a seq=2\n",
        )?;
        tally.read_new()?;
        let r = tally.received("a");
        assert_eq!((r.blue, r.green), (vec![0, 1, 2], vec![1]));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
