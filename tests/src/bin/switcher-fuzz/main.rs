//! `cargo xtask fuzz`: packets through the real datapath (BPF_PROG_TEST_RUN of the XDP
//! ingress and the TC egress program, loaded exactly as the daemon loads them), judged one by
//! one by an independent oracle (etherparse and our own RFC 1071 code, nothing from
//! switcher-common): every output is the input untouched, or exactly the input with the
//! destination (ingress) or the source (egress) translated and its checksums patched right.
//! Then the datapath's counters must add up to what was run.
//!
//! Deterministic for a seed: the generator and mutators draw from one seeded SplitMix64, and
//! nothing but the datapath's own outputs feeds back (which packets egress answers). Runs in a
//! network namespace of its own: nothing is sent anywhere, and the redirect mode's FIB lookup
//! finds no route, so a rewritten packet is always passed to the kernel.
//!
//! Exit status: 0 when every packet was judged right and the counters add up; 1 on a
//! violation (printed with the seed, the packet's index, both packets in hex and the command
//! that reproduces it); 2 when the fuzz could not run.
//!
//! Modules: `world` (the services and their pools), `corpus` (seed packets), `mutate`,
//! `wire` (packet bytes), `checksum` (RFC 1071), `oracle` (the judge) and `selftest` (the
//! judge judged, before every run), `report`, `rng`.

mod checksum;
mod corpus;
mod mutate;
mod oracle;
mod report;
mod rng;
mod selftest;
mod wire;
mod world;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;
use switcher::domain::Color;
use switcher_common::Reason;
use switcher_tests::loaded::{LoadedDatapath, Program};

use corpus::{Corpus, Dir};
use oracle::{Oracle, Outcome, Verdict};
use report::{Judged, Tally};
use world::World;

#[derive(Parser)]
#[command(
    name = "switcher-fuzz",
    about = "Fuzzes the datapath through BPF_PROG_TEST_RUN"
)]
struct Args {
    /// Packets to run (ingress and egress together).
    #[arg(long, default_value_t = 100_000)]
    packets: u64,
    /// Seed of the packet sequence; default: from the clock (printed, to reproduce a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this long even if fewer packets ran (the run still passes if all was right).
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// Share of packets that go through egress (replies, ICMP errors), in percent.
    #[arg(long, default_value_t = 25)]
    egress_percent: u32,
    /// Share of packets mutated before they run, in percent.
    #[arg(long, default_value_t = 60)]
    mutate_percent: u32,
    /// Count the known datapath issues (listed, with a reproducer each) without failing. All
    /// five found so far are fixed, so by default any of them fails the run as a regression.
    #[arg(long)]
    allow_known: bool,
    /// Instead of fuzzing, run these packets in order (`ingress:HEX` or `egress:HEX`, the
    /// format violations print) through a fresh datapath and judge each.
    #[arg(long, value_name = "DIR:HEX")]
    replay: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("switcher-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs hand-picked packets in order and prints what the datapath and the oracle made of each.
fn replay(dp: &mut LoadedDatapath, world: &World, packets: &[String]) -> Result<bool> {
    let mut oracle = Oracle::new(world);
    let mut all_right = true;
    for (i, arg) in packets.iter().enumerate() {
        let (dir, hex) = arg
            .split_once(':')
            .with_context(|| format!("--replay {arg}: want ingress:HEX or egress:HEX"))?;
        let pkt = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .with_context(|| format!("--replay {arg}: not hex"))?;
        let (program, ingress) = match dir {
            "ingress" => (Program::Ingress, true),
            "egress" => (Program::Egress, false),
            _ => bail!("--replay {arg}: the direction is ingress or egress"),
        };
        let r = dp.run(program, &pkt, 0)?;
        let verdict = if ingress {
            oracle.ingress(&pkt, &r.out, r.action)
        } else {
            oracle.egress(&pkt, &r.out, r.action)
        };
        all_right &= matches!(verdict, Verdict::Ok(_));
        println!("packet {i} ({dir}, action {}): {verdict:?}", r.action);
        println!("  input  {}", report::hex(&pkt));
        println!("  output {}", report::hex(&r.out));
    }
    Ok(all_right)
}

/// BPF_PROG_TEST_RUN of a TC program (Linux 6.18 at least) refuses with EINVAL a frame whose
/// ethertype says IPv4 or IPv6 but which is shorter than that header: such a packet never
/// reaches the program, so it is counted as refused and not judged.
fn tc_test_run_refuses(p: &[u8]) -> bool {
    match p.get(12..14) {
        Some([0x08, 0x00]) => p.len() < 14 + 20,
        Some([0x86, 0xdd]) => p.len() < 14 + 40,
        _ => false,
    }
}

/// Reasons a packet's ingress run ends with exactly once (the others are counted besides).
fn ingress_terminal(r: Reason) -> bool {
    !matches!(
        r,
        Reason::TcpPinMiss
            | Reason::GelfChunkFollowed
            | Reason::TableFull
            | Reason::EgressReversed
            | Reason::EgressMalformed
            | Reason::EgressUnsteered
            | Reason::EgressIcmp
    )
}

fn run(args: &Args) -> Result<bool> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (loads BPF programs, makes a network namespace)"
    );
    ensure!(
        args.egress_percent <= 100 && args.mutate_percent <= 100,
        "percentages up to 100"
    );
    // Before anything else: the FIB lookups of redirect-mode services then see an empty
    // namespace, and nothing this process does can reach a real network.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    selftest::run().context("the oracle's self-test")?;

