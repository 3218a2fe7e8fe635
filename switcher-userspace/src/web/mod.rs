//! The daemon's HTTP listener: `/metrics` (OpenMetrics), the dashboard at `/` with its live
//! event stream, and the dashboard's actions (promote, flip, rollback), which need the token.
//! Connections, event streams and the time a request may take are bounded ([`listener`]).

pub mod assets;
pub mod auth;
pub mod listener;
pub mod snapshot;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
    controller::{Accepted, Controller},
    datapath::{monotonic_ns, xdp_attached, MapReader},
    domain::Color,
    fleet::{route, Fleet},
    telemetry::exposition,
};
use listener::Limits;

#[derive(Clone)]
struct App {
    ctl: Controller,
    /// Fleet mode: flips and rollbacks go to the fleet; `/api/fleet` and fleet metrics.
    fleet: Option<Fleet>,
    reader: Arc<MapReader>,
    token: Arc<String>,
    snapshots: watch::Receiver<Arc<String>>,
    /// Open event streams: snapshots are built only while someone watches.
    viewers: Arc<AtomicUsize>,
    /// f64 bits: how long the last scrape took.
    last_scrape: Arc<AtomicU64>,
    /// The interfaces the datapath is attached to (fixed for the daemon's life).
    interfaces: Arc<Vec<String>>,
    /// Listening on a loopback address: requests must name a loopback host too.
    loopback: bool,
    limits: Limits,
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: App,
    /// Where the snapshot publisher sends; `app.snapshots` receives.
    snapshots: watch::Sender<Arc<String>>,
}

impl Server {
    /// Binds `addr` (before anything else, so that a second daemon fails here without
    /// touching the token file). `maps_dir` is where the datapath's maps are pinned: scrapes
    /// read them through their own handles. The snapshot publisher starts with
    /// [`Server::serve`].
    pub async fn bind(
        addr: SocketAddr,
        ctl: Controller,
        maps_dir: &std::path::Path,
    ) -> Result<Self> {
        let reader = Arc::new(MapReader::open(maps_dir)?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {addr}"))?;
        if !addr.ip().is_loopback() {
            warn!(%addr, "metrics and dashboard listen beyond localhost");
        }
        let (tx, snapshots) = watch::channel(Arc::new(String::from("{}")));
        Ok(Self {
            listener,
            snapshots: tx,
            app: App {
                ctl,
                fleet: None,
                interfaces: Arc::new(Vec::new()),
                reader,
                token: Arc::new(String::new()),
                viewers: Arc::new(AtomicUsize::new(0)),
                loopback: addr.ip().is_loopback(),
                snapshots,
                last_scrape: Arc::new(AtomicU64::new(0)),
                limits: Limits::DEFAULT,
            },
        })
    }

    pub fn set_fleet(&mut self, fleet: Option<Fleet>) {
        self.app.fleet = fleet;
    }

    /// The interfaces whose XDP mode the metrics report.
    pub fn set_interfaces(&mut self, interfaces: Vec<String>) {
        self.app.interfaces = Arc::new(interfaces);
    }

    /// The token mutating actions need; until it is set every action is refused.
    pub fn set_token(&mut self, token: String) {
        self.app.token = Arc::new(token);
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the task is aborted.
    pub async fn serve(self) -> Result<()> {
        let app = self.app;
        // Aborted with this future: the daemon aborts the listener at shutdown.
        let _publisher = AbortOnDrop(tokio::spawn(snapshot::run(
            app.ctl.clone(),
            app.reader.clone(),
            self.snapshots,
            app.viewers.clone(),
        )));
        let (loopback, limits) = (app.loopback, app.limits);
        let router = Router::new()
            .route("/", get(assets::index))
            .route("/assets/:file", get(assets::file))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/api/snapshot", get(snapshot_json))
            .route("/api/events", get(events))
            .route("/api/fleet", get(fleet_json))
            .route("/api/services/:name/:action", post(action))
            .with_state(app);
        listener::serve(self.listener, protect(router, loopback, limits), limits).await;
        Ok(())
    }
}

/// `router` behind the listener's guards: the host check and security headers, and the
/// request deadline.
fn protect(router: Router, loopback: bool, limits: Limits) -> Router {
    router
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            listener::deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(loopback, guard))
}

/// Every response's policy: the page's own scripts and styles only, and no framing by any
/// other page (clickjacking the action buttons).
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// Refuses requests for another host name on a loopback listener (a page on some web site
/// that rebinds its DNS name to 127.0.0.1 must not read the dashboard), and keeps every page
/// to its own origin's scripts.
async fn guard(
    State(loopback): State<bool>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_name);
    let foreign = loopback && host.is_some_and(|h| !matches!(h, "localhost" | "127.0.0.1" | "::1"));
    let mut resp = if foreign {
        error(
            StatusCode::FORBIDDEN,
            "this listener answers only to localhost".into(),
        )
    } else {
        next.run(req).await
    };
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    resp
}

