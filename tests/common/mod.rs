//! A harness for tests that run a real cluster in this process: real gRPC on loopback, real
//! sled in temporary directories.
#![allow(dead_code)]
pub mod browser;
pub mod certs;
pub mod netns;
pub mod procs;
pub mod proxy;
pub mod workers;
use leasekeeper::client::Client;
use leasekeeper::node::NodeConfig;
use leasekeeper::proto::v1 as pb;
use leasekeeper::server::Server;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Cluster {
    pub servers: Vec<Option<Server>>,
    /// Client ports.
    pub addrs: Vec<String>,
    /// Peer ports (what the membership records).
    pub peer_addrs: Vec<String>,
    /// HTTP listeners (`/metrics`, `/health`).
    pub metrics_addrs: Vec<String>,
    pub configs: Vec<NodeConfig>,
    pub dir: tempfile::TempDir,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Cluster {
    pub async fn start(n: u64) -> Cluster {
        Self::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: u64, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push((
                bind_loopback().await,
                bind_loopback().await,
                bind_loopback().await,
            ));
        }
        let addr_of = |l: &tokio::net::TcpListener| l.local_addr().unwrap().to_string();
        let addrs: Vec<String> = listeners.iter().map(|(c, _, _)| addr_of(c)).collect();
        let peer_addrs: Vec<String> = listeners.iter().map(|(_, p, _)| addr_of(p)).collect();
        let metrics_addrs: Vec<String> = listeners.iter().map(|(_, _, m)| addr_of(m)).collect();
        let members: BTreeMap<u64, String> = peer_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, a.clone()))
            .collect();
        let mut servers = Vec::new();
        let mut configs = Vec::new();
        for (i, (client, peer, metrics)) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut c = NodeConfig::for_tests(id, dir.path().join(format!("node-{id}")));
            c.listen = addrs[i].clone();
            c.peer_listen = peer_addrs[i].clone();
            c.initial_cluster = members.clone();
            tweak(&mut c);
            configs.push(c.clone());
            servers.push(Some(
                Server::start_with(c, client, peer, Some(metrics))
                    .await
                    .expect("node starts"),
            ));
        }
        let c = Cluster {
            servers,
            addrs,
            peer_addrs,
            metrics_addrs,
            configs,
            dir,
        };
        c.wait_leader(Duration::from_secs(10)).await;
        c
    }

    pub fn client(&self) -> Client {
        Client::new(self.addrs.clone()).unwrap()
    }

    /// A client that talks to node `i` (0-based) only.
    pub fn client_of(&self, i: usize) -> Client {
        Client::new([self.addrs[i].clone()]).unwrap()
    }

    /// The 0-based index of the leader, once every running node agrees on it.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let views: Vec<Option<u64>> = self
                .servers
                .iter()
                .flatten()
                .map(|s| s.node().metrics().current_leader)
                .collect();
            if let Some(Some(l)) = views.first() {
                if views.iter().all(|v| *v == Some(*l)) && self.servers[(*l - 1) as usize].is_some()
                {
                    return (*l - 1) as usize;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.servers.len() {
            self.stop(i).await;
        }
    }
}

pub fn submit_req(id: &str, queue: &str, ttl_ms: u64) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        id: id.into(),
        queue: queue.into(),
        payload: b"payload".to_vec(),
        lease_ttl_ms: ttl_ms,
        ..Default::default()
    }
}

pub fn claim_req(queue: &str, worker: &str) -> pb::ClaimTaskRequest {
    pb::ClaimTaskRequest {
        queue: queue.into(),
        worker_id: worker.into(),
        ..Default::default()
    }
}

/// A claim of task `task_id` only, from `queue`.
pub fn claim_task_req(queue: &str, worker: &str, task_id: &str) -> pb::ClaimTaskRequest {
    pb::ClaimTaskRequest {
        task_id: task_id.into(),
        ..claim_req(queue, worker)
    }
}

/// A TCP listener on 127.0.0.1, on a port the OS picks.
pub async fn bind_loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// A success report for the lease `token`, proven with `secret`.
pub fn success(task_id: &str, token: u64, secret: &[u8]) -> pb::CompleteTaskRequest {
    pb::CompleteTaskRequest {
        task_id: task_id.into(),
        lease_token: token,
        success: true,
        exit_code: 0,
        result: b"ok".to_vec(),
        error: String::new(),
        lease_secret: secret.to_vec(),
        ..Default::default()
    }
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match within(timeout, f).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `f` until it returns Some, or gives up (None) after `timeout` — for a caller that has
/// more to say about a timeout than `eventually` does.
pub async fn within<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node's grpc.health.v1 status (overall), asked without credentials in plaintext.
pub async fn health_of(addr: &str) -> i32 {
    use tonic_health::pb::health_client::HealthClient;
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Runs the `leasekeeper` binary with `args`; its exit code, and stdout then stderr.
pub async fn cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_leasekeeper"))
        .args(args)
        .output()
        .await
        .expect("leasekeeper runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// GETs `path` from the HTTP listener at `addr`: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_call(addr, "GET", path, &[], "").await
}

/// Sends one HTTP/1.1 request to `addr` with `headers` and `body`: the status code and the body.
pub async fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// The sum of every sample of `name` whose labels include all of `labels`, in an OpenMetrics
/// text (`name{k="v",...} value`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let rest = rest.strip_suffix('}')?;
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