    let mut dp = LoadedDatapath::load("fuzz")?;
    let world = World::configure(&mut dp)?;
    println!(
        "switcher-fuzz: seed {seed}, {} packets (at most {} s), {}% egress, {}% mutated",
        args.packets, args.max_seconds, args.egress_percent, args.mutate_percent
    );
    for s in &world.services {
        println!(
            "  {:<14} {}:{} {}{} active {}: {:?}",
            s.name,
            s.vip,
            s.port,
            if s.tcp { "tcp" } else { "udp" },
            if s.affinity { " (affinity)" } else { "" },
            s.active,
            s.active_members()
        );
    }
    if !args.replay.is_empty() {
        return replay(&mut dp, &world, &args.replay);
    }
    let reproduce =
        format!(
        "cargo xtask fuzz --packets {{n}} --seed {seed} --egress-percent {} --mutate-percent {}{}",
        args.egress_percent,
        args.mutate_percent,
        if args.allow_known { " --allow-known" } else { "" }
    );

    let mut corpus = Corpus::new(&world, seed, args.egress_percent);
    let mut oracle = Oracle::new(&world);
    let mut tally = Tally::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.max_seconds);
    let mut next_progress = start + Duration::from_secs(10);
    let mut previous: Vec<u8> = Vec::new();
    let mut stopped_early = false;
    // `index` counts every generated packet (the sequence a seed names); `--packets` counts
    // those that ran.
    let mut index: u64 = 0;
    while tally.packets() < args.packets {
        index += 1;
        if index.is_multiple_of(1024) {
            let now = Instant::now();
            if now >= deadline {
                stopped_early = true;
                break;
            }
            if now >= next_progress {
                report::progress(&tally, now - start);
                next_progress = now + Duration::from_secs(10);
            }
        }
        let case = corpus.next_case();
        let mut pkt = case.bytes;
        let mutation = if corpus.rng().chance(args.mutate_percent) {
            Some(mutate::mutate(corpus.rng(), &world, &mut pkt, &previous))
        } else {
            pkt.truncate(mutate::MAX_FRAME);
            None
        };
        let program = match case.dir {
            Dir::Ingress => Program::Ingress,
            Dir::Egress if tc_test_run_refuses(&pkt) => {
                tally.refused += 1;
                continue;
            }
            Dir::Egress => Program::Egress,
        };
        let r = dp.run(program, &pkt, 0).with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN of packet {index} ({:?}, {} bytes): {}",
                case.dir,
                pkt.len(),
                report::hex(&pkt)
            )
        })?;
        let verdict = match case.dir {
            Dir::Ingress => oracle.ingress(&pkt, &r.out, r.action),
            Dir::Egress => oracle.egress(&pkt, &r.out, r.action),
        };
        let judged = match verdict {
            Verdict::Ok(o) => Ok(o),
            Verdict::Known(issue) if args.allow_known => {
                tally.known(issue, index, &pkt, &r.out);
                Ok(Outcome::Rewritten)
            }
            Verdict::Known(issue) => Err(format!(
                "known datapath issue, fixed before: a regression: {issue}"
            )),
            Verdict::Violation(why) => Err(why),
        };
        let outcome = match judged {
            Ok(o) => o,
            Err(why) => {
                report::violation(
                    seed,
                    index,
                    &reproduce.replace("{n}", &(tally.packets() + 1).to_string()),
                    case.dir,
                    case.kind,
                    mutation,
                    &pkt,
                    &r.out,
                    &why,
                );
                return Ok(false);
            }
        };
        let rewritten = outcome == Outcome::Rewritten;
        if rewritten && case.dir == Dir::Ingress {
            corpus.observe(&r.out);
        }
        tally.record(case.dir, case.kind, mutation, rewritten);
        previous = pkt;
    }
    let elapsed = start.elapsed();

    let reasons: Vec<(Reason, u64)> = dp.dp()?.reader().reasons()?;
    let counters_ok = check_counters(&dp, &world, &tally, &reasons)?;
    let labels: Vec<(&'static str, u64)> = reasons.iter().map(|(r, n)| (r.label(), *n)).collect();
    report::summary(
        seed,
        &tally,
        elapsed,
        &labels,
        &Judged {
            must_rewrite: oracle.must_rewrite,
            may_rewrite: oracle.may_rewrite,
            must_pass: oracle.must_pass,
        },
        stopped_early,
    );
    if let Err(e) = counters_ok {
        eprintln!("VIOLATION of the counters (seed {seed}): {e}");
        return Ok(false);
    }
    if tally.packets() > 10_000 && (tally.ingress_rewritten == 0 || oracle.must_rewrite == 0) {
        bail!("nothing was rewritten: the fuzz tested nothing");
    }
    println!("fuzz passed: {} packets, no violation", tally.packets());
    Ok(true)
}

