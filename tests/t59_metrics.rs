//! Metrics against a real three-node cluster: a scripted run gives exact counter deltas on
//! every node (what the state machine counts is the same on all of them), the histograms hold
//! the expected number of samples, a report retried after a cut link is counted as retried,
//! and `/health` says whether the node knows a leader.
mod common;
use common::proxy::{proxies, Proxy};
use common::*;
use leasekeeper::proto::v1 as pb;
use leasekeeper::worker::{Outcome, Worker, WorkerConfig};
use std::time::Duration;

const N: usize = 5;
const RENEWALS_EACH: usize = 3;
const TTL_MS: u64 = 1_500;

async fn scrape_all(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for a in &cluster.metrics_addrs {
        let (code, body) = http_get(a, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.ends_with("# EOF\n"), "not OpenMetrics text: {body}");
        out.push(body);
    }
    out
}

/// Waits until every node has applied the same last index.
async fn settled(cluster: &Cluster) {
    eventually(
        Duration::from_secs(10),
        "every node applied everything",
        || async {
            let applied: Vec<u64> = cluster
                .servers
                .iter()
                .flatten()
                .map(|s| {
                    s.node()
                        .metrics()
                        .last_applied
                        .map(|l| l.index)
                        .unwrap_or(0)
                })
                .collect();
            applied.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scripted_run_gives_exact_counts_on_every_node() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let q = "m";

    // N submits and N claims.
    let mut claims = Vec::new();
    for i in 0..N {
        c.submit(submit_req(&format!("m-{i}"), q, TTL_MS))
            .await
            .unwrap();
    }
    for i in 0..N {
        let r = c
            .claim(claim_task_req(q, "w", &format!("m-{i}")))
            .await
            .unwrap();
        claims.push(r);
    }
    // K renewals (the last task's lease is left to expire), then N - 1 successes.
    for r in &claims[..N - 1] {
        let token = r.lease.as_ref().unwrap().token;
        for _ in 0..RENEWALS_EACH {
            c.renew(token, &r.lease_secret).await.unwrap();
        }
    }
    for (i, r) in claims[..N - 1].iter().enumerate() {
        let token = r.lease.as_ref().unwrap().token;
        c.complete(pb::CompleteTaskRequest {
            exit_to_send_us: 1_000,
            report_try: 1,
            ..success(&format!("m-{i}"), token, &r.lease_secret)
        })
        .await
        .unwrap();
    }
    // One expiry, then its attempt's success arrives: a late success.
    let silent = &claims[N - 1];
    let silent_token = silent.lease.as_ref().unwrap().token;
    let id = format!("m-{}", N - 1);
    eventually(
        Duration::from_secs(10),
        "the silent lease expired",
        || async {
            let t = c.get(&id).await.unwrap();
            (t.state == pb::TaskState::Pending as i32).then_some(())
        },
    )
    .await;
    let late = c
        .complete(pb::CompleteTaskRequest {
            exit_to_send_us: 2_000,
            report_try: 1,
            ..success(&id, silent_token, &silent.lease_secret)
        })
        .await
        .unwrap();
    assert!(late.late);
    let t = c.get(&id).await.unwrap();
    assert_eq!(t.state, pb::TaskState::Succeeded as i32);
    // Its evidence: each deciding voter and its silence, at least the TTL.
    let evidence = &t.history[0].expiry_evidence;
    assert!(evidence.len() >= 2, "{t:#?}");
    assert!(
        evidence.iter().all(|e| e.silence_ms >= TTL_MS),
        "{evidence:?}"
    );

    // One report retried after a cut link, through the worker SDK (another queue, so that its
    // heartbeats leave the counts above alone).
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let dir = tempfile::tempdir().unwrap();
    let mut wc = WorkerConfig::new(px.iter().map(|p| p.addr.clone()).collect(), "r", "w-r");
    wc.journal_dir = dir.path().join("journal");
    let wm = wc.metrics.clone();
    let w = Worker::start(wc).unwrap();
    c.submit(submit_req("r-0", "r", 3_000)).await.unwrap();
    let ctx = w.claim(Some("r-0")).await.unwrap().expect("claimed");
    eventually(
        Duration::from_secs(5),
        "a heartbeat's round trip",
        || async {
            let n = metric(
                &wm.encode(),
                "leasekeeper_worker_node_round_trip_seconds_count",
                &[],
            );
            (n >= 1.0).then_some(())
        },
    )
    .await;
    px.iter().for_each(Proxy::cut);
    w.report(
        &ctx,
        Outcome::Success {
            result: b"ok".to_vec(),
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.get("r-0").await.unwrap().state,
        pb::TaskState::Running as i32
    );
    px.iter().for_each(Proxy::heal);
    assert_eq!(
        w.drain(Duration::from_secs(15)).await,
        0,
        "the report went through"
    );
    settled(&cluster).await;

    let texts = scrape_all(&cluster).await;
    let m = |t: &str, name: &str, labels: &[(&str, &str)]| metric(t, name, labels);
    let qm = [("queue", q)];
    for (i, t) in texts.iter().enumerate() {
        let node = (i + 1).to_string();
        let nl = [("node", node.as_str())];
        let k = (RENEWALS_EACH * (N - 1)) as f64;
        assert_eq!(
            m(t, "leasekeeper_tasks_submitted_total", &qm),
            N as f64,
            "node {node}"
        );
        assert_eq!(m(t, "leasekeeper_tasks_claimed_total", &qm), N as f64);
        assert_eq!(m(t, "leasekeeper_leases_renewed_total", &qm), k);
        assert_eq!(m(t, "leasekeeper_heartbeat_interval_seconds_count", &qm), k);
        assert_eq!(
            m(
                t,
                "leasekeeper_leases_ended_total",
                &[("queue", q), ("reason", "expired")]
            ),
            1.0
        );
        assert_eq!(
            m(
                t,
                "leasekeeper_leases_ended_total",
                &[("queue", q), ("reason", "succeeded")]
            ),
            (N - 1) as f64
        );
        assert_eq!(m(t, "leasekeeper_expiry_lateness_seconds_count", &qm), 1.0);
        assert_eq!(m(t, "leasekeeper_tasks_retried_total", &qm), 1.0);
        assert_eq!(m(t, "leasekeeper_tasks_succeeded_total", &qm), N as f64);
        assert_eq!(m(t, "leasekeeper_tasks_late_successes_total", &qm), 1.0);
        assert_eq!(
            m(
                t,
                "leasekeeper_tasks",
                &[("queue", q), ("state", "SUCCEEDED")]
            ),
            N as f64
        );
        assert!(m(t, "leasekeeper_expiry_votes_counted_total", &[]) >= 2.0);
        assert_eq!(m(t, "leasekeeper_raft_has_leader", &nl), 1.0);
        assert!(m(t, "leasekeeper_log_fsync_duration_seconds_count", &[]) >= 1.0);
        assert!(m(t, "leasekeeper_peer_round_trip_seconds_count", &[]) >= 1.0);
        assert_eq!(m(t, "leasekeeper_clock_off", &[]), 0.0);
    }
    // What each node counts of the calls it answered: summed over the nodes.
    let sum = |name: &str, labels: &[(&str, &str)]| -> f64 {
        texts.iter().map(|t| metric(t, name, labels)).sum()
    };
    assert_eq!(sum("leasekeeper_raft_is_leader", &[]), 1.0);
    assert_eq!(sum("leasekeeper_reports_total", &qm), N as f64);
    assert_eq!(sum("leasekeeper_reports_retried_total", &qm), 0.0);
    assert_eq!(
        sum("leasekeeper_report_latency_seconds_count", &qm),
        N as f64
    );
    assert_eq!(sum("leasekeeper_reports_total", &[("queue", "r")]), 1.0);
    assert_eq!(
        sum("leasekeeper_reports_retried_total", &[("queue", "r")]),
        1.0
    );
    assert_eq!(
        sum(
            "leasekeeper_report_latency_seconds_count",
            &[("queue", "r")]
        ),
        1.0
    );
    assert!(
        sum("leasekeeper_report_latency_seconds_sum", &[("queue", "r")]) >= 0.8,
        "the retried report waited out the cut"
    );
    assert!(
        sum("leasekeeper_renewal_answers_total", &[("status", "alive")])
            >= (RENEWALS_EACH * (N - 1)) as f64
    );
    assert!(sum("leasekeeper_expiry_votes_cast_total", &[]) >= 2.0);

    // The worker's own: the retried report, the task it ran, nothing left in its journal.
    let wt = wm.encode();
    assert!(
        metric(&wt, "leasekeeper_worker_reports_retried_total", &[]) >= 1.0,
        "{wt}"
    );
    assert_eq!(
        metric(
            &wt,
            "leasekeeper_worker_tasks_run_total",
            &[("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(metric(&wt, "leasekeeper_worker_journal_depth", &[]), 0.0);
    assert_eq!(metric(&wt, "leasekeeper_worker_leases_held", &[]), 0.0);
    drop(w);

    let (code, body) = http_get(&cluster.metrics_addrs[0], "/health").await;
    assert_eq!(code, 200, "{body}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_says_503_without_a_leader() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (code, _) = http_get(&cluster.metrics_addrs[others[1]], "/health").await;
    assert_eq!(code, 200);
    cluster.stop(leader).await;
    cluster.stop(others[0]).await;
    let addr = cluster.metrics_addrs[others[1]].clone();
    eventually(
        Duration::from_secs(10),
        "the lone follower knows no leader",
        || async {
            let (code, _) = http_get(&addr, "/health").await;
            (code == 503).then_some(())
        },
    )
    .await;
    cluster.shutdown().await;
}
