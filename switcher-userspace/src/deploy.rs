//! The deployment state machine, pure so it is tested without root:
//!
//! ```text
//! deployed ──promote──► validating ──pass──► ready ──flip──► promoted (watching) ──window ok──► stable
//!    │  │                   │                  │                  │                              │
//!    │  └──abort────────────┴──────abort───────┘             rollback (auto/manual)        rollback (while warm)
//!    │                      └──fail──► rejected                   ▼                              ▼
//!    │                                                       rolled_back ◄───────────────────────┘
//!    └──flip --force --reason (no validation) ──────────────► promoted (watching)
//! ```
//! `abort` is possible before the flip, `rollback` after it. Every transition is recorded with
//! its time, actor, reason and the evidence that decided it.

use serde::{Deserialize, Serialize};

use crate::{
    config::{describe, deserialize_members, Member},
    domain::Color,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The candidate backend is in the idle colour's slot; no traffic goes to it.
    Deployed,
    Validating,
    /// Validation passed; the flip follows (or a manual `flip` without --force is allowed).
    Ready,
    /// Validation failed; the candidate never got traffic (except a canary share).
    Rejected,
    /// Flipped: the candidate serves new flows and is being watched.
    Promoted,
    /// The watch window passed; the previous colour stays warm for rollback until `warm_until`.
    Stable,
    Aborted,
    RolledBack,
}

impl Phase {
    /// No further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Rejected | Phase::Aborted | Phase::RolledBack)
    }

    /// Whether the flip to the candidate happened before this phase (it serves now, or served
    /// until it was rolled back).
    pub fn is_after_flip(self) -> bool {
        matches!(self, Phase::Promoted | Phase::Stable | Phase::RolledBack)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Phase::Deployed => "deployed",
            Phase::Validating => "validating",
            Phase::Ready => "ready",
            Phase::Rejected => "rejected",
            Phase::Promoted => "promoted (watching)",
            Phase::Stable => "stable",
            Phase::Aborted => "aborted",
            Phase::RolledBack => "rolled back",
        };
        f.pad(s)
    }
}

/// What can happen to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    StartValidation,
    ValidationPassed,
    ValidationFailed,
    /// The flip to the candidate: after validation, or forced by an operator.
    Flip {
        forced: bool,
    },
    WatchPassed,
    Rollback,
    Abort,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {step} a deployment that is {phase}{hint}")]
pub struct TransitionError {
    pub phase: Phase,
    pub step: &'static str,
    pub hint: &'static str,
}

impl Step {
    fn verb(self) -> &'static str {
        match self {
            Step::StartValidation => "validate",
            Step::ValidationPassed | Step::ValidationFailed => "finish validating",
            Step::Flip { .. } => "flip to",
            Step::WatchPassed => "finish watching",
            Step::Rollback => "roll back",
            Step::Abort => "abort",
        }
    }
}

/// The phase `step` leads to from `phase`, or why it cannot happen.
pub fn next(phase: Phase, step: Step) -> Result<Phase, TransitionError> {
    use Phase::*;
    let to = match (phase, step) {
        (Deployed, Step::StartValidation) => Validating,
        (Validating, Step::ValidationPassed) => Ready,
        (Validating, Step::ValidationFailed) => Rejected,
        (Ready, Step::Flip { .. }) | (Deployed, Step::Flip { forced: true }) => Promoted,
        (Promoted, Step::WatchPassed) => Stable,
        (Promoted | Stable, Step::Rollback) => RolledBack,
        (Deployed | Validating | Ready, Step::Abort) => Aborted,
        _ => {
            let hint = match (phase, step) {
                (Deployed, Step::Flip { forced: false }) => {
                    ": it has not been validated (promote it, or flip with --force --reason)"
                }
                (Promoted | Stable, Step::Abort) => ": it is already serving (use rollback)",
                (Deployed | Validating | Ready, Step::Rollback) => {
                    ": it never got the traffic (use abort)"
                }
                (Validating, Step::StartValidation) => ": validation is already running",
                _ => "",
            };
            return Err(TransitionError {
                phase,
                step: step.verb(),
                hint,
            });
        }
    };
    Ok(to)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub from: Option<Phase>,
    pub to: Phase,
    /// Who: `cli:root (pid 1234)`, `dashboard:127.0.0.1:50312`, or `auto` for the
    /// controller itself.
    pub actor: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub service: String,
    /// The slot the candidate occupies.
    pub color: Color,
    /// The candidate's pool. Earlier releases wrote one `backend`.
    #[serde(alias = "backend", deserialize_with = "deserialize_members")]
    pub members: Vec<Member>,
    pub version: Option<String>,
    /// The colour serving when it was deployed: where rollback goes.
    pub previous: Color,
    pub phase: Phase,
    pub transitions: Vec<Transition>,
    /// While promoted: when the watch window ends (unix ms).
    #[serde(default)]
    pub watch_until_ms: Option<u64>,
    /// While stable: until when the previous colour is kept warm for rollback (unix ms).
    #[serde(default)]
    pub warm_until_ms: Option<u64>,
}

