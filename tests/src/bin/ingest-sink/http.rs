//! HTTP: `/health`, `/metrics` (OpenMetrics), `/stats` (JSON) and `GET`/`POST /fault`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::encoding::text::encode;
use serde::Serialize;
use tracing::info;

use crate::{fault::FaultUpdate, metrics::SinkState, LOG_TARGET};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Serialize)]
struct Stats<'a> {
    name: &'a str,
    udp_messages: u64,
    tcp_messages: u64,
    errors: u64,
    tcp_connections: i64,
}

pub(crate) fn router(shared: Arc<SinkState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/fault", get(get_fault).post(post_fault))
        .with_state(shared)
}

async fn health(State(shared): State<Arc<SinkState>>) -> Response {
    if shared.faults.get().health_ok {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy (injected fault)\n",
        )
            .into_response()
    }
}

async fn get_fault(State(shared): State<Arc<SinkState>>) -> Response {
    Json(shared.faults.get()).into_response()
}

/// The body is read raw (not with axum's `Json`) so a request without a JSON
/// content type, e.g. `curl -d`, still works, and errors are plain text.
async fn post_fault(State(shared): State<Arc<SinkState>>, body: Bytes) -> Response {
    match FaultUpdate::parse(&body) {
        Ok(update) => {
            let settings = update.apply(shared.faults.get());
            shared.faults.set(settings);
            info!(target: LOG_TARGET, ?settings, "fault settings changed");
            Json(settings).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<SinkState>>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &shared.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response(),
    }
}

async fn stats(State(shared): State<Arc<SinkState>>) -> Response {
    Json(Stats {
        name: &shared.name,
        udp_messages: shared.udp.messages.get(),
        tcp_messages: shared.tcp.messages.get(),
        errors: shared.frame_errors.get(),
        tcp_connections: shared.tcp_connections.get(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fault::FaultSettings;

    async fn body_text(resp: Response) -> String {
        match axum::body::to_bytes(resp.into_body(), 1 << 16).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("<body error: {e}>"),
        }
    }

    #[tokio::test]
    async fn fault_endpoints_drive_health_and_metrics() {
        let shared = Arc::new(SinkState::new("blue", FaultSettings::default()));
        let resp = health(State(shared.clone())).await;
        assert_eq!(resp.status(), StatusCode::OK);

        let resp = post_fault(
            State(shared.clone()),
            Bytes::from_static(br#"{"health_ok": false, "errors_per_sec": 50}"#),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            body_text(resp).await,
            r#"{"health_ok":false,"ack_delay_ms":0,"errors_per_sec":50}"#
        );
        assert_eq!(
            health(State(shared.clone())).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let resp = post_fault(State(shared.clone()), Bytes::from_static(b"{\"bogus\": 1}")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(body_text(resp).await.contains("unknown field"));
        // A rejected update changes nothing.
        let resp = get_fault(State(shared.clone())).await;
        assert_eq!(
            body_text(resp).await,
            r#"{"health_ok":false,"ack_delay_ms":0,"errors_per_sec":50}"#
        );

        // The injected series exists from the start (a scrape before any fault sees 0) and
        // carries what the ticker adds: 50 errors/s (the fault set above) for about 300 ms.
        let exported = |shared: &SinkState| {
            let mut text = String::new();
            assert!(encode(&mut text, &shared.registry).is_ok());
            text.lines()
                .find_map(|l| l.strip_prefix("ingest_errors_total{reason=\"injected\"} "))
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(exported(&shared), Some(0));
        let ticker = tokio::spawn(crate::fault::inject_errors(shared.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        ticker.abort();
        let injected = exported(&shared).unwrap_or(0);
        assert!(
            (5..=30).contains(&injected),
            "injected {injected} in ~0.3 s at 50/s"
        );
        let mut text = String::new();
        assert!(encode(&mut text, &shared.registry).is_ok());
        assert!(
            text.contains("ingest_errors_total{reason=\"frame\"} 0"),
            "{text}"
        );
    }
}
