//! The random schedule: operations in rounds, drawn from the seed alone.
//!
//! A round holds every kind of operation a fixed number of times ([`Kind::per_round`]) in a
//! seeded random order, each with its own seeded details (service, pauses, gaps) and a seeded
//! pause of 0.5–4 s before it, so a long run does every kind about equally often and a short
//! one still does each at least once. The run has two phases: daemon replacements (`kill -9`
//! and restart) happen only in the first 60% ([`STEADY_FROM`]); the rest is one daemon
//! incarnation under every other operation, long enough to show a leak. Each phase has its
//! own random stream, so the same seed gives the same operations in the same order; only how
//! many of them fit depends on the machine's speed.

use std::fmt;
use std::time::Duration;

/// Share of the run after which the daemon is no longer replaced.
pub const STEADY_FROM: f64 = 0.6;

/// The services operations target (the standard lab services).
pub const SERVICES: [&str; 4] = ["udp4", "tcp4", "udp6", "tcp6"];

/// Ways the bad config is bad; each must be rejected whole, naming the field.
pub const BAD_CONFIGS: usize = 3;

/// splitmix64: small, fast, and the same sequence on every platform and version, so a seed
/// reproduces a run (a crate's generator could change its stream between releases).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    fn service(&mut self) -> &'static str {
        SERVICES[self.below(SERVICES.len() as u64) as usize]
    }
}

/// What an operation is, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Flip,
    Promote,
    Rollback,
    DeployAbort,
    PromoteAbort,
    ReloadGood,
    ReloadBad,
    Kill9,
    Restart,
    SynFlood,
    Connect,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Flip,
        Kind::Promote,
        Kind::Rollback,
        Kind::DeployAbort,
        Kind::PromoteAbort,
        Kind::ReloadGood,
        Kind::ReloadBad,
        Kind::Kill9,
        Kind::Restart,
        Kind::SynFlood,
        Kind::Connect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Flip => "flip",
            Kind::Promote => "deploy+promote",
            Kind::Rollback => "rollback",
            Kind::DeployAbort => "deploy+abort",
            Kind::PromoteAbort => "promote+abort",
            Kind::ReloadGood => "reload (SIGHUP)",
            Kind::ReloadBad => "bad reload",
            Kind::Kill9 => "kill -9 + restart",
            Kind::Restart => "restart (SIGTERM)",
            Kind::SynFlood => "SYN flood",
            Kind::Connect => "new TCP connection",
        }
    }

    /// How often the kind occurs in a round.
    pub fn per_round(self) -> usize {
        match self {
            Kind::Flip | Kind::Promote | Kind::Connect => 2,
            _ => 1,
        }
    }

    /// Replaces the daemon: only in the first phase.
    pub fn replaces_daemon(self) -> bool {
        matches!(self, Kind::Kill9 | Kind::Restart)
    }
}

