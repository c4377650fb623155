//! The gRPC edge: public services (scheduler, worker, admin), the internal Raft service, health
//! and reflection, all on one port.
mod admin;
pub mod convert;
mod error;
mod raft_service;
pub(crate) mod scheduler;
pub mod validate;
mod worker;

pub use admin::node_status;
pub use worker::advised_interval_ms;

use crate::node::Node;
use crate::proto::{self, raft_v1::raft_server::RaftServer, v1};
use crate::state::State;
use std::sync::Arc;
use tonic::Status;

const MAX_MESSAGE_BYTES: usize = 64 << 20;

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

/// Serves every gRPC service of `node` on `listener` until the node shuts down.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
) -> Result<(), tonic::transport::Error> {
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
    let mut stop = node.shutdown_signal();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(
            RaftServer::new(raft_service::RaftSvc { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            v1::scheduler_server::SchedulerServer::new(scheduler::SchedulerSvc {
                node: node.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            v1::worker_server::WorkerServer::new(worker::WorkerSvc { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(v1::admin_server::AdminServer::new(admin::AdminSvc {
            node: node.clone(),
        }))
        .serve_with_incoming_shutdown(
            // `tcp_nodelay` above only covers listeners tonic binds itself: without it here,
            // Nagle + delayed ACK add ~40 ms to small answers.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |s| {
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                },
            ),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await
}