/// The name part of a Host header: `[::1]:9477` -> `::1`, `localhost:9477` -> `localhost`.
fn host_name(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.split(':').next().unwrap_or(h)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long `/healthz` waits for the controller before it calls the daemon unhealthy.
const HEALTHZ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// `/healthz`: 200 when the controller answers and every service's colour can be read from
/// the datapath within [`HEALTHZ_DEADLINE`], else 503 with the reason: a daemon that is up but
/// wedged or lost its maps is not healthy.
async fn healthz(State(app): State<App>) -> Response {
    match tokio::time::timeout(HEALTHZ_DEADLINE, app.ctl.colours()).await {
        Ok(Ok(services)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ok", "services": services.len() })),
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unhealthy", "error": format!("{e:#}") })),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unhealthy",
                "error": format!("the controller did not answer within {HEALTHZ_DEADLINE:?}"),
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let started = Instant::now();
    let catalog = app.ctl.catalog().await;
    let recorded = app.ctl.recorded().clone();
    let reader = app.reader.clone();
    let interfaces = app.interfaces.clone();
    let health = app.ctl.health().snapshot();
    let fleet = match &app.fleet {
        Some(f) => Some(fleet_sample(f).await),
        None => None,
    };
    let previous = f64::from_bits(app.last_scrape.load(Ordering::Relaxed));
    // Map reads are syscalls: keep them off the async workers.
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        let ids: Vec<u32> = catalog.iter().map(|e| e.id).collect();
        let data = exposition::ScrapeData {
            readings: reader.readings(&ids)?,
            catalog,
            health,
            mono_ns: monotonic_ns()?,
            wall: SystemTime::now(),
            previous_scrape_seconds: previous,
            fleet,
            xdp: xdp_modes(&interfaces),
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

/// The XDP mode on each interface (`none` for one that is gone); one the kernel does not
/// answer for is left out and logged.
fn xdp_modes(interfaces: &[String]) -> Vec<(String, xdp_attached::Attached)> {
    interfaces
        .iter()
        .filter_map(|i| match xdp_attached::query(i) {
            Ok((mode, _)) => Some((i.clone(), mode)),
            Err(e) => {
                warn!("reading the XDP mode of {i}: {e:#}");
                None
            }
        })
        .collect()
}

/// The fleet as etcd has it (fleet mode), for the dashboard's fleet view; a single host
/// answers `{"enabled": false}` (not an error: the page asks every host).
async fn fleet_json(State(app): State<App>) -> Response {
    match &app.fleet {
        Some(f) => Json(f.status().await).into_response(),
        None => Json(serde_json::json!({ "enabled": false })).into_response(),
    }
}

/// What a scrape shows of fleet mode: this host's link to etcd and, while connected, how
/// many hosts drift.
async fn fleet_sample(f: &Fleet) -> exposition::FleetSample {
    let m = f.membership();
    let status = if m.connected {
        Some(f.status().await)
    } else {
        None
    };
    exposition::FleetSample {
        connected: m.connected,
        reconnects: m.reconnects,
        revisions: m.revisions,
        hosts: status.filter(|s| s.connected).map(|s| {
            (
                s.hosts.iter().filter(|h| h.connected).count() as u64,
                s.in_drift as u64,
            )
        }),
    }
}

async fn snapshot_json(State(app): State<App>) -> Response {
    // Built fresh: the published snapshot is stale while nobody watches the event stream.
    match snapshot::build(&app.ctl, &app.reader, &Default::default()).await {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// Counts an open event stream for as long as it lives.
struct Viewer(Arc<AtomicUsize>);

impl Viewer {
    /// One more stream, unless `max` are open already.
    fn try_new(n: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            (v < max).then_some(v + 1)
        })
        .ok()?;
        Some(Self(n.clone()))
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server-sent events: the current snapshot at once, then every new one. At most
/// `limits.event_streams` at once: each holds a connection and a subscriber.
async fn events(State(app): State<App>) -> Response {
    let Some(viewer) = Viewer::try_new(&app.viewers, app.limits.event_streams) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open already: close a dashboard",
                app.limits.event_streams
            ),
        );
    };
    // The first event is built now: the published snapshot may be old if nobody watched.
    let first = snapshot::build(&app.ctl, &app.reader, &Default::default())
        .await
        .ok();
    let rx = app.snapshots.clone();
    let stream =
        futures_util::stream::unfold((rx, first, viewer), |(mut rx, first, viewer)| async move {
            let doc = match first {
                Some(doc) => Arc::new(doc),
                None => {
                    rx.changed().await.ok()?;
                    rx.borrow_and_update().clone()
                }
            };
            let ev = SseEvent::default().event("snapshot").data(doc.as_str());
            Some((Ok::<_, Infallible>(ev), (rx, None, viewer)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
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
    // The catalog is awaited before the flip: its preemptions cannot be counted.
    let accepted = Accepted::untracked();
    if !auth::authorized(&headers, &app.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this action needs the dashboard token (Authorization: Bearer ...)".into(),
        );
    }
    if !app.ctl.catalog().await.iter().any(|e| e.name == service) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no service named {service:?}"),
        );
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let actor = format!("dashboard:{peer}");
    let result = match action.as_str() {
        "promote" => route::promote(app.fleet.as_ref(), &app.ctl, &service, None, &actor).await,
        "rollback" => {
            route::rollback(
                app.fleet.as_ref(),
                &app.ctl,
                &service,
                false,
                None,
                false,
                &actor,
            )
            .await
        }
        "flip" => {
            let Some(to) = body.to else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "flip needs {\"to\": \"blue\"|\"green\"}".into(),
                );
            };
            route::flip(
                app.fleet.as_ref(),
                &app.ctl,
                &service,
                to,
                body.force,
                body.reason,
                false,
                &actor,
                accepted,
            )
            .await
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: promote, flip or rollback"),
            )
        }
    };
    match result {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The head of the response to `GET /` with `host`, through the listener and the guards.
    async fn head(host: &str) -> String {
        let router = Router::new().route("/", get(|| async { "page" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits::DEFAULT;
        let server = tokio::spawn(listener::serve(
            listener,
            protect(router, true, limits),
            limits,
        ));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut all = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut all))
            .await
            .expect("answered")
            .expect("read");
        server.abort();
        all.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_lowercase()
    }

    #[tokio::test]
    async fn every_response_forbids_framing_and_foreign_hosts_are_refused() {
        let ok = head("localhost:9477").await;
        assert!(ok.starts_with("http/1.1 200"), "{ok}");
        let csp = ok
            .lines()
            .find(|l| l.starts_with("content-security-policy:"))
            .unwrap_or_else(|| panic!("no CSP: {ok}"));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        let refused = head("evil.example").await;
        assert!(refused.starts_with("http/1.1 403"), "{refused}");
        assert!(
            refused.contains("frame-ancestors 'none'"),
            "refusals carry the policy too: {refused}"
        );
    }

    #[test]
    fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
        let n = Arc::new(AtomicUsize::new(0));
        let open: Vec<Viewer> = (0..3)
            .map(|_| Viewer::try_new(&n, 3).expect("under the cap"))
            .collect();
        assert!(Viewer::try_new(&n, 3).is_none(), "a fourth is refused");
        assert_eq!(n.load(Ordering::Relaxed), 3);
        drop(open);
        assert_eq!(n.load(Ordering::Relaxed), 0);
        assert!(Viewer::try_new(&n, 3).is_some());
    }

    #[test]
    fn host_names() {
        assert_eq!(super::host_name("127.0.0.1:9477"), "127.0.0.1");
        assert_eq!(super::host_name("localhost"), "localhost");
        assert_eq!(super::host_name("[::1]:9477"), "::1");
        assert_eq!(super::host_name("[::1]"), "::1");
        assert_eq!(super::host_name("evil.example:9477"), "evil.example");
    }
}
