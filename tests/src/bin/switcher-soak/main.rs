//! `cargo xtask soak --minutes N [--seed S]`: the lab with the daemon (`--keep-attached`, as
//! the systemd unit runs it) under continuous UDP and TCP syslog traffic from real clients
//! (log-sender streams, an rsyslog forwarder, `logger`) for N minutes, while a seeded random
//! schedule (`plan`) flips, deploys and promotes (validation on), rolls back, aborts,
//! reloads the config (valid, and deliberately bad), kills the daemon with SIGKILL and
//! restarts it, restarts it with SIGTERM, floods tcp4 with SYNs and opens new connections.
//!
//! At the end: no line lost or duplicated in any stream across both colours, no TCP stream
//! moved off the colour it was established on, no sender saw an error or a reset, the
//! daemon's RSS and open descriptors flat per incarnation (`usage`). It prints a report and
//! exits non-zero on any violation, printing the seed that reproduces the schedule.
//!
//! Legitimately allowed, and so not violations: UDP lines sent while the daemon is down still
//! arrive (the datapath stays attached) at whichever colour is active; a TCP connection
//! established before a flip stays on its colour; a rollback moves UDP senders with affinity
//! at once; deploys, rollbacks and aborts the product refuses by its rules (`ops`); a
//! validation that rejects a candidate.

mod checks;
mod cli;
mod clients;
mod config;
mod counters;
mod flood;
mod ops;
mod plan;
mod report;
mod sinks;
mod traffic;
mod usage;

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use switcher_tests::{
    lab::{self, Host},
    rig::{self, OnStop, Rig},
    services::STANDARD_CHECKS,
};

use crate::{
    clients::{Logger, LoggerRun, LOGGER_TCP, LOGGER_UDP},
    config::Configs,
    counters::Counters,
    ops::{Outcome, World},
    plan::Plan,
    report::{Record, Report},
    sinks::Tally,
    traffic::{Stream, Traffic},
    usage::Usage,
};

/// No operation starts this close to the end of the traffic, so each one runs under it.
const OPS_MARGIN: Duration = Duration::from_secs(8);
/// After the senders finished, how long the sinks may take to show every line ...
const SETTLE: Duration = Duration::from_secs(30);
/// ... while lines still arrive: the sinks flush every 100 ms.
const QUIET: Duration = Duration::from_secs(3);

