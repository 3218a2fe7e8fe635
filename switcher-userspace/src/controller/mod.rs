//! The deployment controller and its one entry point, [`Controller`]. Every request comes
//! through one async method per operation, whoever asks: the CLI's socket (`daemon`), the
//! dashboard's actions (`web`) and, later, the fleet agent. The controller owns the datapath
//! (it is the only writer of its maps), the durable state, the timing and recording of flips,
//! and the validation, watch and health-monitor tasks.
//!
//! Inside: [`core`] holds the state and makes every transition; the tasks ([`validate`],
//! [`watch`], [`monitor`]) measure, and read and report through the [`host::Host`] trait,
//! which the controller implements in [`reports`]; [`recovery`] decides what a restart makes
//! of an earlier daemon's state; the pure judges live in [`crate::judge`].

mod catalog;
mod core;
mod events;
pub mod flows;
mod health;
mod host;
mod monitor;
mod operations;
mod recorded;
mod recovery;
mod reload;
mod reports;
pub mod retiring;
#[cfg(test)]
mod tests;
mod validate;
mod verdicts;
pub mod view;
mod watch;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex, MutexGuard};
use tracing::{error, warn};

pub use catalog::CatalogEntry;
pub use events::{Event, AUTO};
pub use health::{BackendHealth, HealthBoard, MemberKey};
pub use recorded::Recorded;
pub use reload::ReloadSummary;
pub use view::{ColorView, DeploymentView, FlipStatus, MemberView, ServiceView, StatusView};

use self::{catalog::CatalogCache, core::Core, events::Outputs, host::Host};
use crate::{
    config::{Config, Member},
    datapath::{xdp_features, Datapath, FlipOutcome, FlowPolicy, FlowSweeper},
    deploy::{Deployment, Phase, Step},
    domain::{now_ms, Color},
    state::State,
};

/// The controller: cheap to clone, every clone is the same controller.
#[derive(Clone)]
pub struct Controller(Arc<Inner>);

struct Inner {
    core: Mutex<Core>,
    out: Outputs,
    catalog: CatalogCache,
    health: HealthBoard,
    /// The health monitor and the flow sweeper, by name.
    background: std::sync::Mutex<BTreeMap<&'static str, tokio::task::AbortHandle>>,
}

/// What `promote` answered.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Promotion {
    /// Validation started (`validating`), or the deployment was validated already and the
    /// flip happened (`promoted`).
    Started { deployment: u64, phase: Phase },
    /// Waited for: the deployment after its validation and flip.
    Settled(Deployment),
}

/// What a manual flip did, and how long from the request to the map write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlipReply {
    #[serde(flatten)]
    pub outcome: FlipOutcome,
    pub api_to_map_ns: u64,
    /// Where `api_to_map_ns` went.
    #[serde(default)]
    pub stages_ns: FlipStages,
}

/// The stages of a flip from the request accepted to the map written, in ns: `route` (the
/// request parsed and routed to the controller, tasks scheduled), `lock` (waiting for the
/// controller), `check` (the flip's checks under the lock), `write` (the map writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipStages {
    pub route: u64,
    pub lock: u64,
    pub check: u64,
    pub write: u64,
    /// Times the scheduler took the serving thread away while the flip ran, from the request
    /// to the map write, the wait for the controller excepted (`lock`, its own stage): the
    /// thread's involuntary context switches over the stretches without an await. Absent when
    /// the request's task changed threads before reaching the controller, or the count could
    /// not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted: Option<u64>,
}

/// When an API request arrived, on which thread, and how often that thread had been
/// preempted by then: what a flip's reply measures its stages from.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub at: Instant,
    thread: std::thread::ThreadId,
    preemptions: Option<u64>,
}

impl Accepted {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            thread: std::thread::current().id(),
            preemptions: preemptions(),
        }
    }

    /// A request whose preemptions are not counted: one that awaits something before it
    /// reaches the controller (its task may leave the thread and come back).
    pub fn untracked() -> Self {
        Self {
            at: Instant::now(),
            thread: std::thread::current().id(),
            preemptions: None,
        }
    }

    /// Preemptions of this thread since `self`, if it is the same thread (the socket asks
    /// before the request's first await: the task cannot have left and come back).
    fn preempted_since(&self) -> Option<u64> {
        if std::thread::current().id() != self.thread {
            return None;
        }
        Some(preemptions()?.saturating_sub(self.preemptions?))
    }
}

/// This thread's involuntary context switches so far.
fn preemptions() -> Option<u64> {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD)
        .ok()
        .map(|u| u.involuntary_context_switches() as u64)
}