/// The datapath's counters against what ran: every ingress packet ends with exactly one
/// reason, the steered ones with a forwarding reason, each counted for its service's active
/// colour (never the idle one); egress counts a translation per translated packet.
fn check_counters(
    dp: &LoadedDatapath,
    world: &World,
    t: &Tally,
    reasons: &[(Reason, u64)],
) -> Result<Result<(), String>> {
    let n = |r: Reason| reasons.iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| *n);
    let terminal: u64 = reasons
        .iter()
        .filter(|(r, _)| ingress_terminal(*r))
        .map(|(_, n)| n)
        .sum();
    let steered = n(Reason::Redirected)
        + n(Reason::FibFallback)
        + n(Reason::PassMode)
        + n(Reason::FragFollowed);
    let translated = n(Reason::EgressReversed) + n(Reason::EgressIcmp);
    let mut packets = 0;
    let mut pin_misses = 0;
    let mut errors = Vec::new();
    for s in &world.services {
        for c in Color::BOTH {
            let cc = dp.counters(s.id, c)?;
            if c == s.active {
                packets += cc.packets;
                pin_misses += cc.pin_misses;
            } else if cc.packets != 0 {
                errors.push(format!(
                    "{} counted {} packets for idle {c}",
                    s.name, cc.packets
                ));
            }
        }
    }
    if terminal != t.ingress {
        errors.push(format!(
            "ingress reasons sum to {terminal}, {} packets ran",
            t.ingress
        ));
    }
    if steered != t.ingress_rewritten {
        errors.push(format!(
            "forwarding reasons (redirected, fib_fallback, pass_mode, frag_followed) sum to \
             {steered}, {} packets were rewritten",
            t.ingress_rewritten
        ));
    }
    if packets != t.ingress_rewritten {
        errors.push(format!(
            "colour counters hold {packets} packets, {} were rewritten",
            t.ingress_rewritten
        ));
    }
    if pin_misses != n(Reason::TcpPinMiss) {
        errors.push(format!(
            "colour counters hold {pin_misses} pin misses, tcp_pin_miss says {}",
            n(Reason::TcpPinMiss)
        ));
    }
    if translated != t.egress_rewritten {
        errors.push(format!(
            "egress_reversed + egress_icmp = {translated}, {} packets were translated",
            t.egress_rewritten
        ));
    }
    let egress_counted = translated + n(Reason::EgressMalformed) + n(Reason::EgressUnsteered);
    if egress_counted > t.egress {
        errors.push(format!(
            "egress reasons sum to {egress_counted}, only {} packets ran",
            t.egress
        ));
    }
    Ok(if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    })
}