impl Deployment {
    pub fn new(
        id: u64,
        service: &str,
        color: Color,
        members: Vec<Member>,
        version: Option<String>,
        actor: &str,
        now_ms: u64,
    ) -> Self {
        let reason = format!("{} deployed to {color}", describe(&members));
        Self {
            id,
            service: service.to_string(),
            color,
            members,
            version,
            previous: color.other(),
            phase: Phase::Deployed,
            transitions: vec![Transition {
                at_ms: now_ms,
                from: None,
                to: Phase::Deployed,
                actor: actor.to_string(),
                reason,
                evidence: None,
            }],
            watch_until_ms: None,
            warm_until_ms: None,
        }
    }

    /// Applies `step` and records it; on error nothing changes.
    pub fn apply(
        &mut self,
        step: Step,
        actor: &str,
        reason: impl Into<String>,
        evidence: Option<serde_json::Value>,
        now_ms: u64,
    ) -> Result<Phase, TransitionError> {
        let to = next(self.phase, step)?;
        self.transitions.push(Transition {
            at_ms: now_ms,
            from: Some(self.phase),
            to,
            actor: actor.to_string(),
            reason: reason.into(),
            evidence,
        });
        self.phase = to;
        Ok(to)
    }

    /// Still open: a new deployment of the service must wait for (or abort) this one.
    pub fn blocks_new_deploy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Deployed | Phase::Validating | Phase::Ready | Phase::Promoted
        )
    }

    pub fn last(&self) -> Option<&Transition> {
        self.transitions.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep() -> Deployment {
        Deployment::new(
            1,
            "syslog",
            Color::Green,
            vec![Member::new("198.18.2.2:514".parse().expect("addr"))],
            Some("v2".into()),
            "cli:uid=0",
            1000,
        )
    }

    #[test]
    fn happy_path_records_every_transition() {
        let mut d = dep();
        assert_eq!(d.previous, Color::Blue);
        for (step, want) in [
            (Step::StartValidation, Phase::Validating),
            (Step::ValidationPassed, Phase::Ready),
            (Step::Flip { forced: false }, Phase::Promoted),
            (Step::WatchPassed, Phase::Stable),
        ] {
            assert_eq!(d.apply(step, "auto", "ok", None, 2000), Ok(want));
        }
        let phases: Vec<Phase> = d.transitions.iter().map(|t| t.to).collect();
        assert_eq!(
            phases,
            [
                Phase::Deployed,
                Phase::Validating,
                Phase::Ready,
                Phase::Promoted,
                Phase::Stable
            ]
        );
        assert_eq!(d.transitions[1].from, Some(Phase::Deployed));
        // Rollback stays possible from stable (while the previous colour is warm).
        assert_eq!(
            d.apply(Step::Rollback, "cli", "bad", None, 3000),
            Ok(Phase::RolledBack)
        );
        assert!(d.phase.is_final());
    }

    #[test]
    fn abort_only_before_the_flip_and_rollback_only_after() {
        for before in [Phase::Deployed, Phase::Validating, Phase::Ready] {
            assert_eq!(next(before, Step::Abort), Ok(Phase::Aborted));
            let e = next(before, Step::Rollback).expect_err("no rollback before flip");
            assert_eq!((e.phase, e.step), (before, "roll back"));
            assert!(e.hint.contains("use abort"), "{e}");
        }
        for after in [Phase::Promoted, Phase::Stable] {
            assert_eq!(next(after, Step::Rollback), Ok(Phase::RolledBack));
            let e = next(after, Step::Abort).expect_err("no abort after flip");
            assert_eq!((e.phase, e.step), (after, "abort"));
            assert!(e.hint.contains("use rollback"), "{e}");
        }
    }

    #[test]
    fn unvalidated_flip_needs_force() {
        let e = next(Phase::Deployed, Step::Flip { forced: false }).expect_err("refused");
        assert_eq!((e.phase, e.step), (Phase::Deployed, "flip to"));
        assert!(e.hint.contains("--force"), "{e}");
        assert_eq!(
            next(Phase::Deployed, Step::Flip { forced: true }),
            Ok(Phase::Promoted)
        );
        assert_eq!(
            next(Phase::Ready, Step::Flip { forced: false }),
            Ok(Phase::Promoted)
        );
    }

    #[test]
    fn failed_validation_is_final_and_changes_nothing_on_error() {
        let mut d = dep();
        d.apply(Step::StartValidation, "cli", "promote", None, 1)
            .expect("start");
        d.apply(Step::ValidationFailed, "auto", "p99 too high", None, 2)
            .expect("fail");
        assert_eq!(d.phase, Phase::Rejected);
        let n = d.transitions.len();
        for step in [
            Step::StartValidation,
            Step::Flip { forced: false },
            Step::Rollback,
            Step::Abort,
            Step::WatchPassed,
        ] {
            assert!(d.apply(step, "cli", "x", None, 3).is_err());
        }
        assert_eq!(d.transitions.len(), n, "a refused step records nothing");
        assert_eq!(d.phase, Phase::Rejected);
    }

    #[test]
    fn only_open_deployments_block_a_new_one() {
        let mut d = dep();
        assert!(d.blocks_new_deploy());
        d.phase = Phase::Stable;
        assert!(!d.blocks_new_deploy());
        d.phase = Phase::Rejected;
        assert!(!d.blocks_new_deploy());
    }
}