impl Controller {
    /// Loads the state, programs `dp` with the effective services, reconciles the two,
    /// attaches, and resumes or explicitly closes the deployments an earlier daemon left open.
    pub async fn start(cfg: Config, cfg_path: PathBuf, mut dp: Box<dyn Datapath>) -> Result<Self> {
        let mut state = State::load(&cfg.daemon.state_dir)?;
        state.settle(&cfg);
        let services = state.effective(&cfg);
        let ids = dp.apply(&services)?;
        let mut active = BTreeMap::new();
        for s in &services {
            let id = ids
                .get(&s.name)
                .ok_or_else(|| anyhow!("{} was not programmed", s.name))?;
            active.insert(s.name.clone(), dp.read(*id)?.active);
        }
        recovery::reconcile(&mut state, &services, &active)?;
        if let Err(e) = dp.set_redirect_targets(&redirect_targets()) {
            warn!("updating redirect targets: {e:#}");
        }
        dp.attach(&cfg.daemon.interfaces, cfg.daemon.xdp_mode)?;
        let windows = cfg
            .services
            .iter()
            .map(|s| (s.name.clone(), s.checks.watch.window))
            .collect();
        let resume = recovery::recover(&mut state, &windows, now_ms())?;
        // No validation survives a restart (recover aborted them), so neither may a canary
        // share or shadow copies an earlier daemon left in the maps.
        for (name, id) in &ids {
            dp.set_canary(*id, 0)
                .with_context(|| format!("clearing the canary share {name} was left with"))?;
            dp.set_shadow(*id, None)
                .with_context(|| format!("ending the shadow copies {name} was left with"))?;
        }
        let out = Outputs::new();
        let core = Core::new(dp, cfg, cfg_path, state, ids, out.clone());
        core.save()?;
        let ctl = Controller(Arc::new(Inner {
            core: Mutex::new(core),
            out,
            catalog: CatalogCache::default(),
            health: HealthBoard::default(),
            background: Default::default(),
        }));
        {
            let mut core = ctl.lock().await;
            for name in resume {
                ctl.spawn_watch(&mut core, &name, true);
            }
        }
        Ok(ctl)
    }

