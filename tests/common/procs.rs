//! A cluster of real `leasekeeper server` processes on loopback, for kills and restarts.
#![allow(dead_code)]
use leasekeeper::client::Client;
use leasekeeper::proto::v1::{admin_client::AdminClient, NodeStatusRequest, NodeStatusResponse};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Procs {
    pub dir: tempfile::TempDir,
    /// Client ports.
    pub addrs: Vec<String>,
    /// Peer ports (what the membership records).
    pub peer_addrs: Vec<String>,
    /// HTTP listeners (`/metrics`, `/health`), outside network namespaces only.
    pub metrics_addrs: Vec<String>,
    pub children: Vec<Option<Child>>,
    pub extra: Vec<String>,
    /// Extra environment per node (e.g. libfaketime for one node's clock).
    pub envs: Vec<Vec<(String, String)>>,
    /// The network namespace each node runs in (see `netns`), if any.
    pub namespaces: Option<Vec<String>>,
}

/// A free loopback port below Linux's ephemeral range (32768-60999). These nodes are killed and
/// restarted: a port the OS handed out from the ephemeral range could, while its node is down, be
/// taken as the source port of any outgoing connection, and the restart would fail to bind it.
///
/// The probe's listener is closed before a node binds the port, so a port is never handed out
/// twice in one test process: two picks of one cluster (say node 1's peer port and its metrics
/// port) drawing the same number would both probe free, and the node would fail to start.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 20) ^ SEQ.fetch_add(1, Ordering::Relaxed);
    for _ in 0..1000 {
        // splitmix64: spreads tests that start at the same moment over the range.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let port = 20_000 + (z % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000 after 1000 tries")
}

impl Procs {
    /// Starts `n` nodes with fast test timings plus `extra` flags.
    pub fn start(n: usize, extra: &[&str]) -> Procs {
        Self::start_with_env(n, extra, vec![Vec::new(); n])
    }

    /// Like `start`, with extra environment variables for each node.
    pub fn start_with_env(n: usize, extra: &[&str], envs: Vec<Vec<(String, String)>>) -> Procs {
        let ports = || -> Vec<String> {
            (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect()
        };
        let (addrs, peer_addrs) = (ports(), ports());
        Self::start_at(addrs, peer_addrs, None, extra, envs)
    }

    /// Starts one node per (client, peer) address pair, node `i` inside `namespaces[i]` when
    /// given.
    pub fn start_at(
        addrs: Vec<String>,
        peer_addrs: Vec<String>,
        namespaces: Option<Vec<String>>,
        extra: &[&str],
        envs: Vec<Vec<(String, String)>>,
    ) -> Procs {
        let n = addrs.len();
        let metrics_addrs = if namespaces.is_none() {
            (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect()
        } else {
            Vec::new()
        };
        let mut p = Procs {
            dir: tempfile::tempdir().unwrap(),
            addrs,
            peer_addrs,
            metrics_addrs,
            children: (0..n).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            envs,
            namespaces,
        };
        for i in 0..n {
            p.spawn(i);
        }
        p
    }

    pub fn spawn(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is running");
        let cluster: Vec<String> = self
            .peer_addrs
            .iter()
            .enumerate()
            .map(|(j, a)| format!("{}={a}", j + 1))
            .collect();
        let log =
            std::fs::File::create(self.dir.path().join(format!("node-{}.log", i + 1))).unwrap();
        let bin = env!("CARGO_BIN_EXE_leasekeeper");
        // `ip netns exec` enters the namespace and execs the server in place (same pid).
        let mut cmd = match &self.namespaces {
            Some(ns) => {
                let mut c = Command::new("ip");
                // The namespaces' addresses are not loopback, but no traffic leaves them.
                c.args(["netns", "exec", &ns[i], bin, "server", "--insecure"]);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.arg("server");
                c
            }
        };
        let child = cmd
            .args([
                "--id",
                &(i + 1).to_string(),
                "--listen",
                &self.addrs[i],
                "--peer-listen",
                &self.peer_addrs[i],
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{}", i + 1)))
            .args(["--initial-cluster", &cluster.join(",")])
            .args([
                "--heartbeat-ms",
                "50",
                "--election-min-ms",
                "150",
                "--election-max-ms",
                "300",
                "--min-ttl-ms",
                "1000",
                "--default-ttl-ms",
                "3000",
            ])
            .args(
                self.metrics_addrs
                    .get(i)
                    .map(|a| ["--metrics-listen", a.as_str()])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra)
            .env("LEASEKEEPER_LOG", "info,openraft=warn")
            .env(
                "LEASEKEEPER_CLUSTER_SECRET",
                leasekeeper::node::TEST_CLUSTER_SECRET,
            )
            .envs(self.envs[i].iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasekeeper server");
        self.children[i] = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addrs.clone()).unwrap()
    }

    pub fn client_of(&self, i: usize) -> Client {
        Client::new([self.addrs[i].clone()]).unwrap()
    }

    pub async fn status(&self, i: usize) -> Option<NodeStatusResponse> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addrs[i]))
            .ok()?
            .connect_timeout(Duration::from_millis(200));
        let ch = tokio::time::timeout(Duration::from_millis(500), ch.connect())
            .await
            .ok()?
            .ok()?;
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            AdminClient::new(ch).node_status(NodeStatusRequest {}),
        )
        .await
        .ok()?
        .ok()?;
        Some(r.into_inner())
    }

    /// The 0-based index of the leader that every running node agrees on.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for i in 0..self.addrs.len() {
                if self.children[i].is_some() {
                    views.push(self.status(i).await.map(|s| s.leader_id));
                }
            }
            if let Some(Some(l)) = views.first() {
                if *l > 0
                    && views.iter().all(|v| *v == Some(*l))
                    && self.children[(*l - 1) as usize].is_some()
                {
                    return (*l - 1) as usize;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no agreed leader within {timeout:?}: {views:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`'s log since its last start.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{}.log", i + 1)))
            .unwrap_or_default()
    }

    /// The last `n` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = self.log(i);
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.addrs.len() {
            out.push_str(&format!(
                "--- node {} (last lines)\n{}\n",
                i + 1,
                self.log_tail(i, 15)
            ));
        }
        out
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
