//! The load generator counts what the cluster committed, no more: after a short `renew` run with
//! several leases per Heartbeat message, the renewals recorded on the leases add up to the
//! renewals it reported; after a `lifecycle` run, the tasks it reported finished are SUCCEEDED.
mod common;
use common::*;
use leasekeeper::bench::{self, BenchConfig, Shape};
use leasekeeper::proto::v1 as pb;
use std::time::Duration;

fn config(cluster: &Cluster, shape: Shape) -> BenchConfig {
    BenchConfig {
        endpoints: cluster.addrs.clone(),
        shape,
        clients: 4,
        conns: 2,
        duration: Duration::from_millis(1500),
        leases: 24,
        per_message: 6,
        watchers: 0,
        watch_every_kind: false,
        rate: 0,
        leader_only: true,
        tls: None,
        token: None,
    }
}

/// Every task of `state`, paged through (linearizable reads).
async fn all_in(cluster: &Cluster, state: pb::TaskState) -> Vec<pb::Task> {
    let client = cluster.client();
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list(pb::ListTasksRequest {
                state: state as i32,
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list");
        out.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// A fresh cluster after a short bench run of `shape` that met no error.
async fn after_a_run_of(shape: Shape) -> (Cluster, bench::BenchReport) {
    let cluster = Cluster::start(3).await;
    let report = bench::run(config(&cluster, shape))
        .await
        .expect("bench runs");
    assert_eq!(report.errors, 0, "{report:?}");
    (cluster, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_reported_are_renewals_committed() {
    let (cluster, report) = after_a_run_of(Shape::Renew).await;
    assert_eq!(report.per_message, 6);
    assert!(report.ops > 0, "no renewal committed: {report:?}");
    // Each client renews its 6 leases in one message and every one of them is alive.
    assert_eq!(report.ops % 6, 0, "{report:?}");
    let running = all_in(&cluster, pb::TaskState::Running).await;
    assert_eq!(running.len(), 24, "one lease per prepared task");
    let committed: u64 = running
        .iter()
        .map(|t| {
            t.lease
                .as_ref()
                .expect("a running task has its lease")
                .renewals
        })
        .sum();
    assert_eq!(committed, report.ops, "{report:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycles_reported_are_tasks_succeeded() {
    let (cluster, report) = after_a_run_of(Shape::Lifecycle).await;
    assert!(report.ops > 0, "no lifecycle finished: {report:?}");
    let done = all_in(&cluster, pb::TaskState::Succeeded).await;
    assert_eq!(done.len() as u64, report.ops, "{report:?}");
    for t in &done {
        assert_eq!(t.attempt, 1, "{t:?}");
        assert_eq!(t.result, b"ok", "{t:?}");
    }
    cluster.shutdown().await;
}
