//! The same shapes against etcd (v3 gRPC API), built from its primitives: `leasekeeper bench
//! --etcd` drives an etcd cluster with the load generator of [`super`].
use super::*;
use crate::proto::etcd::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, Compare,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RequestOp,
    TxnRequest,
};
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn channels(cfg: &BenchConfig) -> Result<Vec<Channel>, BoxError> {
    // The first endpoint is the one used when `leader_only` (pass the leader first).
    let eps: Vec<String> = if cfg.leader_only {
        vec![cfg.endpoints[0].clone()]
    } else {
        cfg.endpoints.clone()
    };
    let mut out = Vec::new();
    for i in 0..cfg.conns.max(1) {
        let e = &eps[i % eps.len()];
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let uri = if e.starts_with("http") {
            e.clone()
        } else {
            format!("{scheme}://{e}")
        };
        let mut ep = Endpoint::from_shared(uri)?;
        if let Some(t) = &cfg.tls {
            ep = ep.tls_config(crate::tls::client_config(t)?)?;
        }
        out.push(ep.tcp_nodelay(true).connect().await?);
    }
    Ok(out)
}

fn put(key: String, value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: value.to_vec(),
            lease,
        })),
    }
}

fn value_is(key: &str, v: &[u8]) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::Value(v.to_vec())),
    }
}

pub async fn run(cfg: BenchConfig) -> Result<BenchReport, BoxError> {
    if cfg.shape == Shape::Watch {
        return Err("the watch shape is not implemented against etcd".into());
    }
    let chans = channels(&cfg).await?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let shared = Shared::new();
    let mut leases: Vec<i64> = Vec::new();
    if cfg.shape == Shape::Renew {
        let mut l = LeaseClient::new(chans[0].clone());
        for _ in 0..cfg.leases.max(cfg.clients) {
            let r = l.lease_grant(LeaseGrantRequest { ttl: 600, id: 0 }).await?;
            leases.push(r.into_inner().id);
        }
    }
    let started = Instant::now();
    let per = leases.len() / cfg.clients.max(1);
    let mut loops = Vec::new();
    for i in 0..cfg.clients.max(1) {
        let ch = chans[i % chans.len()].clone();
        let shared = shared.clone();
        let tag = tag.clone();
        let mine = share(&leases, i, per);
        let shape = cfg.shape;
        let per_message = cfg.leases_per_message();
        loops.push(tokio::spawn(async move {
            match shape {
                Shape::Submit => submit_loop(ch, i, &tag, &shared).await,
                Shape::Renew => keepalive_loop(ch, mine, per_message, &shared).await,
                _ => lifecycle_loop(ch, i, &tag, &shared).await,
            }
        }));
    }
    let (lat, seconds) = shared.run_for(cfg.duration, started, loops).await?;
    Ok(shared.report(&cfg, seconds, lat, None))
}

fn record(shared: &Shared, lat: &mut Vec<u32>, t: Instant, ok: bool) {
    if ok {
        lat.push(micros(t.elapsed()));
        shared.ops.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
}

async fn submit_loop(ch: Channel, i: usize, tag: &str, shared: &Shared) -> Vec<u32> {
    let mut kv = KvClient::new(ch);
    let (mut lat, mut n) = (Vec::new(), 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let t = Instant::now();
        let r = kv
            .put(PutRequest {
                key: format!("bench/{tag}/tasks/s-{i}-{n}").into_bytes(),
                value: vec![b'x'; 64],
                lease: 0,
            })
            .await;
        record(shared, &mut lat, t, r.is_ok());
    }
    lat
}

type KeepAlive = (
    tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    tonic::Streaming<crate::proto::etcd::LeaseKeepAliveResponse>,
);

/// Opens a keep-alive stream with `first` already queued (etcd answers the call's headers
/// only once it has a request to process) and room for `depth` requests in flight (≥ 1).
async fn open_keepalive(ch: Channel, first: i64, depth: usize) -> Result<KeepAlive, BoxError> {
    let (tx, rx) = tokio::sync::mpsc::channel(depth);
    tx.send(LeaseKeepAliveRequest { id: first }).await?;
    let resp = LeaseClient::new(ch)
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok((tx, resp.into_inner()))
}

/// One keep-alive stream; rounds of `per_message` keep-alives sent back to back, then all
/// their answers awaited (one latency sample per round).
async fn keepalive_loop(
    ch: Channel,
    ids: Vec<i64>,
    per_message: usize,
    shared: &Shared,
) -> Vec<u32> {
    let mut lat = Vec::new();
    if ids.is_empty() {
        return lat;
    }
    let t = Instant::now();
    let Ok((tx, mut answers)) = open_keepalive(ch, ids[0], per_message).await else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return lat;
    };
    match answers.next().await {
        Some(Ok(a)) => record(shared, &mut lat, t, a.ttl > 0),
        _ => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return lat;
        }
    }
    let mut next = 1 % ids.len();
    'rounds: while !shared.stop.load(Ordering::Relaxed) {
        let round = next_round(&ids, &mut next, per_message);
        let t = Instant::now();
        for &id in &round {
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                break 'rounds;
            }
        }
        let mut alive = 0u64;
        for _ in 0..round.len() {
            match answers.next().await {
                Some(Ok(a)) if a.ttl > 0 => alive += 1,
                Some(Ok(_)) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break 'rounds;
                }
            }
        }
        if alive > 0 {
            lat.push(micros(t.elapsed()));
        }
        shared.ops.fetch_add(alive, Ordering::Relaxed);
    }
    lat
}

/// put task → grant lease → txn claim (task pending → running, lease key) → 3 keep-alives →
/// txn complete (running by me → succeeded) → revoke.
async fn lifecycle_loop(ch: Channel, i: usize, tag: &str, shared: &Shared) -> Vec<u32> {
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch.clone());
    // Opened with the first task's first keep-alive.
    let mut stream: Option<KeepAlive> = None;
    let (mut lat, mut n) = (Vec::new(), 0u64);
    let me = format!("running:bench-{i}");
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let task = format!("bench/{tag}/tasks/l-{i}-{n}");
        let t = Instant::now();
        let r: Result<bool, BoxError> = async {
            kv.put(PutRequest {
                key: task.clone().into_bytes(),
                value: b"pending".to_vec(),
                lease: 0,
            })
            .await?;
            let id = lease
                .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
                .await?
                .into_inner()
                .id;
            let claimed = kv
                .txn(TxnRequest {
                    compare: vec![value_is(&task, b"pending")],
                    success: vec![
                        put(task.clone(), me.as_bytes(), 0),
                        put(format!("{task}/lease"), me.as_bytes(), id),
                    ],
                    failure: vec![],
                })
                .await?
                .into_inner()
                .succeeded;
            for k in 0..3 {
                if k == 0 && stream.is_none() {
                    stream = Some(open_keepalive(ch.clone(), id, 1).await?);
                } else {
                    let (tx, _) = stream.as_ref().expect("open");
                    tx.send(LeaseKeepAliveRequest { id }).await?;
                }
                let (_, answers) = stream.as_mut().expect("open");
                answers.next().await.ok_or("keep-alive stream ended")??;
            }
            let done = kv
                .txn(TxnRequest {
                    compare: vec![value_is(&task, me.as_bytes())],
                    success: vec![put(task.clone(), b"succeeded", 0)],
                    failure: vec![],
                })
                .await?
                .into_inner()
                .succeeded;
            lease.lease_revoke(LeaseRevokeRequest { id }).await?;
            Ok(claimed && done)
        }
        .await;
        record(shared, &mut lat, t, matches!(r, Ok(true)));
    }
    lat
}