/// One operation with its details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A manual flip to the other colour (forced, with a reason, if that colour is not
    /// validated).
    Flip {
        service: &'static str,
    },
    /// Deploy to the idle colour, then `promote --wait` (validation on).
    Promote {
        service: &'static str,
    },
    Rollback {
        service: &'static str,
    },
    /// Deploy, then abort before any validation.
    DeployAbort {
        service: &'static str,
    },
    /// Deploy, promote without waiting, abort `after` later (mid-validation, or refused if
    /// it already flipped).
    PromoteAbort {
        service: &'static str,
        after: Duration,
    },
    /// A valid config change (a service added or removed) by SIGHUP.
    ReloadGood,
    /// A config with one error (`variant` of [`BAD_CONFIGS`]) and a valid change beside it,
    /// by SIGHUP and by `switcher reload`: nothing of it may apply.
    ReloadBad {
        variant: usize,
    },
    /// `kill -9` of the daemon (while `validating` is being validated, if set), `gap` with no
    /// daemon at all (at least until traffic was seen flowing), then a new daemon adopts.
    Kill9 {
        gap: Duration,
        validating: Option<&'static str>,
    },
    /// SIGTERM with --keep-attached, then a new daemon at once (an upgrade).
    Restart,
    /// A bounded burst of spoofed SYNs at tcp4's VIP.
    SynFlood,
    /// A new TCP connection (log-sender) for `secs`: it must land on the active colour and
    /// stay there.
    Connect {
        v6: bool,
        secs: u64,
    },
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Flip { .. } => Kind::Flip,
            Op::Promote { .. } => Kind::Promote,
            Op::Rollback { .. } => Kind::Rollback,
            Op::DeployAbort { .. } => Kind::DeployAbort,
            Op::PromoteAbort { .. } => Kind::PromoteAbort,
            Op::ReloadGood => Kind::ReloadGood,
            Op::ReloadBad { .. } => Kind::ReloadBad,
            Op::Kill9 { .. } => Kind::Kill9,
            Op::Restart => Kind::Restart,
            Op::SynFlood => Kind::SynFlood,
            Op::Connect { .. } => Kind::Connect,
        }
    }

    fn draw(kind: Kind, rng: &mut Rng) -> Op {
        match kind {
            Kind::Flip => Op::Flip {
                service: rng.service(),
            },
            Kind::Promote => Op::Promote {
                service: rng.service(),
            },
            Kind::Rollback => Op::Rollback {
                service: rng.service(),
            },
            Kind::DeployAbort => Op::DeployAbort {
                service: rng.service(),
            },
            Kind::PromoteAbort => Op::PromoteAbort {
                service: rng.service(),
                // A validation takes about 0.7 s here: mostly mid-validation, sometimes after.
                after: Duration::from_millis(rng.between(0, 800)),
            },
            Kind::ReloadGood => Op::ReloadGood,
            Kind::ReloadBad => Op::ReloadBad {
                variant: rng.below(BAD_CONFIGS as u64) as usize,
            },
            Kind::Kill9 => {
                let gap = Duration::from_millis(rng.between(500, 3000));
                let validating = rng.coin().then(|| rng.service());
                Op::Kill9 { gap, validating }
            }
            Kind::Restart => Op::Restart,
            Kind::SynFlood => Op::SynFlood,
            Kind::Connect => Op::Connect {
                v6: rng.coin(),
                secs: rng.between(4, 15),
            },
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Flip { service } => write!(f, "flip {service}"),
            Op::Promote { service } => write!(f, "deploy+promote {service}"),
            Op::Rollback { service } => write!(f, "rollback {service}"),
            Op::DeployAbort { service } => write!(f, "deploy+abort {service}"),
            Op::PromoteAbort { service, after } => {
                write!(f, "promote+abort {service} after {} ms", after.as_millis())
            }
            Op::ReloadGood => write!(f, "reload (SIGHUP)"),
            Op::ReloadBad { variant } => write!(f, "bad reload #{variant}"),
            Op::Kill9 { gap, validating } => {
                write!(f, "kill -9, {} ms without daemon", gap.as_millis())?;
                if let Some(s) = validating {
                    write!(f, ", during a validation of {s}")?;
                }
                Ok(())
            }
            Op::Restart => write!(f, "restart (SIGTERM, --keep-attached)"),
            Op::SynFlood => write!(f, "SYN flood at tcp4"),
            Op::Connect { v6, secs } => write!(
                f,
                "new TCP connection to tcp{} for {secs} s",
                if *v6 { 6 } else { 4 }
            ),
        }
    }
}

/// A step of the schedule: wait `pause`, then do `op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub pause: Duration,
    pub op: Op,
}

/// The endless schedule of one phase.
struct Phase {
    rng: Rng,
    replaces_daemon: bool,
    queue: Vec<Step>,
}

impl Phase {
    fn next(&mut self) -> Step {
        if self.queue.is_empty() {
            let mut kinds: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| self.replaces_daemon || !k.replaces_daemon())
                .flat_map(|k| std::iter::repeat_n(k, k.per_round()))
                .collect();
            self.rng.shuffle(&mut kinds);
            // Popped from the back: reverse so the round runs in the shuffled order.
            self.queue = kinds
                .into_iter()
                .rev()
                .map(|k| Step {
                    pause: Duration::from_millis(self.rng.between(500, 4000)),
                    op: Op::draw(k, &mut self.rng),
                })
                .collect();
        }
        self.queue
            .pop()
            .unwrap_or_else(|| unreachable!("a round is never empty"))
    }
}

/// Both phases' schedules.
pub struct Plan {
    early: Phase,
    steady: Phase,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        Plan {
            early: Phase {
                rng: Rng::new(seed),
                replaces_daemon: true,
                queue: Vec::new(),
            },
            steady: Phase {
                rng: Rng::new(seed ^ 0x5EED_57EA_D1E5_0000),
                replaces_daemon: false,
                queue: Vec::new(),
            },
        }
    }

    /// The next step: from the first phase's schedule until `steady`, then from the second's.
    pub fn next(&mut self, steady: bool) -> Step {
        if steady {
            self.steady.next()
        } else {
            self.early.next()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let (mut a, mut b) = (Plan::new(7), Plan::new(7));
        for i in 0..100 {
            assert_eq!(a.next(i > 50), b.next(i > 50));
        }
        let mut c = Plan::new(8);
        let differs = (0..20).any(|_| Plan::new(7).next(false) != c.next(false));
        assert!(differs);
    }

    #[test]
    fn every_round_holds_every_kind_and_the_steady_phase_keeps_the_daemon() {
        let mut plan = Plan::new(42);
        let round: usize = Kind::ALL.iter().map(|k| k.per_round()).sum();
        let early: Vec<Kind> = (0..round).map(|_| plan.next(false).op.kind()).collect();
        for k in Kind::ALL {
            let n = early.iter().filter(|x| **x == k).count();
            assert_eq!(n, k.per_round(), "{k:?} in {early:?}");
        }
        for _ in 0..200 {
            let s = plan.next(true);
            assert!(!s.op.kind().replaces_daemon(), "{s:?}");
            assert!(s.pause >= Duration::from_millis(500) && s.pause <= Duration::from_secs(4));
        }
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let v = rng.between(3, 5);
            assert!((3..=5).contains(&v));
        }
    }
}
