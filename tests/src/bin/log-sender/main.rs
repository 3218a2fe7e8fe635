//! Bounded load generator for the switcher lab: sends numbered syslog lines
//! (`stream=NAME seq=N`) over UDP or TCP at a paced rate, so tests can check
//! exactly which lines reached which backend across a blue/green flip.
//! Every run is bounded by --count and --max-seconds. Prints `sent N` each
//! second and a final JSON summary; exits 2 if any TCP connection failed.
//!
//! Deliberately independent of the daemon's load probe (`switcher_userspace::probe::load`, in
//! `switcher-userspace/src/probe/load.rs` or the folder `load/`): no shared code, its own line
//! format and pacing, so tests can judge the daemon and the sinks against what this sender
//! reports (an oracle built from the code under test would prove little). Keep it that way.

mod gelf;
mod line;
mod plan;
mod progress;
mod tcp;
mod udp;

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::{
    line::Framing,
    plan::Plan,
    progress::{print_progress, Progress},
    tcp::run_tcp_connection,
    udp::run_udp,
};

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// How long workers may overrun --max-seconds (closing, joining) before the
/// main thread gives up on them.
pub(crate) const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
    /// GELF messages over UDP, chunked (see --gelf-chunks).
    Gelf,
}

#[derive(Parser, Debug)]
#[command(name = "log-sender", about = "Bounded syslog load generator (lab)")]
struct Args {
    /// Destination address, IPv4 or [IPv6]:port.
    #[arg(long, value_name = "ADDR:PORT")]
    target: SocketAddr,
    /// Transport.
    #[arg(long, value_enum)]
    proto: Proto,
    /// Number of lines to send.
    #[arg(long, value_name = "N")]
    count: u64,
    /// Lines per second over all connections; 0 = as fast as possible.
    #[arg(long, value_name = "PER_SEC")]
    rate: f64,
    /// Stream name put in every line (suffixed -cK per TCP connection when
    /// there are several).
    #[arg(long, value_name = "NAME", default_value = "s")]
    stream: String,
    /// First sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    start: u64,
    /// Minimum line size (without framing), padded with 'x'.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    size: usize,
    /// TCP framing (ignored for UDP).
    #[arg(long, value_enum, default_value_t = Framing::Octet)]
    framing: Framing,
    /// TCP connections; lines are spread round-robin across them (UDP uses one socket).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
    /// TCP: keep the connection(s) open this long after the last line.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    hold_ms: u64,
    /// Hard bound on the whole run (sending and holding).
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_seconds: u64,
    /// GELF: chunks per message (1 = unchunked, up to 128).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    gelf_chunks: u8,
    /// GELF: how messages are compressed.
    #[arg(long, value_enum, default_value_t = gelf::Compression::Zlib)]
    gelf_compression: gelf::Compression,
    /// Also write the JSON summary line to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

fn build_plan(args: &Args) -> Result<Plan> {
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a finite number >= 0, got {}", args.rate);
    }
    if args.start.checked_add(args.count).is_none() {
        bail!("--start + --count overflows");
    }
    if args.proto != Proto::Tcp && args.size > MAX_UDP_PAYLOAD {
        bail!(
            "--size {} exceeds the largest UDP payload ({MAX_UDP_PAYLOAD})",
            args.size
        );
    }
    let t0 = Instant::now();
    let deadline = t0
        .checked_add(Duration::from_secs(args.max_seconds))
        .context("--max-seconds too large")?;
    Ok(Plan {
        target: args.target,
        first_seq: args.start,
        count: args.count,
        interval: if args.rate > 0.0 {
            1.0 / args.rate
        } else {
            0.0
        },
        stream: args.stream.clone(),
        size: args.size,
        framing: args.framing,
        connections: match args.proto {
            Proto::Udp | Proto::Gelf => 1,
            Proto::Tcp => args.connections,
        },
        hold: Duration::from_millis(args.hold_ms),
        t0,
        deadline,
    })
}

fn run(args: Args) -> Result<ExitCode> {
    let plan = Arc::new(build_plan(&args)?);
    let progress = Arc::new(Progress::new());

    let (done_tx, done_rx) = mpsc::channel::<()>();
    for k in 0..plan.connections {
        let (plan, progress, done) = (plan.clone(), progress.clone(), done_tx.clone());
        thread::Builder::new()
            .name(format!("conn-{k}"))
            .spawn(move || {
                let res = match args.proto {
                    Proto::Udp => run_udp(&plan, &progress, None),
                    Proto::Gelf => run_udp(
                        &plan,
                        &progress,
                        Some(gelf::GelfShape {
                            chunks: args.gelf_chunks,
                            compression: args.gelf_compression,
                        }),
                    ),
                    Proto::Tcp => run_tcp_connection(&plan, &progress, k).inspect_err(|_| {
                        progress.tcp_error();
                    }),
                };
                if let Err(e) = res {
                    eprintln!("log-sender: connection {k}: {e:#}");
                }
                let _ = done.send(());
            })
            .context("spawning worker thread")?;
    }
    drop(done_tx);

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let printer = {
        let progress = progress.clone();
        thread::spawn(move || print_progress(&progress, &stop_rx))
    };

    // Hard bound: workers that overrun the deadline are abandoned (and
    // counted as failed) rather than waited for.
    let give_up = plan.deadline + GRACE;
    let mut finished = 0;
    while finished < plan.connections {
        let left = give_up.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(()) => finished += 1,
            Err(_) => break,
        }
    }
    let stuck = plan.connections - finished;
    if stuck > 0 {
        eprintln!("log-sender: {stuck} connection(s) still busy at the time bound; giving up");
        for _ in 0..stuck {
            progress.tcp_error();
        }
        progress.send_loop_done(plan.t0);
    }

    let _ = stop_tx.send(());
    if printer.join().is_err() {
        eprintln!("log-sender: progress thread panicked");
    }

    let json = serde_json::to_string(&progress.summary()).context("encoding summary")?;
    let mut out = io::stdout().lock();
    writeln!(out, "{json}").context("writing summary")?;
    out.flush().context("writing summary")?;
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    Ok(if progress.tcp_failed.load(Ordering::Relaxed) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error, which would read as a TCP failure here.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("log-sender: {e:#}");
            ExitCode::FAILURE
        }
    }
}
