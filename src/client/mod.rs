//! A Rust client for schedulers and workers.
//!
//! It is given every node's address and talks to any of them: followers forward writes to the
//! leader, so the client only moves on to another node when one is unreachable or answers
//! UNAVAILABLE (no leader yet), with a bounded back-off.
use crate::proto::v1::{
    self as pb, admin_client::AdminClient, scheduler_client::SchedulerClient,
    worker_client::WorkerClient,
};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

mod bearer;
pub use bearer::Bearer;

/// A connection to one node that carries the client's credentials on every call.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Answers up to this size are accepted: any answer a legal task can produce (see
/// [`crate::api::MAX_ANSWER_BYTES`]).
pub const MAX_ANSWER_BYTES: usize = crate::api::MAX_ANSWER_BYTES;

fn scheduler_client(c: Conn) -> SchedulerClient<Conn> {
    SchedulerClient::new(c).max_decoding_message_size(MAX_ANSWER_BYTES)
}

fn worker_client(c: Conn) -> WorkerClient<Conn> {
    WorkerClient::new(c).max_decoding_message_size(MAX_ANSWER_BYTES)
}

fn admin_client(c: Conn) -> AdminClient<Conn> {
    AdminClient::new(c).max_decoding_message_size(MAX_ANSWER_BYTES)
}
use tonic::{Code, Response, Status, Streaming};

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// The credentials every call carries.
    bearer: Bearer,
    /// Which node is in use; shared by the clients derived with `with_*`, so that moving away
    /// from an unreachable node moves every call of the family.
    current: Arc<AtomicUsize>,
    /// How long one call keeps trying other nodes before it gives up.
    retry_for: Duration,
    /// How long one attempt may go unanswered before the next node is tried (a partition shows
    /// up as silence, not as an error).
    attempt_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given: pass at least one node address (host:port)")]
    NoEndpoints,
    #[error("endpoint {0:?} is not a valid address: {1}")]
    BadEndpoint(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the token is not a valid header value: it must be visible ASCII (as `leasekeeper auth add` prints it)")]
    BadToken,
}

fn uri(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// Whether another node (or the same one a little later) may answer differently.
///
/// Besides UNAVAILABLE, UNKNOWN and DEADLINE_EXCEEDED this covers a call cut short by its connection: a node killed
/// mid-call surfaces as CANCELLED ("operation was canceled") whose *source* is the transport
/// error ("connection closed"). A CANCELLED without a transport source came from the server or
/// the caller and is final. Every call of this client is idempotent — submits and claims get
/// their idempotency key here before the first attempt — so sending it again is safe.
pub fn retryable(s: &Status) -> bool {
    match s.code() {
        // DEADLINE_EXCEEDED: an attempt that went unanswered (the Python SDK sees its own
        // deadline so; this client times attempts out itself, see docs/WORKER.md).
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded => true,
        Code::Cancelled => s.message().contains("connection") || cut_by_transport(s),
        _ => false,
    }
}

/// Whether `s` carries a transport-level error (tonic, hyper, h2 or I/O) in its source chain.
fn cut_by_transport(s: &Status) -> bool {
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        let text = e.to_string();
        if text.contains("connection") || text.contains("broken pipe") || text.contains("reset") {
            return true;
        }
        next = e.source();
    }
    false
}

impl Client {
    /// Connects lazily to `endpoints` (host:port of each node), in plaintext.
    pub fn new<I, S>(endpoints: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect(endpoints, None)
    }

    /// Connects lazily to `endpoints` with TLS: `tls.ca_file` is the CA the nodes' certificates
    /// chain to, and a client certificate is presented where the nodes require one. The nodes'
    /// certificates must name the host each endpoint gives (an IP address or a DNS name).
    pub fn with_tls<I, S>(
        endpoints: I,
        tls: &crate::tls::ClientTlsFiles,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let config = crate::tls::client_config(tls).map_err(ClientError::Tls)?;
        Self::connect(endpoints, Some(config))
    }

    /// With TLS if `tls` is given, and carrying `token` if given: how the CLI, the bench and
    /// the worker SDK connect.
    pub fn connect_with<I, S>(
        endpoints: I,
        tls: Option<&crate::tls::ClientTlsFiles>,
        token: Option<&str>,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let c = match tls {
            Some(t) => Self::with_tls(endpoints, t)?,
            None => Self::new(endpoints)?,
        };
        match token {
            Some(t) => c.with_token(t),
            None => Ok(c),
        }
    }