    async fn lock(&self) -> MutexGuard<'_, Core> {
        self.0.core.lock().await
    }

    // ---- operations ----

    /// Colours, backends, counters and the deployment in progress of every service (or one).
    pub async fn status(&self, service: Option<&str>) -> Result<StatusView> {
        let mut view = self.lock().await.status(service)?;
        view.fill_health(&self.0.health.snapshot());
        Ok(view)
    }

    /// The established connections pinned now (see [`flows::FlowsView`]).
    pub async fn flows(
        &self,
        service: Option<&str>,
        limit: Option<usize>,
    ) -> Result<flows::FlowsView> {
        self.lock().await.flows(service, limit)
    }

    /// Puts the pool `members` into `color`'s slot (the idle one) as a new deployment; no
    /// traffic yet.
    pub async fn deploy(
        &self,
        service: &str,
        color: Color,
        members: Vec<Member>,
        version: Option<String>,
        force: bool,
        actor: &str,
    ) -> Result<Deployment> {
        self.lock()
            .await
            .deploy(service, color, members, version, force, actor)
    }

    /// Validates the deployed candidate; it is flipped to when validation passes, then
    /// watched. With `wait`, answers once validation ended (rejected: an error) or timed out.
    pub async fn promote(
        &self,
        service: &str,
        actor: &str,
        wait: Option<Duration>,
    ) -> Result<Promotion> {
        let (id, phase) = {
            let mut core = self.lock().await;
            let d = core.svc_state(service)?.current.clone().ok_or_else(|| {
                anyhow!("{service} has nothing deployed; run `switcher deploy` first")
            })?;
            if d.phase == Phase::Ready {
                // Already validated: flip now.
                core.flip_validated(service, d.id)?;
                self.spawn_watch(&mut core, service, false);
            } else {
                core.step(
                    service,
                    Some(d.id),
                    Step::StartValidation,
                    actor,
                    "promote requested",
                    None,
                )?;
                core.save()?;
                self.spawn_validation(&mut core, service, d.id);
            }
            (d.id, core.current(service).map_or(d.phase, |d| d.phase))
        };
        match wait {
            None => Ok(Promotion::Started {
                deployment: id,
                phase,
            }),
            Some(timeout) => Ok(Promotion::Settled(
                self.wait_promoted(service, id, timeout).await?,
            )),
        }
    }

    /// Validates the deployed candidate for the fleet: a pass stops at `ready` without a
    /// flip (the fleet's driver flips every host once all passed). Returns the deployment's
    /// id; one validating or ready already is left as it is.
    pub async fn validate(&self, service: &str, actor: &str) -> Result<u64> {
        let mut core = self.lock().await;
        let d = core.svc_state(service)?.current.clone().ok_or_else(|| {
            anyhow!("{service} has nothing deployed; run `switcher deploy` first")
        })?;
        if matches!(d.phase, Phase::Validating | Phase::Ready) {
            return Ok(d.id);
        }
        core.step(
            service,
            Some(d.id),
            Step::StartValidation,
            actor,
            "fleet validation requested",
            None,
        )?;
        core.held.insert(service.to_string());
        core.save()?;
        self.spawn_validation(&mut core, service, d.id);
        Ok(d.id)
    }

    /// Deployment `id` of `service`, open or finished.
    pub async fn deployment(&self, service: &str, id: u64) -> Option<Deployment> {
        self.lock().await.deployment(service, id)
    }

    /// Manual flip; an unvalidated colour needs `force` and a reason. `accepted` is when the
    /// request arrived: the time to the map write is recorded and returned.
    pub async fn flip(
        &self,
        service: &str,
        to: Color,
        force: bool,
        reason: Option<String>,
        actor: &str,
        accepted: Accepted,
    ) -> Result<FlipReply> {
        let entered = Instant::now();
        // Preemptions are counted over the two stretches without an await (so on one thread
        // each): up to here, and from the lock taken to the map written.
        let before_lock = accepted.preempted_since();
        let mut core = self.lock().await;
        let locked = Instant::now();
        let at_lock = preemptions();
        let f = core.flip(service, to, force, reason, actor)?;
        let under_lock = preemptions()
            .zip(at_lock)
            .map(|(now, then)| now.saturating_sub(then));
        let (started, written) = (f.times.started, f.times.written);
        let ns = |from: Instant, to: Instant| to.saturating_duration_since(from).as_nanos() as u64;
        let stages_ns = FlipStages {
            route: ns(accepted.at, entered),
            lock: ns(entered, locked),
            check: ns(locked, started),
            write: ns(started, written),
            preempted: before_lock.zip(under_lock).map(|(a, b)| a + b),
        };
        let api_to_map = written.saturating_duration_since(accepted.at);
        if f.outcome.changed {
            self.0
                .out
                .recorded
                .flip_api
                .observe(api_to_map.as_secs_f64());
        }
        // A flip that promoted starts the watch; so does any flip while a promoted
        // deployment has none (its earlier watch could not roll back).
        if f.promoted || core.is_promoted_unwatched(service) {
            self.spawn_watch(&mut core, service, false);
        }
        Ok(FlipReply {
            outcome: f.outcome,
            api_to_map_ns: api_to_map.as_nanos() as u64,
            stages_ns,
        })
    }

    /// Back to the previous colour at once (it was kept warm).
    pub async fn rollback(&self, service: &str, actor: &str) -> Result<Deployment> {
        self.lock()
            .await
            .rollback(service, actor, "rollback requested", None)
    }

    /// Cancels a deployment that has not been flipped to.
    pub async fn abort(&self, service: &str, actor: &str) -> Result<Deployment> {
        self.lock().await.abort(service, actor)
    }

    /// Each service's colour and generation as its maps have them: the active word only,
    /// no flow-table walk (the fleet agent reports this every few seconds, and `status`
    /// counts every open connection under the controller's lock).
    pub async fn colours(&self) -> Result<BTreeMap<String, (Color, u32)>> {
        let core = self.lock().await;
        core.ids
            .iter()
            .map(|(name, id)| {
                let r = core.dp.read(*id)?;
                Ok((name.clone(), (r.active_color(), r.active.generation())))
            })
            .collect()
    }

    /// `service`'s colour as its maps have it (see [`Controller::colours`]).
    pub async fn colour(&self, service: &str) -> Result<Color> {
        let core = self.lock().await;
        Ok(core.dp.read(core.id(service)?)?.active_color())
    }

    /// `service`'s deployment in progress (or last finished and not archived), if any.
    pub async fn current_deployment(&self, service: &str) -> Option<Deployment> {
        self.lock().await.current(service).cloned()
    }

    /// Every service as it runs now: the config with each colour's deployed pool.
    pub async fn effective_services(&self) -> Vec<crate::config::Service> {
        let core = self.lock().await;
        core.state.effective(&core.cfg)
    }

    /// Every deployment of `service`, oldest first, the open one last.
    pub async fn history(&self, service: &str) -> Result<Vec<Deployment>> {
        self.lock().await.history(service)
    }

    /// Re-reads the config file; an invalid one changes nothing.
    pub async fn reload(&self, actor: &str) -> Result<ReloadSummary> {
        let r = self.lock().await.reload(actor);
        self.recorded().reload(r.is_ok());
        r
    }

    /// Applies `cfg` as a reload would (the fleet's definitions; `cfg` was validated whole).
    pub async fn apply_config(&self, cfg: Config, actor: &str) -> Result<ReloadSummary> {
        self.lock().await.apply_config(cfg, actor)
    }

    /// The services as they would run with `cfg` (its definitions with each colour's
    /// deployed pool), changing nothing.
    pub async fn preview(&self, cfg: &Config) -> Vec<crate::config::Service> {
        let core = self.lock().await;
        let mut state = core.state.clone();
        state.settle(cfg);
        state.effective(cfg)
    }

    /// The config file this controller was started from.
    pub async fn config_path(&self) -> PathBuf {
        self.lock().await.cfg_path.clone()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.out.subscribe()
    }

    /// The services as the metrics and the dashboard see them, rebuilt only after a change.
    pub async fn catalog(&self) -> Arc<Vec<CatalogEntry>> {
        let core = self.lock().await;
        self.0.catalog.get_or_build(self.0.out.change_count(), || {
            core.state
                .effective(&core.cfg)
                .iter()
                .filter_map(|s| {
                    let id = *core.ids.get(&s.name)?;
                    let st = core.state.services.get(&s.name)?;
                    Some(CatalogEntry::new(
                        s,
                        id,
                        st,
                        core.state.history.get(&s.name),
                    ))
                })
                .collect()
        })
    }

    /// Flips, rollbacks, validations and flip latencies as they happened.
    pub fn recorded(&self) -> &Recorded {
        &self.0.out.recorded
    }

    /// The health monitor's latest probe of every backend.
    pub fn health(&self) -> &HealthBoard {
        &self.0.health
    }

    /// Starts probing every backend each `interval` into [`Controller::health`], for the
    /// metrics and the dashboard (the daemon starts it once those are served). Stopped by
    /// [`Controller::shutdown`].
    pub fn start_health_monitor(&self, interval: Duration) {
        let task = tokio::spawn(monitor::run(self.clone(), self.health().clone(), interval));
        self.keep_background("health monitor", task.abort_handle());
    }

    /// Starts removing closed, idle and orphaned connections from the protected flow table
    /// every `every`, on the sweeper's own map handles (outside the controller's lock).
    /// Stopped by [`Controller::shutdown`].
    pub fn start_flow_sweeper(
        &self,
        mut sweeper: FlowSweeper,
        policy: FlowPolicy,
        every: Duration,
    ) {
        // A weak handle: the task must not keep a controller alive that everyone else let go.
        let ctl = Arc::downgrade(&self.0);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (back, result) = match tokio::task::spawn_blocking(move || {
                    let r = sweeper.sweep(&policy).and_then(|s| {
                        let walked_at = std::time::Instant::now();
                        Ok((s, sweeper.drained_members(&policy)?, walked_at))
                    });
                    (sweeper, r)
                })
                .await
                {
                    Ok(done) => done,
                    Err(e) => {
                        error!("the flow sweeper stopped: {e}");
                        return;
                    }
                };
                sweeper = back;
                let Some(ctl) = ctl.upgrade().map(Controller) else {
                    return;
                };
                match result {
                    Ok((sweep, drained, walked_at)) => {
                        ctl.recorded().swept(&sweep);
                        if !drained.is_empty() {
                            if let Err(e) = ctl.lock().await.retire_drained(&drained, walked_at) {
                                warn!("letting go of drained members: {e:#}");
                            }
                        }
                    }
                    Err(e) => warn!("sweeping the flow table: {e:#}"),
                }
            }
        });
        self.keep_background("flow sweeper", task.abort_handle());
    }

    fn keep_background(&self, name: &'static str, task: tokio::task::AbortHandle) {
        let mut tasks = self
            .0
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = tasks.insert(name, task) {
            old.abort();
        }
    }

    /// Re-reads which interfaces accept redirected XDP frames (it changes with drivers, XDP
    /// programs and GRO settings) and tells the datapath. Asked outside the lock.
    pub async fn refresh_redirect_targets(&self) {
        let targets = tokio::task::spawn_blocking(redirect_targets)
            .await
            .unwrap_or_default();
        self.lock().await.set_redirect_targets(&targets);
    }

    /// Stops every task, ends canary shares (none may outlive the daemon that watches it) and
    /// lets go of the datapath: detached, or left attached and pinned for the next daemon.
    pub async fn shutdown(&self, keep_attached: bool) -> Result<()> {
        let background = std::mem::take(
            &mut *self
                .0
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in background.into_values() {
            task.abort();
        }
        let mut core = self.lock().await;
        core.abort_tasks();
        let cleared = core.clear_canaries();
        core.close_datapath(keep_attached)?;
        cleared
    }

    // ---- what the tasks report ----

    fn spawn_validation(&self, core: &mut Core, service: &str, id: u64) {
        let (ctl, name) = (self.clone(), service.to_string());
        let task = tokio::spawn(async move {
            let verdict = validate::run(&ctl, &name, id).await;
            if let Err(e) = ctl.validation_finished(&name, id, verdict).await {
                error!(service = %name, deployment = id, "recording the validation: {e:#}");
            }
        });
        core.set_task(service, task.abort_handle());
    }

    fn spawn_watch(&self, core: &mut Core, service: &str, resumed: bool) {
        let (ctl, name) = (self.clone(), service.to_string());
        let task = tokio::spawn(async move {
            if let Err(e) = watch::run(&ctl, &name, resumed).await {
                ctl.watch_failed(&name, e).await;
            }
        });
        core.set_task(service, task.abort_handle());
    }

    /// Waits until deployment `id` of `service` is flipped to, or its validation ended
    /// without a flip (an error saying why), or `timeout` passed.
    async fn wait_promoted(&self, service: &str, id: u64, timeout: Duration) -> Result<Deployment> {
        let start = Instant::now();
        loop {
            let (d, mut rx) = {
                let core = self.lock().await;
                let d = core
                    .deployment(service, id)
                    .ok_or_else(|| anyhow!("deployment {id} disappeared"))?;
                (d, self.subscribe())
            };
            match d.phase {
                Phase::Validating | Phase::Ready => {}
                Phase::Rejected => {
                    let why = d.last().map_or(String::new(), |t| t.reason.clone());
                    bail!("validation of deployment {id} failed: {why}");
                }
                Phase::Aborted => bail!("deployment {id} was aborted"),
                _ => return Ok(d),
            }
            let left = timeout
                .checked_sub(start.elapsed())
                .ok_or_else(|| anyhow!("timed out waiting for deployment {id}"))?;
            // Any event may be ours; re-check the state after each.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), rx.recv()).await;
        }
    }
}

