//! The daemon's HTTP listener: `/metrics` (OpenMetrics), the dashboard at `/` with its live
//! event stream, and the dashboard's actions (promote, flip, rollback), which need the token.

pub mod assets;
pub mod auth;
pub mod snapshot;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use axum::{
    extract::{ConnectInfo, Path, State},
    http::{header, HeaderMap, StatusCode},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    api::Request,
    config::Color,
    controller::Shared,
    telemetry::{exposition, health::HealthBoard, maps::MapReader},
};

#[derive(Clone)]
struct App {
    shared: Shared,
    reader: Arc<MapReader>,
    health: HealthBoard,
    token: Arc<String>,
    snapshots: watch::Receiver<Arc<String>>,
    /// f64 bits: how long the last scrape took.
    last_scrape: Arc<AtomicU64>,
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: App,
}

impl Server {
    /// Binds `addr` and prepares the routes. The health monitor and the snapshot publisher
    /// start with [`Server::serve`].
    pub async fn bind(
        addr: SocketAddr,
        shared: Shared,
        maps_dir: &std::path::Path,
        token: String,
    ) -> Result<Self> {
        let reader = Arc::new(MapReader::open(maps_dir)?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {addr}"))?;
        if !addr.ip().is_loopback() {
            warn!(%addr, "metrics and dashboard listen beyond localhost");
        }
        let (_, snapshots) = watch::channel(Arc::new(String::from("{}")));
        Ok(Self {
            listener,
            app: App {
                shared,
                reader,
                health: HealthBoard::default(),
                token: Arc::new(token),
                snapshots,
                last_scrape: Arc::new(AtomicU64::new(0)),
            },
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the task is aborted.
    pub async fn serve(self) -> Result<()> {
        let mut app = self.app;
        let (tx, rx) = watch::channel(Arc::new(String::from("{}")));
        app.snapshots = rx;
        // Aborted with this future: the daemon aborts the listener at shutdown.
        let _tasks = AbortOnDrop(vec![
            tokio::spawn(crate::telemetry::health::monitor(
                app.shared.clone(),
                app.health.clone(),
            )),
            tokio::spawn(snapshot::run(
                app.shared.clone(),
                app.reader.clone(),
                app.health.clone(),
                tx,
            )),
        ]);
        let router = Router::new()
            .route("/", get(assets::index))
            .route("/assets/:file", get(assets::file))
            .route("/metrics", get(metrics))
            .route("/api/snapshot", get(snapshot_json))
            .route("/api/events", get(events))
            .route("/api/services/:name/:action", post(action))
            .with_state(app);
        axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .context("HTTP listener")
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let started = Instant::now();
    let (catalog, recorded) = {
        let c = app.shared.lock().await;
        (c.catalog(), c.recorded.clone())
    };
    let reader = app.reader.clone();
    let health = app.health.snapshot();
    let previous = f64::from_bits(app.last_scrape.load(Ordering::Relaxed));
    // Map reads are syscalls: keep them off the async workers.
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        let ids: Vec<u32> = catalog.iter().map(|e| e.id).collect();
        let sample = reader.sample(&ids)?;
        let data = exposition::ScrapeData {
            catalog,
            sample,
            health,
            mono_ns: crate::datapath::monotonic_ns()?,
            wall: SystemTime::now(),
            previous_scrape_seconds: previous,
        };
        exposition::encode(data, &recorded).map_err(|_| anyhow::anyhow!("encoding metrics"))
    })
    .await;
    app.last_scrape
        .store(started.elapsed().as_secs_f64().to_bits(), Ordering::Relaxed);
    match body {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scrape task: {e}"),
        ),
    }
}

async fn snapshot_json(State(app): State<App>) -> Response {
    let doc = app.snapshots.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// Server-sent events: the current snapshot at once, then every new one.
async fn events(
    State(app): State<App>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = app.snapshots.clone();
    rx.mark_changed();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let doc = rx.borrow_and_update().clone();
        Some((
            Ok(SseEvent::default().event("snapshot").data(doc.as_str())),
            rx,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Deserialize, Default)]
struct ActionBody {
    to: Option<Color>,
    #[serde(default)]
    force: bool,
    reason: Option<String>,
}

async fn action(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((service, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<ActionBody>>,
) -> Response {
    let accepted = Instant::now();
    if !auth::authorized(&headers, &app.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this action needs the dashboard token (Authorization: Bearer ...)".into(),
        );
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let req = match action.as_str() {
        "promote" => Request::Promote {
            service: service.clone(),
            wait: false,
        },
        "rollback" => Request::Rollback {
            service: service.clone(),
        },
        "flip" => {
            let Some(to) = body.to else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "flip needs {\"to\": \"blue\"|\"green\"}".into(),
                );
            };
            Request::Flip {
                service: service.clone(),
                to,
                force: body.force,
                reason: body.reason,
            }
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: promote, flip or rollback"),
            )
        }
    };
    let actor = format!("dashboard:{peer}");
    match crate::daemon::handle(&app.shared, req, &actor, accepted).await {
        Ok(v) => {
            info!(%service, %action, %actor, "dashboard action");
            Json(serde_json::json!({ "ok": true, "result": v })).into_response()
        }
        Err(e) => error(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (
        code,
        Json(serde_json::json!({ "ok": false, "error": message })),
    )
        .into_response()
}
