//! What the controller tells the world as things happen: events for `switcher watch` and the
//! dashboard, the metrics it records, and a change counter that marks cached views stale.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::info;

use super::recorded::Recorded;
use crate::{
    config::describe,
    deploy::{Deployment, Phase},
};

/// The actor of what the controller does by itself (validation verdicts, watch rollbacks).
pub const AUTO: &str = "auto";

/// Something that happened, as `switcher watch` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub service: String,
    #[serde(default)]
    pub deployment: Option<u64>,
    pub kind: String,
    #[serde(default)]
    pub phase: Option<Phase>,
    pub actor: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

/// The controller's outputs, shared by the controller and its tasks.
#[derive(Clone)]
pub(crate) struct Outputs {
    events: broadcast::Sender<Event>,
    pub recorded: Recorded,
    /// Bumped by every persisted change and every event: cached views are stale when it moves.
    changes: Arc<AtomicU64>,
}

impl Outputs {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            events,
            recorded: Recorded::default(),
            changes: Arc::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn change_count(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    pub fn emit(&self, ev: Event) {
        self.changed();
        info!(service = %ev.service, kind = %ev.kind, actor = %ev.actor, "{}", ev.message);
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    /// The event of `d`'s last transition.
    pub fn transition(&self, d: &Deployment) {
        if let Some(t) = d.last() {
            self.emit(Event {
                at_ms: t.at_ms,
                service: d.service.clone(),
                deployment: Some(d.id),
                kind: "transition".into(),
                phase: Some(t.to),
                actor: t.actor.clone(),
                message: format!(
                    "deployment {} ({} {}): {} — {}",
                    d.id,
                    d.color,
                    describe(&d.members),
                    t.to,
                    t.reason
                ),
                evidence: t.evidence.clone(),
            });
        }
    }
}