#[derive(Parser)]
#[command(
    name = "switcher-soak",
    about = "The switcher under live syslog traffic and a random schedule of operations"
)]
struct Args {
    /// How long the traffic and the operations run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=720))]
    minutes: u64,
    /// The schedule's seed (default: from the clock). Printed either way.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("soak: seed {seed}, {} minutes", args.minutes);
    match run(&args, seed) {
        Ok(violations) if violations.is_empty() => {
            println!("soak: PASS (seed {seed})");
            ExitCode::SUCCESS
        }
        Ok(violations) => {
            println!(
                "soak: FAIL, {} violation(s) (seed {seed}; `cargo xtask soak --minutes {} --seed {seed}`)",
                violations.len(),
                args.minutes
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: error: {e:#} (seed {seed})");
            ExitCode::FAILURE
        }
    }
}

/// Brings the rig up, soaks, tears down: the violations (teardown problems included).
fn run(args: &Args, seed: u64) -> Result<Vec<String>> {
    lab::require_root()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    println!("soak: bringing up the lab (waits while another lab runs)");
    let mut rig = Rig::up_with(
        "soak",
        &rig::standard_services("redirect", STANDARD_CHECKS),
        OnStop::KeepAttached,
    )?;
    let result = soak(&mut rig, args, seed, &stop);
    let down = rig.down();
    let mut violations = result?;
    if let Err(e) = down {
        println!("soak: VIOLATION at teardown: {e:#}");
        violations.push(format!("teardown: {e:#}"));
    }
    Ok(violations)
}

fn soak(rig: &mut Rig, args: &Args, seed: u64, stop: &AtomicBool) -> Result<Vec<String>> {
    let seconds = args.minutes * 60;
    let configs = Configs::new(
        std::fs::read_to_string(&rig.config)
            .with_context(|| format!("reading {}", rig.config.display()))?,
    );
    let flood_conf = rig.dir.join("synflood.trafgen");
    flood::write_config(&rig.lab, &flood_conf)?;
    let (_forwarder, local) = clients::start_forwarder(rig, &rig.dir.join("forwarder"))?;
    let counters_before = Counters::read(&rig.lab)?;

    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    let (tally, tally_thread) = Tally::start(rig.sink_file(Host::Blue), rig.sink_file(Host::Green));
    let (usage, usage_thread) = Usage::start(t0);
    usage.started(rig.daemon().context("the rig's daemon")?.pid());
    let mut traffic = Traffic::default();
    traffic.start_long(rig, &tally, t0, seconds)?;
    traffic.start_via_rsyslog(rig, &tally, t0, local, seconds, clients::RSYSLOG_RATE)?;
    for s in [LOGGER_UDP, LOGGER_TCP] {
        tally.track(s);
    }
    let logger_t0 = t0.elapsed();
    let logger = Logger::start(rig.lab.ns(Host::Client), end);
    // Every long-lived stream delivers (its TCP connection is established at blue) before the
    // first operation.
    for s in &traffic.streams {
        traffic::wait_lines(&tally, &s.name, 5, Duration::from_secs(20))
            .context("the traffic before the first operation")?;
    }
    println!(
        "soak: traffic flowing ({} streams); operations for {} s (daemon replacements in the first {:.0}%)",
        traffic.streams.len() + 2,
        seconds.saturating_sub(OPS_MARGIN.as_secs()),
        plan::STEADY_FROM * 100.0
    );

    let mut records = Vec::new();
    let mut violations = Vec::new();
    let fatal = {
        let mut world = World::new(
            rig,
            &tally,
            &usage,
            &mut traffic,
            configs,
            flood_conf,
            t0,
            end,
        );
        schedule(&mut world, seed, seconds, stop, &mut records)
    };
    for r in &records {
        if let Outcome::Violation(v) = &r.outcome {
            violations.push(format!("{} at {:.1} s: {v}", r.op, r.at.as_secs_f64()));
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    if let Err(e) = &fatal {
        violations.push(format!("the soak could not go on: {e:#}"));
    }
    if interrupted || fatal.is_err() {
        // No point waiting for the traffic: stop it, report what happened.
        for s in &traffic.senders {
            let _ = s.proc.stop();
        }
        if interrupted {
            violations.push("interrupted".into());
        }
    }

    // The senders end by themselves (count, time); then the sinks catch up.
    println!("soak: operations over; waiting for the senders to finish");
    let wait_until = end + traffic::SENDER_SLACK + Duration::from_secs(10);
    for s in &traffic.senders {
        let left = wait_until.saturating_duration_since(Instant::now());
        s.proc.wait_timeout(left)?;
    }
    let logged = logger.finish()?;
    let mut specs: Vec<Stream> = traffic.streams.clone();
    specs.extend(logged.streams(logger_t0));
    if !interrupted {
        settle(&tally, &specs, &logged)?;
    }
    tally.stop();
    let _ = tally_thread.join();
    tally.read_new()?;
    if let Some(e) = tally.error() {
        violations.push(format!("reading the sinks' files: {e}"));
    }

    let counters_after = Counters::read(&rig.lab)?;
    let mut results: Vec<_> = specs
        .iter()
        .map(|s| checks::check_stream(s, &tally.received(&s.name), &logged.failed(&s.name)))
        .collect();
    let loss_notes = checks::attribute_udp_loss(
        &mut results,
        counters_after.client_udp_drops(&counters_before),
    );
    if !interrupted && fatal.is_ok() {
        for r in &results {
            violations.extend(r.problems());
        }
        for s in &traffic.senders {
            violations.extend(checks::check_sender(s));
        }
    }
    for (stream, seq, why) in logged.failures.iter().take(10) {
        violations.push(format!("logger {stream} seq {seq}: {why}"));
    }
    if logged.failures.len() > 10 {
        violations.push(format!(
            "... {} logger calls failed in all",
            logged.failures.len()
        ));
    }

    let (counters, problems) = counters_after.since(&counters_before);
    violations.extend(problems);

    // The daemon must still run: then its usage.
    match rig.daemon().map(|p| p.try_wait()) {
        Some(Ok(None)) => {}
        other => violations.push(format!("the daemon is not running at the end: {other:?}")),
    }
    usage.stop();
    let _ = usage_thread.join();
    let now = t0.elapsed();
    let incarnations = usage.incarnations();
    let verdicts: Vec<_> = incarnations.iter().map(|i| usage::judge(i, now)).collect();
    for v in &verdicts {
        violations.extend(v.problems.iter().cloned());
    }
    if !verdicts.iter().any(|v| v.judged) && !interrupted && fatal.is_ok() {
        violations.push(
            "no daemon incarnation lived long enough to judge its RSS and descriptors".into(),
        );
    }
    for e in usage.errors().iter().take(5) {
        println!("soak: note: sampling the daemon: {e}");
    }

    print!(
        "{}",
        Report {
            seed,
            minutes: args.minutes,
            ran: t0.elapsed(),
            records: &records,
            streams: &results,
            stream_specs: &specs,
            incarnations: &incarnations,
            verdicts: &verdicts,
            counters: &counters,
            loss_notes: &loss_notes,
            violations: &violations,
        }
        .render()
    );
    Ok(violations)
}

/// After the senders are done: waits until every line is in, or nothing more arrived for
/// QUIET (what is still missing then is lost), at most SETTLE.
fn settle(tally: &Tally, specs: &[Stream], logged: &LoggerRun) -> Result<()> {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let complete = || {
        specs.iter().all(|s| {
            let (b, g) = tally.counts(&s.name);
            (b + g) as u64 + logged.failed(&s.name).len() as u64 >= s.count
        })
    };
    let until = Instant::now() + SETTLE;
    let (mut seen, mut changed) = (0, Instant::now());
    while Instant::now() < until && changed.elapsed() < QUIET {
        tally.read_new()?;
        if complete() {
            break;
        }
        let now = tally.total(&names);
        if now != seen {
            (seen, changed) = (now, Instant::now());
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Runs the schedule until OPS_MARGIN before the end of the traffic (or a stop signal);
/// each operation is printed as it completes. Err: the soak cannot go on.
fn schedule(
    world: &mut World<'_>,
    seed: u64,
    seconds: u64,
    stop: &AtomicBool,
    records: &mut Vec<Record>,
) -> Result<()> {
    let t0 = world.t0;
    let ops_until = world.end.checked_sub(OPS_MARGIN).unwrap_or(t0);
    let steady_at = t0 + Duration::from_secs_f64(seconds as f64 * plan::STEADY_FROM);
    let mut plan = Plan::new(seed);
    loop {
        let step = plan.next(Instant::now() >= steady_at);
        let wake = Instant::now() + step.pause;
        while Instant::now() < wake.min(ops_until) && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= ops_until {
            return Ok(());
        }
        let at = t0.elapsed();
        let started = Instant::now();
        let result = world.run(&step.op);
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(e) => Outcome::Violation(format!("{e:#}")),
        };
        let record = Record {
            at,
            took: started.elapsed(),
            op: step.op.to_string(),
            kind: step.op.kind(),
            outcome,
        };
        println!("{}", record.line());
        records.push(record);
        result?;
    }
}
