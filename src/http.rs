//! The HTTP listener of a node or a worker (`--metrics-listen`, also `--http-listen`):
//! `/metrics` in the OpenMetrics text format, which Prometheus scrapes, and `/health`. Plain
//! HTTP on its own port, apart from the gRPC ports, as etcd's `--listen-metrics-urls`. A node
//! also serves the web dashboard there (`crate::dash`), whose pages need a token when the node
//! has an auth file; `/metrics` and `/health` show counts and names of queues and members,
//! never a task, a payload or a secret.
use crate::metrics::{WorkerMetrics, CONTENT_TYPE};
use crate::node::Node;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Binds `addr` for the HTTP listener, naming what it is for in the error.
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (metrics and health over HTTP): {e}"))
}

/// The HTTP listener's address as others reach it: its own, or, when bound to every
/// interface, the host of the node's advertised client address with the listener's port.
pub fn advertised(bound: std::net::SocketAddr, client_advertise: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    match client_advertise.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    }
}

/// `/metrics`, answered with what `render` makes (OpenMetrics text) at each scrape.
fn metrics_route(render: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router {
    let answer = move || {
        let text = render();
        async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response() }
    };
    Router::new().route("/metrics", get(answer))
}

/// A node's routes: `/metrics`, `/health` (200 with a leader known, 503 without), and the
/// dashboard unless it is turned off.
pub fn node_routes(node: Arc<Node>, auth: Option<Arc<crate::auth::Auth>>) -> Router {
    let n = node.clone();
    let dash = node
        .config
        .dashboard
        .then(|| crate::dash::routes(node.clone(), auth));
    let routes = metrics_route(move || n.render_metrics()).route(
        "/health",
        get(move || {
            let node = node.clone();
            async move {
                let m = node.metrics();
                let body = serde_json::json!({
                    "node_id": node.id,
                    "leader_id": m.current_leader,
                    "term": m.current_term,
                    "applied_index": m.last_applied.map(|l| l.index).unwrap_or(0),
                    "clock_off": node.clocks.is_off(),
                });
                let code = if m.current_leader.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, axum::Json(body))
            }
        }),
    );
    match dash {
        Some(d) => routes.merge(d),
        None => routes,
    }
}

/// A worker's routes: `/metrics` and `/health` (always 200 while it runs).
pub fn worker_routes(metrics: Arc<WorkerMetrics>) -> Router {
    metrics_route(move || metrics.encode()).route(
        "/health",
        get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
    )
}

/// Serves `routes` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    routes: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
