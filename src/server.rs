//! Running a node inside another program: the embedding entry point.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use leasekeeper::{node::NodeConfig, server::Server};
//! let mut config = NodeConfig::default();
//! config.id = 1;
//! config.listen = "127.0.0.1:7001".into();
//! config.initial_cluster = [(1, "127.0.0.1:7001".to_string())].into();
//! let server = Server::start(config).await?;
//! let client = leasekeeper::client::Client::new([server.addr().to_string()])?;
//! // ... use the client ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```
use crate::node::{Node, NodeConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Server {
    node: Arc<Node>,
    addr: SocketAddr,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Binds `config.listen`, opens storage under `config.data_dir`, starts Raft and serves.
    pub async fn start(config: NodeConfig) -> Result<Server, BoxError> {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        Self::start_on(config, listener).await
    }

    /// Like [`Server::start`] on an already bound listener (e.g. port 0 in tests).
    pub async fn start_on(
        config: NodeConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Server, BoxError> {
        let addr = listener.local_addr()?;
        let node = Node::start(config).await?;
        let serving = tokio::spawn(crate::api::serve(node.clone(), listener));
        tracing::info!(id = node.id, %addr, "serving");
        Ok(Server {
            node,
            addr,
            serving,
        })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops Raft and the server; returns when the port is released.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        // Open streams (watches, heartbeats) would hold a graceful stop forever.
        let mut serving = self.serving;
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut serving)
            .await
            .is_err()
        {
            serving.abort();
            let _ = serving.await;
        }
    }
}