/// The interfaces that accept redirected frames now; on failure none, so every packet takes
/// the slower but safe kernel path.
fn redirect_targets() -> Vec<u32> {
    match xdp_features::redirect_targets() {
        Ok(t) => t,
        Err(e) => {
            warn!("{e:#}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod wire {
    use super::*;

    /// The replies the socket and the dashboard send are documents scripts parse.
    #[test]
    fn promote_and_flip_replies_keep_their_shape() {
        let started = Promotion::Started {
            deployment: 3,
            phase: Phase::Validating,
        };
        assert_eq!(
            serde_json::to_value(started).expect("json"),
            serde_json::json!({"deployment": 3, "phase": "validating"})
        );
        let d = Deployment::new(
            3,
            "u",
            Color::Green,
            vec![crate::config::Member::new(
                "198.18.2.2:514".parse().expect("addr"),
            )],
            None,
            "cli:t",
            5,
        );
        assert_eq!(
            serde_json::to_value(Promotion::Settled(d.clone())).expect("json"),
            serde_json::to_value(d).expect("json"),
            "a settled promotion is the deployment itself"
        );
        let reply = FlipReply {
            outcome: FlipOutcome {
                from: Color::Blue,
                to: Color::Green,
                generation: 2,
                flip_ns: 9,
                changed: true,
            },
            api_to_map_ns: 41_000,
            stages_ns: FlipStages {
                route: 20_000,
                lock: 1_000,
                check: 15_000,
                write: 5_000,
                preempted: Some(1),
            },
        };
        assert_eq!(
            serde_json::to_value(reply).expect("json"),
            serde_json::json!({"from": "blue", "to": "green", "generation": 2, "flip_ns": 9,
                "changed": true, "api_to_map_ns": 41000,
                "stages_ns": {"route": 20000, "lock": 1000, "check": 15000, "write": 5000,
                    "preempted": 1}})
        );
    }
}
