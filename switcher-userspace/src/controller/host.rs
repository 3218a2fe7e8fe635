//! What the controller's tasks (validation, watch, health monitor) read from the controller
//! and report back to it, as a trait. The controller implements it (`reports`); the tasks
//! know nothing else of the controller, so they never reach into its state and never repeat
//! its transitions: they measure, and report verdicts.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use switcher_common::{ColorCounters, ShadowCounters};

use super::catalog::CatalogEntry;
use crate::{
    config::{Checks, Member, ShadowCheck},
    domain::{Color, Protocol},
    judge::Round,
};

/// What a validation needs to know, read once at its start.
pub struct ValidationInputs {
    pub checks: Checks,
    pub protocol: Protocol,
    /// The candidate's pool.
    pub candidate: Vec<Member>,
    /// The serving colour's pool, measured under the same load (empty: none).
    pub serving: Vec<Member>,
}

/// What the watch needs to know, read once at its start.
pub struct WatchInputs {
    pub id: u64,
    /// When the watch window ends (unix ms).
    pub until_ms: u64,
    pub checks: Checks,
    pub protocol: Protocol,
    pub color: Color,
    /// The candidate's pool.
    pub candidate: Vec<Member>,
}

/// A validation's findings: no failures means it passed.
#[derive(Debug, Default)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

pub trait Host: Clone + Send + Sync + 'static {
    /// The inputs of deployment `id`'s validation; an error if it is no longer validating.
    fn validation_inputs(
        &self,
        service: &str,
        id: u64,
    ) -> impl Future<Output = Result<ValidationInputs>> + Send;
    /// Starts the canary at `share` of new flows; the candidate's counters at that moment.
    fn canary_begin(
        &self,
        service: &str,
        id: u64,
        share: u32,
    ) -> impl Future<Output = Result<ColorCounters>> + Send;
    /// Ends the canary, whatever the deployment's phase (an abort ended it already; clearing
    /// twice is harmless); the candidate's counters at that moment.
    fn canary_end(&self, service: &str) -> impl Future<Output = Result<ColorCounters>> + Send;
    /// Starts copying a share of the live packets to the candidate's shadow port for
    /// `shadow.duration` (the datapath stops by itself a little after, should nobody end
    /// it); the copies made so far.
    fn shadow_begin(
        &self,
        service: &str,
        id: u64,
        shadow: &ShadowCheck,
    ) -> impl Future<Output = Result<ShadowCounters>> + Send;
    /// Ends the copies, whatever the deployment's phase; the copies made so far.
    fn shadow_end(&self, service: &str) -> impl Future<Output = Result<ShadowCounters>> + Send;
    /// The verdict of deployment `id`'s validation, or why it could not finish.
    fn validation_finished(
        &self,
        service: &str,
        id: u64,
        verdict: Result<Verdict>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The inputs of the promoted deployment's watch (`resumed`: after a daemon restart).
    fn watch_inputs(
        &self,
        service: &str,
        resumed: bool,
    ) -> impl Future<Output = Result<WatchInputs>> + Send;
    /// The datapath counters of `service`'s colour `c`.
    fn counters(
        &self,
        service: &str,
        c: Color,
    ) -> impl Future<Output = Result<ColorCounters>> + Send;
    /// One judged watch round; true when the watch is over (rolled back).
    fn watch_round(
        &self,
        service: &str,
        id: u64,
        round: Round,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The watch window passed cleanly after `rounds` rounds.
    fn watch_passed(
        &self,
        service: &str,
        id: u64,
        rounds: u64,
        warm: Duration,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The watch could not go on.
    fn watch_failed(&self, service: &str, e: anyhow::Error) -> impl Future<Output = ()> + Send;
    /// The services to probe.
    fn catalog(&self) -> impl Future<Output = Arc<Vec<CatalogEntry>>> + Send;
    /// The health monitor's verdict on a pool member: out of service (its share of new flows
    /// moves to the others, its established connections stay) or back in.
    fn member_health(
        &self,
        service: &str,
        color: Color,
        member: SocketAddr,
        up: bool,
    ) -> impl Future<Output = Result<()>> + Send;
}
