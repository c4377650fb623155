//! Bounded chaos on real processes: three `leasekeeper server` processes — node 1 under
//! libfaketime at 2× speed that also jumps an hour ahead mid-run — with in-process workers (the
//! worker SDK) and schedulers, while the leader is SIGKILLed and restarted again and again and
//! one node at a time — the leader too — is cut off from everyone. A "dead" worker claims tasks
//! and never renews.
//!
//! Cuts: as root, every node runs in a network namespace of its own on a bridge this test creates
//! (`common::netns`), and a cut takes the node's port down — peers and clients lose it both
//! ways. Without root, nodes run on 127.0.0.1 behind proxies that cut clients only (the report
//! says which).
//!
//! Reports tasks run, false expirations (must be 0), acknowledged writes lost (must be 0),
//! failover times and the expiry delay of the dead worker's leases.
//! `LEASEKEEPER_CHAOS_SECS` sets the length (default 20 s; CI runs the default).
mod common;
use common::netns::Netns;
use common::procs::Procs;
use common::proxy::Proxy;
use leasekeeper::proto::v1 as pb;
use leasekeeper::worker::{Outcome, Worker, WorkerConfig};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_leader_kills_partitions_and_a_bad_clock() {
    // The SDK workers run in this process: their warnings (a lease lost, a claim failed) are
    // part of what a failure shows.
    common::init_tracing();
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let secs: u64 = std::env::var("LEASEKEEPER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let clock_file = dir.path().join("faketime");
    std::fs::write(&clock_file, "+0 x2\n").unwrap();
    let mut envs = vec![Vec::new(); 3];
    envs[0] = vec![
        ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".to_string(),
            clock_file.to_str().unwrap().to_string(),
        ),
        ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
    ];
    let net = Netns::available().then(|| Netns::create(3).expect("network namespaces"));
    let mut p = match &net {
        Some(n) => Procs::start_at(
            (0..3).map(|i| n.addr(i, 7001)).collect(),
            (0..3).map(|i| n.addr(i, 7101)).collect(),
            Some(n.namespaces.clone()),
            &[],
            envs,
        ),
        None => Procs::start_with_env(3, &[], envs),
    };
    p.wait_leader(Duration::from_secs(15)).await;
    // Without namespaces, clients reach the nodes through proxies, so that a node can at least
    // be cut off from them.
    let mut proxies = Vec::new();
    if net.is_none() {
        for a in &p.addrs {
            proxies.push(Proxy::start(a.clone()).await);
        }
    }
    let endpoints: Vec<String> = match &net {
        Some(_) => p.addrs.clone(),
        None => proxies.iter().map(|x| x.addr.clone()).collect(),
    };
    let cuts_mode = if net.is_some() {
        "cuts: network namespaces, peers and clients"
    } else {
        "cuts: proxies, clients only"
    };
    let client = leasekeeper::client::Client::new(endpoints.clone()).unwrap();

    // Workers: the SDK, concurrency 8 each, tasks of 100–600 ms that succeed.
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut workers = Vec::new();
    for w in 0..2 {
        let mut cfg = WorkerConfig::new(endpoints.clone(), "chaos", &format!("chaos-{w}"));
        cfg.concurrency = 8;
        cfg.journal_dir = dir.path().join(format!("journal-{w}"));
        cfg.claim_wait = Duration::from_millis(500);
        cfg.drain_timeout = Duration::from_secs(30);
        let worker = Worker::start(cfg).unwrap();
        let (ran, stop) = (ran.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            worker
                .run(
                    move |ctx| {
                        let ran = ran.clone();
                        async move {
                            ran.lock().unwrap().push(ctx.task.id.clone());
                            let ms = 100
                                + u64::from_le_bytes(
                                    ctx.task.payload[..8].try_into().unwrap_or([0; 8]),
                                ) % 500;
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            Outcome::Success {
                                result: b"ok".to_vec(),
                            }
                        }
                    },
                    async move { stop.notified().await },
                )
                .await
        }));
    }

    // A scheduler submitting tasks; every acknowledged submit is remembered.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let submitting = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < deadline {
                n += 1;
                let id = format!("c-{n}");
                let r = client
                    .submit(pb::SubmitTaskRequest {
                        id: id.clone(),
                        queue: "chaos".into(),
                        payload: rand::random::<u64>().to_le_bytes().to_vec(),
                        lease_ttl_ms: 2000,
                        max_attempts: 5,
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    acked.lock().unwrap().insert(id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // A dead worker: claims from its own queue and never renews.
    let dead_claims: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let dead = {
        let (client, dead_claims) = (client.clone(), dead_claims.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(secs.saturating_sub(4));
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let id = format!("dead-{n}");
                let ok = client
                    .submit(pb::SubmitTaskRequest {
                        id: id.clone(),
                        queue: "dead".into(),
                        lease_ttl_ms: 1500,
                        max_attempts: 1,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                    && client
                        .claim(pb::ClaimTaskRequest {
                            task_id: id.clone(),
                            queue: "dead".into(),
                            worker_id: "dead".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.lease.is_some())
                        .unwrap_or(false);
                if ok {
                    dead_claims.lock().unwrap().push((id, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };

    // Watches the dead worker's leases: when each stops being RUNNING.
    let expiry_delays: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let watching = {
        let (client, dead_claims, delays) =
            (client.clone(), dead_claims.clone(), expiry_delays.clone());
        tokio::spawn(async move {
            let mut done = BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(secs + 10);
            while Instant::now() < deadline {
                let claims: Vec<(String, Instant)> = dead_claims.lock().unwrap().clone();
                for (id, at) in claims {
                    if done.contains(&id) {
                        continue;
                    }
                    if let Ok(t) = client.get(&id).await {
                        if t.state != pb::TaskState::Running as i32 {
                            delays.lock().unwrap().push(at.elapsed());
                            done.insert(id);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Faults: every ~4 s SIGKILL the leader and restart it; cut one node off for 1.5 s in
    // between; node 1's clock jumps an hour ahead halfway.
    let started = Instant::now();
    let mut failovers = Vec::new();
    let mut round = 0;
    let mut jumped = false;
    while started.elapsed() < Duration::from_secs(secs) {
        round += 1;
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let l = p.wait_leader(Duration::from_secs(20)).await;
        let t = Instant::now();
        p.kill(l);
        let nl = p.wait_leader(Duration::from_secs(20)).await;
        failovers.push(t.elapsed());
        p.spawn(l);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cut = (nl + round) % 3;
        match &net {
            Some(n) => n.cut(cut),
            None => proxies[cut].cut(),
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match &net {
            Some(n) => n.heal(cut),
            None => proxies[cut].heal(),
        }
        if !jumped && started.elapsed() > Duration::from_secs(secs / 2) {
            std::fs::write(&clock_file, "+3600 x2\n").unwrap();
            jumped = true;
        }
    }
    submitting.await.unwrap();
    dead.await.unwrap();

    // Let the workers finish what was submitted, then stop them.
    let all: Vec<String> = acked.lock().unwrap().iter().cloned().collect();
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = 0;
        for id in &all {
            match client.get(id).await {
                Ok(t) if t.state == pb::TaskState::Succeeded as i32 => {}
                _ => open += 1,
            }
        }
        if open == 0 || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.notify_waiters();
    for w in workers {
        let drained = tokio::time::timeout(Duration::from_secs(40), w)
            .await
            .expect("workers stop")
            .unwrap();
        assert_eq!(drained.undelivered, 0);
    }

    // Checks and report.
    let (mut lost, mut false_expirations, mut not_succeeded) = (Vec::new(), Vec::new(), Vec::new());
    for id in &all {
        match client.get(id).await {
            Err(e) if e.code() == tonic::Code::NotFound => lost.push(id.clone()),
            Err(e) => panic!("get {id}: {e}"),
            Ok(t) => {
                if t.history
                    .iter()
                    .any(|r| r.outcome == pb::AttemptOutcome::Expired as i32)
                {
                    false_expirations.push(t.clone());
                }
                if t.state != pb::TaskState::Succeeded as i32 {
                    not_succeeded.push(t);
                }
            }
        }
    }
    let mut expiry = Vec::new();
    let claims: Vec<(String, Instant)> = dead_claims.lock().unwrap().clone();
    for (id, _) in &claims {
        let t = client.get(id).await.unwrap();
        assert_ne!(
            t.state,
            pb::TaskState::Running as i32,
            "dead lease {id} never expired"
        );
        expiry.push(t);
    }
    watching.abort();
    let mut delays = expiry_delays.lock().unwrap().clone();
    let ran = ran.lock().unwrap().len();
    eprintln!(
        "chaos {secs}s ({cuts_mode}): {} tasks acknowledged, {ran} runs, {} leader kills (failover p50 {:?}, max {:?}), \
         {} dead leases all expired (delay after claim p50 {:?}, max {:?}, TTL 1.5 s, polled every 100 ms); \
         lost {}, false expirations {}, not succeeded {}",
        all.len(),
        failovers.len(),
        pct(&mut failovers.clone(), 0.5),
        pct(&mut failovers, 1.0),
        expiry.len(),
        pct(&mut delays.clone(), 0.5),
        pct(&mut delays, 1.0),
        lost.len(),
        false_expirations.len(),
        not_succeeded.len(),
    );
    assert!(lost.is_empty(), "acknowledged submits lost: {lost:?}");
    assert!(
        false_expirations.is_empty(),
        "leases of live workers expired: {:#?}\n{}",
        false_expirations.first(),
        p.logs()
    );
    assert!(
        not_succeeded.is_empty(),
        "not SUCCEEDED: {:#?}",
        not_succeeded.first()
    );
    assert!(!expiry.is_empty());
}
