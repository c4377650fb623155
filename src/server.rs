//! Running a node inside another program: the embedding entry point.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use leasekeeper::{node::NodeConfig, server::Server};
//! let mut config = NodeConfig::default();
//! config.id = 1;
//! config.listen = "127.0.0.1:7001".into();
//! config.peer_listen = "127.0.0.1:7101".into();
//! config.cluster_secret = Some(leasekeeper::node::ClusterSecret::new("a secret of 16+ bytes"));
//! config.initial_cluster = [(1, "127.0.0.1:7101".to_string())].into();
//! let server = Server::start(config).await?;
//! let client = leasekeeper::client::Client::new([server.addr().to_string()])?;
//! // ... use the client ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```
use crate::node::{Node, NodeConfig};
use crate::tls::ServerTls;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Server {
    node: Arc<Node>,
    addr: SocketAddr,
    peer_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    serving: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Server {
    /// Binds `config.listen` (clients) and `config.peer_listen` (members), opens storage under
    /// `config.data_dir`, starts Raft and serves.
    pub async fn start(config: NodeConfig) -> Result<Server, BoxError> {
        let bind = |addr: String, what: &'static str| async move {
            tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
        };
        let client = bind(config.listen.clone(), "client port").await?;
        let peer = bind(config.peer_listen.clone(), "peer port").await?;
        let metrics = match &config.metrics_listen {
            Some(a) => Some(crate::http::bind(a).await?),
            None => None,
        };
        Self::start_with(config, client, peer, metrics).await
    }

    /// Like [`Server::start`] on already bound listeners (e.g. port 0 in tests): `client` for
    /// the public API, `peer` for members.
    pub async fn start_on(
        config: NodeConfig,
        client: tokio::net::TcpListener,
        peer: tokio::net::TcpListener,
    ) -> Result<Server, BoxError> {
        Self::start_with(config, client, peer, None).await
    }

    /// Like [`Server::start_on`], with the HTTP listener for `/metrics` and `/health`.
    pub async fn start_with(
        config: NodeConfig,
        client: tokio::net::TcpListener,
        peer: tokio::net::TcpListener,
        metrics: Option<tokio::net::TcpListener>,
    ) -> Result<Server, BoxError> {
        let addr = client.local_addr()?;
        let metrics_addr = match &metrics {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let peer_addr = peer.local_addr()?;
        // Loaded before Raft starts: a bad certificate is an error at start, not a node that
        // runs but cannot be reached.
        let client_tls = match config.client_tls()? {
            Some(f) => Some(ServerTls::load(&f, "client port TLS")?),
            None => None,
        };
        let peer_tls = match config.peer_tls()? {
            Some(f) => Some(ServerTls::load(&f, "peer port TLS")?),
            None => None,
        };
        let auth = match &config.auth_file {
            Some(p) => Some(crate::auth::Auth::load(p)?),
            None => None,
        };
        let tls = (client_tls.is_some(), peer_tls.is_some());
        let node = Node::start(config).await?;
        if let Some(a) = metrics_addr {
            let _ = node
                .history
                .http_addr
                .set(crate::http::advertised(a, &node.config.advertise()));
        }
        if let Some(a) = &auth {
            tokio::spawn(a.clone().watch(node.shutdown_signal()));
        }
        let serving = vec![
            tokio::spawn(crate::api::serve_peer(node.clone(), peer, peer_tls)),
            tokio::spawn(crate::api::serve(
                node.clone(),
                client,
                client_tls,
                auth.clone(),
            )),
        ];
        if let Some(l) = metrics {
            let routes = crate::http::node_routes(node.clone(), auth.clone());
            let stop = node.shutdown_signal();
            tokio::spawn(async move {
                if let Err(e) = crate::http::serve(l, routes, stop).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        tracing::info!(id = node.id, %addr, %peer_addr, metrics = ?metrics_addr, client_tls = tls.0, peer_tls = tls.1, "serving clients and peers");
        Ok(Server {
            node,
            addr,
            peer_addr,
            metrics_addr,
            serving,
        })
    }

    /// The address of the HTTP listener (`/metrics`, `/health`), if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address of the peer port.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
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
        for mut serving in self.serving {
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut serving)
                .await
                .is_err()
            {
                serving.abort();
                let _ = serving.await;
            }
        }
    }
}