    /// Plaintext without `tls`, else TLS.
    pub fn connect<I, S>(
        endpoints: I,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut channels = Vec::new();
        for e in &endpoints {
            let mut ep = Endpoint::from_shared(uri(e, tls.is_some()))
                .map_err(|err| ClientError::BadEndpoint(e.clone(), err.to_string()))?;
            if let Some(t) = &tls {
                ep = ep
                    .tls_config(t.clone())
                    .map_err(|err| ClientError::Tls(format!("endpoint {e}: {err}")))?;
            }
            channels.push(
                ep.connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    // A connection that went silent (a node cut off, not closed) fails its calls
                    // within about 1.5 s, so they move on to another node while the leases they
                    // carry (a claim's answer, a long poll's) still have time to be renewed.
                    .http2_keep_alive_interval(Duration::from_millis(500))
                    .keep_alive_timeout(Duration::from_secs(1))
                    .connect_lazy(),
            );
        }
        let start = rand::random::<usize>() % channels.len();
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                channels,
                bearer: Bearer::default(),
                current: Arc::new(AtomicUsize::new(start)),
                retry_for: Duration::from_secs(15),
                attempt_timeout: Duration::from_secs(5),
            }),
        })
    }

    /// Sends `token` (`authorization: Bearer <token>`) with every call, for clusters with an
    /// auth file. An error if it cannot be sent as a header (not visible ASCII).
    pub fn with_token(self, token: &str) -> Result<Self, ClientError> {
        let v = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::BadToken)?;
        Ok(self.with(|i| i.bearer = Bearer(Some(v))))
    }

    /// How long one call keeps retrying across nodes (default 15 s).
    pub fn with_retry_for(self, d: Duration) -> Self {
        self.with(|i| i.retry_for = d)
    }

    /// How long one attempt may go unanswered before the call moves to another node (default
    /// 5 s; long-poll claims add their wait).
    pub fn with_attempt_timeout(self, d: Duration) -> Self {
        self.with(|i| i.attempt_timeout = d)
    }

    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let i = &self.inner;
        let mut inner = Inner {
            endpoints: i.endpoints.clone(),
            channels: i.channels.clone(),
            bearer: i.bearer.clone(),
            current: i.current.clone(),
            retry_for: i.retry_for,
            attempt_timeout: i.attempt_timeout,
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The node currently in use (an index into `endpoints`).
    pub fn node(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len()
    }

    /// The channel to node `i`.
    pub fn channel_of(&self, i: usize) -> Conn {
        InterceptedService::new(
            self.inner.channels[i % self.inner.channels.len()].clone(),
            self.inner.bearer.clone(),
        )
    }

    /// The channel to the node currently in use.
    pub fn channel(&self) -> Conn {
        self.channel_of(self.node())
    }

    /// Moves on from node `i` to the next one, unless the client has already moved away from
    /// it: many calls failing on one unreachable node at once move the client one step, not one
    /// step each (which could land on the same node again).
    pub fn move_from(&self, i: usize) {
        let n = self.inner.channels.len();
        let cur = self.inner.current.load(Ordering::Relaxed);
        if cur % n == i % n {
            let _ = self.inner.current.compare_exchange(
                cur,
                cur.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Moves on from the node currently in use to the next one.
    pub fn rotate(&self) {
        self.move_from(self.node());
    }

    /// Runs `f` against one node after another until it answers something other than
    /// UNAVAILABLE, or `retry_for` has passed.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_waiting(Duration::ZERO, f).await
    }

    /// Like [`Client::call`] for a call the server may hold for up to `wait` (long poll).
    pub async fn call_waiting<T, F, Fut>(&self, wait: Duration, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.retry_for + wait;
        let mut backoff = Duration::from_millis(10);
        let attempt = self.inner.attempt_timeout + wait;
        loop {
            let node = self.node();
            let answer = match tokio::time::timeout(attempt, f(self.channel_of(node))).await {
                Ok(a) => a,
                Err(_) => Err(Status::unavailable(format!(
                    "no answer within {attempt:?}: trying another node"
                ))),
            };
            match answer {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if retryable(&s) && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(code = ?s.code(), message = s.message(), node, "retrying on another node");
                    self.move_from(node);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(s) => return Err(s),
            }
        }
    }

    // ---------------------------------------------------------------- scheduler

    /// Submits a task. Without an `id` one is chosen here, once, so that the retries of this
    /// call (an attempt may have been applied although its answer was lost) find the same task
    /// instead of creating another.
    pub async fn submit(
        &self,
        mut req: pb::SubmitTaskRequest,
    ) -> Result<pb::SubmitTaskResponse, Status> {
        if req.id.is_empty() {
            req.id = crate::api::scheduler::generate_id();
        }
        self.call(|c| {
            let req = req.clone();
            async move { scheduler_client(c).submit_task(req).await }
        })
        .await
    }

    pub async fn get(&self, id: &str) -> Result<pb::Task, Status> {
        self.get_with(id, pb::ReadConsistency::Linearizable).await
    }

    pub async fn get_with(
        &self,
        id: &str,
        consistency: pb::ReadConsistency,
    ) -> Result<pb::Task, Status> {
        let req = pb::GetTaskRequest {
            id: id.to_string(),
            consistency: consistency as i32,
        };
        let r = self
            .call(|c| {
                let req = req.clone();
                async move { scheduler_client(c).get_task(req).await }
            })
            .await?;
        r.task
            .ok_or_else(|| Status::internal("server answered without a task"))
    }

    pub async fn list(&self, req: pb::ListTasksRequest) -> Result<pb::ListTasksResponse, Status> {
        self.call(|c| {
            let req = req.clone();
            async move { scheduler_client(c).list_tasks(req).await }
        })
        .await
    }

    pub async fn cancel(&self, id: &str, reason: &str) -> Result<pb::Task, Status> {
        let req = pb::CancelTaskRequest {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let r = self
            .call(|c| {
                let req = req.clone();
                async move { scheduler_client(c).cancel_task(req).await }
            })
            .await?;
        r.task
            .ok_or_else(|| Status::internal("server answered without a task"))
    }

    /// Sends a FAILED or CANCELLED task back to PENDING with a new budget of attempts.
    pub async fn retry(&self, id: &str, reason: &str) -> Result<pb::Task, Status> {
        let req = pb::RetryTaskRequest {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let r = self
            .call(|c| {
                let req = req.clone();
                async move { scheduler_client(c).retry_task(req).await }
            })
            .await?;
        r.task
            .ok_or_else(|| Status::internal("server answered without a task"))
    }

    /// Change events from `from_revision` (0 = from now). On a broken stream, resume with the
    /// last revision seen + 1.
    pub async fn watch(
        &self,
        req: pb::WatchTasksRequest,
    ) -> Result<Streaming<pb::TaskEvent>, Status> {
        self.call(|c| {
            let req = req.clone();
            async move { scheduler_client(c).watch_tasks(req).await }
        })
        .await
    }

    // ---------------------------------------------------------------- worker

    /// Claims a task. Without a `claim_id` one is chosen here, so that the retries of this call
    /// (after a lost answer or a failover) get the lease the first attempt created, if any.
    pub async fn claim(
        &self,
        mut req: pb::ClaimTaskRequest,
    ) -> Result<pb::ClaimTaskResponse, Status> {
        if req.claim_id.is_empty() {
            req.claim_id = format!("{:032x}", rand::random::<u128>());
        }
        self.call_waiting(Duration::from_millis(req.wait_ms), |c| {
            let req = req.clone();
            async move { worker_client(c).claim_task(req).await }
        })
        .await
    }

    /// Renews lease `lease_token`, proving it with the `lease_secret` its claim returned.
    pub async fn renew(
        &self,
        lease_token: u64,
        lease_secret: &[u8],
    ) -> Result<pb::RenewLeaseResponse, Status> {
        let req = pb::RenewLeaseRequest {
            lease_token,
            lease_secret: lease_secret.to_vec(),
        };
        self.call(|c| {
            let req = req.clone();
            async move { worker_client(c).renew_lease(req).await }
        })
        .await
    }

    pub async fn progress(
        &self,
        lease_token: u64,
        lease_secret: &[u8],
        progress: Vec<u8>,
    ) -> Result<pb::ReportProgressResponse, Status> {
        let req = pb::ReportProgressRequest {
            lease_token,
            progress,
            lease_secret: lease_secret.to_vec(),
        };
        self.call(|c| {
            let req = req.clone();
            async move { worker_client(c).report_progress(req).await }
        })
        .await
    }

    pub async fn complete(
        &self,
        req: pb::CompleteTaskRequest,
    ) -> Result<pb::CompleteTaskResponse, Status> {
        self.call(|c| {
            let req = req.clone();
            async move { worker_client(c).complete_task(req).await }
        })
        .await
    }

    /// Like [`Client::complete`], numbering every send in `report_try` from `sent` (which
    /// counts them, across calls: a caller that retries passes the same counter), so that the
    /// cluster can tell a first send from a retry, and stamping each with the time since
    /// `exited` (`exit_to_send_us`: when the task's process exited, on this machine's clock).
    pub async fn complete_counting(
        &self,
        req: pb::CompleteTaskRequest,
        sent: &std::sync::atomic::AtomicU32,
        exited: Option<tokio::time::Instant>,
    ) -> Result<pb::CompleteTaskResponse, Status> {
        self.call(|c| {
            let mut req = req.clone();
            req.report_try = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            req.exit_to_send_us = exited.map_or(0, |e| (e.elapsed().as_micros() as u64).max(1));
            async move { worker_client(c).complete_task(req).await }
        })
        .await
    }

    pub async fn release(
        &self,
        lease_token: u64,
        lease_secret: &[u8],
        reason: &str,
    ) -> Result<pb::ReleaseTaskResponse, Status> {
        let req = pb::ReleaseTaskRequest {
            lease_token,
            reason: reason.to_string(),
            lease_secret: lease_secret.to_vec(),
        };
        self.call(|c| {
            let req = req.clone();
            async move { worker_client(c).release_task(req).await }
        })
        .await
    }

    /// A raw worker client on the current node, e.g. for the Heartbeat stream.
    pub fn worker(&self) -> WorkerClient<Conn> {
        self.worker_on(self.node())
    }

    /// A raw worker client on node `i`.
    pub fn worker_on(&self, i: usize) -> WorkerClient<Conn> {
        worker_client(self.channel_of(i))
    }

    // ---------------------------------------------------------------- admin

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, Status> {
        self.call(|c| async move {
            admin_client(c)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
        })
        .await
    }

    pub async fn add_node(
        &self,
        node_id: u64,
        addr: &str,
        learner_only: bool,
    ) -> Result<pb::AddNodeResponse, Status> {
        let req = pb::AddNodeRequest {
            node_id,
            addr: addr.to_string(),
            learner_only,
        };
        // The leader answers once the new node has caught up (by snapshot, for a large state).
        self.call_waiting(MEMBERSHIP_WAIT, |c| {
            let req = req.clone();
            async move { admin_client(c).add_node(req).await }
        })
        .await
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<pb::RemoveNodeResponse, Status> {
        self.call_waiting(MEMBERSHIP_WAIT, |c| async move {
            admin_client(c)
                .remove_node(pb::RemoveNodeRequest { node_id })
                .await
        })
        .await
    }
}

/// How long a membership change may take beyond the usual attempt timeout: adding a node waits
/// until it has caught up, by a snapshot of the whole state when that is large.
pub(crate) const MEMBERSHIP_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_failing_on_one_node_move_the_client_one_step() {
        let c = Client::new(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]).unwrap();
        let derived = c.clone().with_attempt_timeout(Duration::from_millis(100));
        let first = c.node();
        // Nine calls in flight on the same node all fail at once.
        for _ in 0..9 {
            c.move_from(first);
        }
        assert_eq!(c.node(), (first + 1) % 3);
        // A client derived from it moved with it, and leaves that node as one.
        assert_eq!(derived.node(), c.node());
        derived.move_from(c.node());
        assert_eq!(c.node(), (first + 2) % 3);
    }

    #[test]
    fn a_call_cut_by_its_connection_is_retried_elsewhere() {
        // What a SIGKILLed node looks like to a call in flight.
        let mut cut = Status::cancelled("operation was canceled");
        cut.set_source(Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection closed",
        )));
        assert!(retryable(&cut));
        assert!(retryable(&Status::unavailable("no leader")));
        assert!(retryable(&Status::cancelled("connection reset by peer")));
        // Cancelled by the server or the caller, with no transport underneath: final.
        assert!(!retryable(&Status::cancelled("the caller gave up")));
        assert!(!retryable(&Status::failed_precondition("lease expired")));
        assert!(!retryable(&Status::invalid_argument("ttl_ms too small")));
    }
}
