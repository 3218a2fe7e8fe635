//! Carries out the schedule's operations through the real CLI, signals and processes, and
//! says what came of each: done, refused by a product rule the soak expects (a deploy while
//! connections drain on the idle colour, a rollback with nothing to roll back, ...), a
//! candidate rejected by its validation, or a violation (something the README promises did
//! not hold, or a refusal no rule explains).

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use switcher::domain::Color;
use switcher_tests::{
    lab::{BLUE_V4, BLUE_V6, GREEN_V4, GREEN_V6},
    rig::{Rig, TCP_PORT, UDP_PORT},
};

use crate::{
    cli,
    config::{Configs, EXTRA_NAME},
    counters, flood,
    plan::Op,
    sinks::Tally,
    traffic::{self, Expect, Traffic},
    usage::Usage,
};

/// What came of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(String),
    /// A product rule refused it, as expected at that point; the label names the rule.
    Refused(&'static str, String),
    /// The candidate failed its validation (legitimate: e.g. the machine is loaded).
    Rejected(String),
    Skipped(String),
    Violation(String),
}

impl Outcome {
    /// For the log and the report.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Done(s) => format!("done: {s}"),
            Outcome::Refused(rule, e) => format!("refused ({rule}): {e}"),
            Outcome::Rejected(e) => format!("rejected: {e}"),
            Outcome::Skipped(s) => format!("skipped: {s}"),
            Outcome::Violation(v) => format!("VIOLATION: {v}"),
        }
    }
}

/// Everything the operations act on.
pub struct World<'a> {
    pub rig: &'a mut Rig,
    pub tally: &'a Tally,
    pub usage: &'a Usage,
    pub traffic: &'a mut Traffic,
    pub configs: Configs,
    pub flood_conf: PathBuf,
    pub t0: Instant,
    /// When the traffic ends: new connections must end before it.
    pub end: Instant,
    deployments: u64,
}

/// Refusals the soak expects, by what the daemon says: (message part, rule).
const EXPECTED_REFUSALS: &[(&str, &str)] = &[
    (
        "still pinned to",
        "deploy: TCP connections still pinned to the idle colour",
    ),
    (
        "finish it, abort it or roll it back first",
        "deploy: a deployment is still open",
    ),
    ("has no deployment to roll back", "rollback: no deployment"),
    ("has no deployment in progress", "abort: no deployment"),
    (
        "cannot roll back a deployment that is",
        "rollback: the deployment is not serving",
    ),
    (
        "cannot abort a deployment that is",
        "abort: the deployment already flipped or ended",
    ),
    (
        "is no longer kept warm",
        "rollback: the previous colour is no longer warm",
    ),
];

fn classify(error: String) -> Outcome {
    if error.contains("validation of deployment") && error.contains("failed") {
        return Outcome::Rejected(error);
    }
    match EXPECTED_REFUSALS.iter().find(|(m, _)| error.contains(m)) {
        Some((_, rule)) => Outcome::Refused(rule, error),
        None => Outcome::Violation(format!("unexpected refusal: {error}")),
    }
}

fn backend(service: &str, color: Color) -> String {
    let port = if service.starts_with("udp") {
        UDP_PORT
    } else {
        TCP_PORT
    };
    match (service.ends_with('6'), color) {
        (false, Color::Blue) => format!("{BLUE_V4}:{port}"),
        (false, Color::Green) => format!("{GREEN_V4}:{port}"),
        (true, Color::Blue) => format!("[{BLUE_V6}]:{port}"),
        (true, Color::Green) => format!("[{GREEN_V6}]:{port}"),
    }
}

