//! Reference log-ingest sink for the switcher lab: the backend that runs as
//! "blue" or "green". It receives syslog over UDP and TCP (RFC 6587 framing),
//! appends every message as one line to an output file, optionally acks each
//! TCP message (latency probes) and serves health, Prometheus metrics and JSON
//! stats over HTTP. Faults can be injected at runtime (`POST /fault`) so the
//! deployment controller's checks can be shown to catch a bad backend: failing
//! health, slow acks, errors reported in the metrics.

mod fault;
mod framing;
mod gelf;
mod http;
mod listeners;
mod metrics;
mod writer;

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    fault::{inject_errors, FaultSettings, MAX_ACK_DELAY_MS},
    http::router,
    listeners::{bind_tcp, bind_udp, serve_tcp, serve_udp},
    metrics::SinkState,
    writer::{run_writer, STAMP},
};

/// Target of every log line, the modules' included: events default to their module path, which
/// would put `ingest_sink::http` etc. into the lines and change what `RUST_LOG` filters see.
const LOG_TARGET: &str = "ingest_sink";
/// Batches (one per datagram / TCP read) queued for the writer before
/// receivers wait; large enough to absorb a burst while the disk catches up.
const WRITER_QUEUE: usize = 16 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "ingest-sink",
    about = "Reference log-ingest sink (lab backend)"
)]
struct Args {
    /// Backend name reported in /stats and ingest_info (e.g. blue, green).
    #[arg(long)]
    name: String,
    /// UDP syslog listen address; repeatable, IPv4 or [IPv6]:port.
    #[arg(long, value_name = "ADDR:PORT")]
    udp: Vec<SocketAddr>,
    /// TCP syslog (RFC 6587) listen address; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    tcp: Vec<SocketAddr>,
    /// GELF over UDP (chunked, zlib/gzip/plain) listen address; repeatable. Each message's
    /// short_message is written as a line.
    #[arg(long, value_name = "ADDR:PORT")]
    gelf: Vec<SocketAddr>,
    /// HTTP listen address for /health, /metrics, /stats; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Vec<SocketAddr>,
    /// File every received message is appended to, one per line.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// SO_RCVBUF for the UDP sockets.
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    rcvbuf: usize,
    /// Write "ok\n" back to the TCP peer after every complete message.
    #[arg(long)]
    ack: bool,
    /// Initial delay of every --ack acknowledgement (fault injection; see POST /fault).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=MAX_ACK_DELAY_MS))]
    ack_delay_ms: u64,
    /// Start with /health failing (503) until POST /fault sets health_ok.
    #[arg(long)]
    unhealthy: bool,
    /// Prefix every output line with `t=NS ` (CLOCK_MONOTONIC at receipt, the clock of
    /// bpf_ktime_get_ns and of every process on the host), for arrival-time measurements.
    #[arg(long)]
    stamp: bool,
}

async fn open_out(path: &std::path::Path) -> Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("opening output file {}", path.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    // One readable line (not anyhow's Debug dump with a backtrace) on failure.
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest-sink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // stdout carries only the READY line the lab waits for.
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    STAMP.store(args.stamp, Ordering::Relaxed);
    if args.udp.is_empty() && args.tcp.is_empty() && args.gelf.is_empty() {
        bail!("nothing to receive on: give at least one --udp, --tcp or --gelf address");
    }

    let faults = FaultSettings {
        health_ok: !args.unhealthy,
        ack_delay_ms: args.ack_delay_ms,
        ..FaultSettings::default()
    };
    let shared = Arc::new(SinkState::new(&args.name, faults));
    let out = open_out(&args.out).await?;
    let udp = args
        .udp
        .iter()
        .map(|&addr| Ok((bind_udp(addr, args.rcvbuf)?, addr)))
        .collect::<Result<Vec<_>>>()?;
    let gelf = args
        .gelf
        .iter()
        .map(|&addr| Ok((bind_udp(addr, args.rcvbuf)?, addr)))
        .collect::<Result<Vec<_>>>()?;
    let tcp = args
        .tcp
        .iter()
        .map(|&addr| Ok((bind_tcp(addr, "TCP")?, addr)))
        .collect::<Result<Vec<_>>>()?;
    let http = args
        .http
        .iter()
        .map(|&addr| Ok((bind_tcp(addr, "HTTP")?, addr)))
        .collect::<Result<Vec<_>>>()?;
    // Installed before READY so a SIGTERM sent right after it still flushes.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writer = tokio::spawn(run_writer(out, rx, stop_rx, shared.clone()));
    for (sock, addr) in udp {
        tokio::spawn(serve_udp(sock, addr, tx.clone()));
    }
    for (sock, addr) in gelf {
        tokio::spawn(gelf::serve_gelf(sock, addr, shared.clone(), tx.clone()));
    }
    for (listener, addr) in tcp {
        tokio::spawn(serve_tcp(
            listener,
            addr,
            shared.clone(),
            tx.clone(),
            args.ack,
        ));
    }
    drop(tx);
    tokio::spawn(inject_errors(shared.clone()));
    let app = router(shared.clone());
    for (listener, addr) in http {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(%addr, "HTTP server stopped: {e}");
            }
        });
    }

    info!(name = %args.name, out = %args.out.display(), ack = args.ack, ?faults, "listening");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY").context("writing READY")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: flushing and exiting"),
        _ = sigint.recv() => info!("SIGINT: flushing and exiting"),
        res = &mut writer => {
            // The writer only ends early on an I/O error.
            return match res {
                Ok(Ok(())) => bail!("output writer stopped unexpectedly"),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e).context("output writer task failed"),
            };
        }
    }
    // The receiver lives in the writer task, which is still running here.
    let _ = stop_tx.send(true);
    writer.await.context("output writer task failed")??;
    Ok(())
}
