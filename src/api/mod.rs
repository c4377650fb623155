//! The gRPC edge: the client port (scheduler, worker and admin services, health, reflection)
//! and the peer port (the internal Raft service, members only).
mod admin;
pub mod convert;
mod error;
mod health_watch;
mod observe;
mod raft_service;
pub(crate) mod scheduler;
pub mod validate;
mod worker;

pub(crate) use admin::cluster_status;
pub use admin::node_status;
pub use worker::advised_interval_ms;

use crate::node::Node;
use crate::proto::{self, raft_v1::raft_server::RaftServer, v1};
use crate::state::State;
use crate::tls::ServerTls;
use std::sync::Arc;
use tonic::Status;

/// Headroom over a request's largest field for everything else in it (ids, names, the
/// error text of a report: up to 64 KiB).
const REQUEST_HEADROOM_BYTES: usize = 128 << 10;
/// The Admin service's requests are small (ids and addresses).
const ADMIN_MAX_REQUEST_BYTES: usize = 16 << 10;
/// Streams one client connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 pings find dead connections (and the streams held on them) within about this long.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest answer the server may send: the largest legal task (payload, progress and
/// result at their caps, 64 attempt records with 64 KiB errors: about 7 MiB) fits twice. The
/// bundled clients accept answers up to this size.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Runs a linearizable (default) or stale read against the applied state; returns the value and
/// the revision it reflects.
pub(crate) async fn read<T>(
    node: &Node,
    consistency: i32,
    f: impl FnOnce(&State) -> T,
) -> Result<(T, u64), Status> {
    if consistency != v1::ReadConsistency::Stale as i32 {
        node.read_barrier().await.map_err(error::node)?;
    }
    let a = node.shared.read();
    Ok((f(&a.state), a.state.last_revision()))
}

/// Accepted connections with Nagle off: `tcp_nodelay` on the builder only covers listeners
/// tonic binds itself, and Nagle + delayed ACK add ~40 ms to small answers.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |s| {
            if let Ok(s) = &s {
                let _ = s.set_nodelay(true);
            }
            s
        },
    )
}

/// The settings both ports share: Nagle off, HTTP/2 pings, a cap on streams per connection.
fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
}

/// Serves the peer port: the internal Raft service, to members only, until the node shuts
/// down.
pub async fn serve_peer(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> Result<(), tonic::transport::Error> {
    let router = server_builder().add_service(
        RaftServer::new(raft_service::RaftSvc { node: node.clone() })
            .max_decoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::network::MAX_MESSAGE_BYTES),
    );
    serve_until_shutdown(&node, router, listener, tls).await
}

/// Serves `router` on `listener` (TLS if given) until the node shuts down.
async fn serve_until_shutdown(
    node: &Node,
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> Result<(), tonic::transport::Error> {
    let mut stop = node.shutdown_signal();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(crate::tls::accept(listener, tls), stopped)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), stopped)
                .await
        }
    }
}

/// The span of one call on the client port, continuing the caller's trace (its `traceparent`),
/// when spans are exported.
fn rpc_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let path = req.uri().path();
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path,
        otel.kind = "server",
        rpc = %path,
        trace_id = tracing::field::Empty,
    );
    let md = tonic::metadata::MetadataMap::from_headers(req.headers().clone());
    crate::trace::adopt(&span, crate::trace::extract(&md));
    span
}

/// Serves the client port (every public service, health and reflection) until the node
/// shuts down.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    auth: Option<Arc<crate::auth::Auth>>,
) -> Result<(), tonic::transport::Error> {
    let l = &node.config.limits;
    let submit_max = l.max_payload_bytes + REQUEST_HEADROOM_BYTES;
    let report_max = l.max_payload_bytes.max(l.max_result_bytes) + REQUEST_HEADROOM_BYTES;
    let (mut health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<v1::scheduler_server::SchedulerServer<scheduler::SchedulerSvc>>()
        .await;
    health
        .set_serving::<v1::worker_server::WorkerServer<worker::WorkerSvc>>()
        .await;
    health
        .set_serving::<v1::admin_server::AdminServer<admin::AdminSvc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptors are valid");
    tokio::spawn(health_watch::watch_raft(node.clone(), health.clone()));
    let router = server_builder()
        .trace_fn(rpc_span)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(
            v1::scheduler_server::SchedulerServer::new(scheduler::SchedulerSvc {
                node: node.clone(),
                auth: auth.clone(),
                watchers: validate::StreamSlots::new("watch", l.max_watchers),
            })
            .max_decoding_message_size(submit_max)
            .max_encoding_message_size(MAX_ANSWER_BYTES),
        )
        .add_service(
            v1::worker_server::WorkerServer::new(worker::WorkerSvc {
                node: node.clone(),
                auth: auth.clone(),
                heartbeats: validate::StreamSlots::new("heartbeat", l.max_heartbeat_streams),
            })
            .max_decoding_message_size(report_max)
            .max_encoding_message_size(MAX_ANSWER_BYTES),
        )
        .add_service(
            v1::admin_server::AdminServer::new(admin::AdminSvc {
                node: node.clone(),
                auth: auth.clone(),
            })
            .max_decoding_message_size(ADMIN_MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_ANSWER_BYTES),
        );
    serve_until_shutdown(&node, router, listener, tls).await
}