impl<'a> World<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rig: &'a mut Rig,
        tally: &'a Tally,
        usage: &'a Usage,
        traffic: &'a mut Traffic,
        configs: Configs,
        flood_conf: PathBuf,
        t0: Instant,
        end: Instant,
    ) -> World<'a> {
        World {
            rig,
            tally,
            usage,
            traffic,
            configs,
            flood_conf,
            t0,
            end,
            deployments: 0,
        }
    }

    /// Does `op`. An error means the soak cannot go on (e.g. no daemon could be started).
    pub fn run(&mut self, op: &Op) -> Result<Outcome> {
        if let Some(d) = self.rig.daemon() {
            if let Some(st) = d.try_wait()? {
                bail!("the daemon exited on its own ({st}): {}", d.stderr_tail(20));
            }
        }
        match op {
            Op::Flip { service } => self.flip(service),
            Op::Promote { service } => self.promote(service),
            Op::Rollback { service } => self.simple(&["rollback", service], "rolled back"),
            Op::DeployAbort { service } => self.deploy_abort(service, None),
            Op::PromoteAbort { service, after } => self.deploy_abort(service, Some(*after)),
            Op::ReloadGood => self.reload_good(),
            Op::ReloadBad { variant } => self.reload_bad(*variant),
            Op::Kill9 { gap, validating } => self.kill9(*gap, *validating),
            Op::Restart => self.restart(),
            Op::SynFlood => self.syn_flood(),
            Op::Connect { v6, secs } => self.connect(*v6, *secs),
        }
    }

    fn simple(&self, args: &[&str], done: &str) -> Result<Outcome> {
        let r = cli::run(self.rig, args)?;
        Ok(if r.ok {
            Outcome::Done(done.to_string())
        } else {
            classify(r.error())
        })
    }

    fn flip(&self, service: &str) -> Result<Outcome> {
        let to = cli::active(self.rig, service)?.other();
        let to_s = to.to_string();
        let r = cli::run(self.rig, &["flip", service, "--to", &to_s])?;
        if r.ok {
            return Ok(Outcome::Done(format!("to {to}")));
        }
        if !r.error().contains("has not been validated") {
            return Ok(classify(r.error()));
        }
        let r = cli::run(
            self.rig,
            &[
                "flip",
                service,
                "--to",
                &to_s,
                "--force",
                "--reason",
                "soak: forced flip to an unvalidated colour",
            ],
        )?;
        Ok(if r.ok {
            Outcome::Done(format!("forced to {to} (not validated)"))
        } else {
            classify(r.error())
        })
    }

    /// Deploys the service's own idle backend again as a new version: Ok((colour, forced))
    /// or the refusal. With `force_over_pinned`, a deploy refused because TCP connections
    /// are still pinned to the idle colour is repeated with --force: the candidate is the same
    /// node, so those connections (they keep their member) must not notice.
    fn deploy(
        &mut self,
        service: &str,
        force_over_pinned: bool,
    ) -> Result<std::result::Result<(Color, bool), Outcome>> {
        let idle = cli::active(self.rig, service)?.other();
        self.deployments += 1;
        let version = format!("soak-{}", self.deployments);
        let slot = format!("--{idle}");
        let backend = backend(service, idle);
        let args = [
            "deploy",
            service,
            slot.as_str(),
            backend.as_str(),
            "--version",
            version.as_str(),
        ];
        let r = cli::run(self.rig, &args)?;
        if r.ok {
            return Ok(Ok((idle, false)));
        }
        if !(force_over_pinned && r.error().contains("still pinned to")) {
            return Ok(Err(classify(r.error())));
        }
        let mut forced = args.to_vec();
        forced.push("--force");
        let r = cli::run(self.rig, &forced)?;
        Ok(if r.ok {
            Ok((idle, true))
        } else {
            Err(classify(r.error()))
        })
    }

    fn promote(&mut self, service: &str) -> Result<Outcome> {
        let (color, forced) = match self.deploy(service, true)? {
            Ok(d) => d,
            Err(refused) => return Ok(refused),
        };
        let forced = if forced {
            " (deployed with --force over connections pinned there)"
        } else {
            ""
        };
        let r = cli::run(
            self.rig,
            &["promote", service, "--wait", "--until", "promoted"],
        )?;
        Ok(if r.ok {
            Outcome::Done(format!("promoted to {color}{forced}"))
        } else {
            classify(format!("{}{forced}", r.error()))
        })
    }

    fn deploy_abort(&mut self, service: &str, promote_for: Option<Duration>) -> Result<Outcome> {
        let (color, _) = match self.deploy(service, false)? {
            Ok(d) => d,
            Err(refused) => return Ok(refused),
        };
        if let Some(after) = promote_for {
            let r = cli::run(self.rig, &["promote", service])?;
            if !r.ok {
                return Ok(classify(r.error()));
            }
            thread::sleep(after);
        }
        let r = cli::run(self.rig, &["abort", service])?;
        Ok(if r.ok {
            Outcome::Done(format!("deployed to {color}, aborted"))
        } else {
            classify(r.error())
        })
    }

    fn daemon_log_count(&self, needle: &str) -> usize {
        self.rig.daemon().map_or(0, |d| {
            d.stderr_lines()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
        })
    }

    /// SIGHUP to the daemon, then waits until it logged `needle` once more.
    fn hup_and_wait_for(&self, needle: &str) -> Result<bool> {
        let before = self.daemon_log_count(needle);
        let pid = self.rig.daemon().context("no daemon")?.pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid")?),
            nix::sys::signal::Signal::SIGHUP,
        )
        .context("SIGHUP to the daemon")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.daemon_log_count(needle) > before {
                return Ok(true);
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    }

    fn has_extra(&self) -> Result<bool> {
        Ok(cli::services(self.rig)?.contains_key(EXTRA_NAME))
    }

    fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(&self.rig.config, text)
            .with_context(|| format!("writing {}", self.rig.config.display()))
    }

    fn reload_good(&mut self) -> Result<Outcome> {
        let extra = !self.configs.extra;
        self.write_config(&self.configs.good(extra))?;
        if !self.hup_and_wait_for("reloaded on SIGHUP")? {
            return Ok(Outcome::Violation(format!(
                "SIGHUP with a valid config: no reload logged within 10 s: {}",
                self.rig
                    .daemon()
                    .map(|d| d.stderr_tail(5))
                    .unwrap_or_default()
            )));
        }
        self.configs.extra = extra;
        if self.has_extra()? != extra {
            return Ok(Outcome::Violation(format!(
                "SIGHUP reloaded a config {} service {EXTRA_NAME:?}, but the status disagrees",
                if extra { "adding" } else { "removing" }
            )));
        }
        Ok(Outcome::Done(format!(
            "service {EXTRA_NAME:?} {}",
            if extra { "added" } else { "removed" }
        )))
    }

    fn reload_bad(&mut self, variant: usize) -> Result<Outcome> {
        let (bad, field) = self.configs.bad(variant)?;
        let before = cli::services(self.rig)?;
        self.write_config(&bad)?;
        let result = self.reload_bad_checks(field, &before);
        // The good file back whatever happened, before any later restart reads it.
        self.write_config(&self.configs.good(self.configs.extra))?;
        result
    }

    fn reload_bad_checks(
        &self,
        field: &str,
        before: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<Outcome> {
        let names = |m: &std::collections::BTreeMap<String, serde_json::Value>| {
            m.keys().cloned().collect::<Vec<_>>()
        };
        if !self.hup_and_wait_for("reload on SIGHUP refused")? {
            return Ok(Outcome::Violation(format!(
                "SIGHUP with a bad config ({field}): no refusal logged within 10 s: {}",
                self.rig
                    .daemon()
                    .map(|d| d.stderr_tail(5))
                    .unwrap_or_default()
            )));
        }
        if names(&cli::services(self.rig)?) != names(before) {
            return Ok(Outcome::Violation(format!(
                "a bad config ({field}) was partly applied on SIGHUP: services {:?} became {:?}",
                names(before),
                names(&cli::services(self.rig)?)
            )));
        }
        let r = cli::run(self.rig, &["reload"])?;
        if r.ok {
            return Ok(Outcome::Violation(format!(
                "`switcher reload` accepted a bad config ({field})"
            )));
        }
        if !r.error().contains(field) {
            return Ok(Outcome::Violation(format!(
                "`switcher reload` refused a bad config without naming {field}: {}",
                r.error()
            )));
        }
        if names(&cli::services(self.rig)?) != names(before) {
            return Ok(Outcome::Violation(format!(
                "a refused `switcher reload` ({field}) changed the services"
            )));
        }
        Ok(Outcome::Done(format!("refused whole: {}", r.error())))
    }

    /// Lines of the long-lived (UDP, TCP) streams at the sinks so far.
    fn long_lines(&self) -> Result<(usize, usize)> {
        self.tally.read_new()?;
        Ok((
            self.tally.total(&self.traffic.long_streams(true)),
            self.tally.total(&self.traffic.long_streams(false)),
        ))
    }

    fn start_daemon(&mut self) -> Result<()> {
        self.rig
            .start_daemon()
            .context("a new daemon did not start over the pinned datapath")?;
        let pid = self.rig.daemon().context("no daemon after start")?.pid();
        self.usage.started(pid);
        Ok(())
    }

    fn kill9(&mut self, gap: Duration, validating: Option<&str>) -> Result<Outcome> {
        let mut notes = Vec::new();
        let mut in_flight = None;
        if let Some(service) = validating {
            match self.deploy(service, false)? {
                Ok(_) => {
                    let r = cli::run(self.rig, &["promote", service])?;
                    if r.ok {
                        in_flight = Some(service);
                        thread::sleep(Duration::from_millis(300));
                    } else {
                        notes.push(format!("promote {service} refused: {}", r.error()));
                    }
                }
                Err(o) => notes.push(format!("no validation to interrupt: {}", o.describe())),
            }
        }
        let before = cli::actives(self.rig)?;
        let (udp0, tcp0) = self.long_lines()?;
        self.usage.ended();
        self.rig.kill_daemon()?;
        let killed = Instant::now();
        // Traffic keeps flowing with no daemon at all: the datapath stays attached.
        let mut violation = None;
        let deadline = killed + Duration::from_secs(10);
        loop {
            let (udp, tcp) = self.long_lines()?;
            if udp >= udp0 + 100 && tcp >= tcp0 + 50 {
                notes.push(format!(
                    "{} UDP and {} TCP lines arrived with no daemon",
                    udp - udp0,
                    tcp - tcp0
                ));
                break;
            }
            if Instant::now() >= deadline {
                violation = Some(format!(
                    "traffic stopped while the daemon was down: {} UDP and {} TCP lines in 10 s",
                    udp - udp0,
                    tcp - tcp0
                ));
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(left) = (killed + gap).checked_duration_since(Instant::now()) {
            thread::sleep(left);
        }
        self.start_daemon()?;
        let after = cli::actives(self.rig)?;
        for (name, c) in &before {
            if after.get(name) != Some(c) && Some(name.as_str()) != in_flight {
                violation.get_or_insert(format!(
                    "the restarted daemon shows {name} on {:?}, it was {c} before the kill",
                    after.get(name)
                ));
            }
        }
        if let Some(service) = in_flight {
            let (phase, reason) = cli::last_deployment(self.rig, service)?.unwrap_or_default();
            if phase == "validating" {
                violation.get_or_insert(format!(
                    "{service}'s validation interrupted by the kill is still validating after the restart"
                ));
            }
            notes.push(format!(
                "{service}'s interrupted deployment: {phase} ({reason})"
            ));
        }
        Ok(match violation {
            Some(v) => Outcome::Violation(format!("{v}; {}", notes.join("; "))),
            None => Outcome::Done(notes.join("; ")),
        })
    }

    fn restart(&mut self) -> Result<Outcome> {
        let before = cli::actives(self.rig)?;
        self.usage.ended();
        // With --keep-attached the rig checks the links stayed pinned.
        let stopped = self.rig.stop_daemon();
        self.start_daemon()?;
        if let Err(e) = stopped {
            return Ok(Outcome::Violation(format!(
                "SIGTERM with --keep-attached: {e:#}"
            )));
        }
        let after = cli::actives(self.rig)?;
        if after != before {
            return Ok(Outcome::Violation(format!(
                "colours changed across a restart: {before:?} -> {after:?}"
            )));
        }
        Ok(Outcome::Done("adopted, colours kept".into()))
    }

    fn syn_flood(&mut self) -> Result<Outcome> {
        let s = cli::services(self.rig)?;
        let tcp4 = s.get("tcp4").context("tcp4 in the status")?;
        let color = cli::color_of(tcp4)?;
        let before = cli::counter(tcp4, color, "new_flows");
        let drops = counters::link_drops(&self.rig.lab)?;
        flood::burst(self.rig, &self.flood_conf)?;
        let drops = counters::drops_between(&drops, &counters::link_drops(&self.rig.lab)?);
        let drops = if drops.is_empty() {
            "no veth drops".to_string()
        } else {
            let ends: Vec<String> = drops.iter().map(|(e, n)| format!("{n} at {e}")).collect();
            format!("veth drops: {}", ends.join(", "))
        };
        let s = cli::services(self.rig)?;
        let tcp4 = s.get("tcp4").context("tcp4 in the status")?;
        let after = cli::counter(tcp4, color, "new_flows");
        let new = after.saturating_sub(before);
        if new < flood::PACKETS / 2 {
            return Ok(Outcome::Violation(format!(
                "the flood did not reach the datapath: {new} new flows at {color} for {} SYNs",
                flood::PACKETS
            )));
        }
        if let Err(e) = self.traffic.check_long_running() {
            return Ok(Outcome::Violation(format!("after the SYN flood: {e:#}")));
        }
        Ok(Outcome::Done(format!(
            "{} SYNs, {new} new flows at {color}, {drops}",
            flood::PACKETS
        )))
    }

    fn connect(&mut self, v6: bool, secs: u64) -> Result<Outcome> {
        let left = self
            .end
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_secs(3))
            .as_secs();
        let secs = secs.min(left);
        if secs < 2 {
            return Ok(Outcome::Skipped(
                "too close to the end of the traffic".into(),
            ));
        }
        let service = if v6 { "tcp6" } else { "tcp4" };
        let before = cli::active(self.rig, service)?;
        let name = self
            .traffic
            .connect(self.rig, self.tally, self.t0, v6, secs)?;
        let (blue, green) =
            match traffic::wait_lines(self.tally, &name, 20, Duration::from_secs(10)) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Outcome::Violation(format!(
                        "a new connection delivered nothing: {e:#}"
                    )))
                }
            };
        let after = cli::active(self.rig, service)?;
        let landed = match (blue, green) {
            (_, 0) => Color::Blue,
            (0, _) => Color::Green,
            _ => {
                return Ok(Outcome::Violation(format!(
                    "{name}: a new connection's first lines went to both colours ({blue}/{green})"
                )))
            }
        };
        let stream = self
            .traffic
            .stream_mut(&name)
            .context("the new stream is tracked")?;
        // From here on every line of it must stay where it landed.
        stream.expect = Expect::On(landed);
        if before != after {
            return Ok(Outcome::Done(format!(
                "{name} on {landed} (the active colour changed meanwhile: {before} -> {after})"
            )));
        }
        if landed != before {
            return Ok(Outcome::Violation(format!(
                "{name}: a new connection landed on {landed}, the active colour is {before}"
            )));
        }
        Ok(Outcome::Done(format!(
            "{name} on {landed}, the active colour"
        )))
    }
}
