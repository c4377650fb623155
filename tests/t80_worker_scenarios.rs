//! The five rows of docs/SCENARIOS.md, times scaled down (1 s → 17 ms), run by a real
//! `leasekeeper worker` process against a real three-node cluster, through fault-injecting
//! proxies. Every row must end SUCCEEDED exactly once, with the command run once.
mod common;
use common::proxy::{proxies, Proxy};
use common::workers::*;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::path::Path;
use std::time::Duration;
use tokio::time::{sleep, Instant};

const MS_PER_S: u64 = 17;
const QUEUE: &str = "scenarios";

async fn submit_rows(c: &leasekeeper::client::Client, term_on: Option<&str>) {
    for (id, runs, ttl) in scenario_rows(MS_PER_S) {
        let payload = match term_on {
            Some(t) if t == id => format!("{} term\n", secs(runs)),
            _ => format!("{}\n", secs(runs)),
        };
        c.submit(pb::SubmitTaskRequest {
            id: id.into(),
            queue: QUEUE.into(),
            payload: payload.into_bytes(),
            lease_ttl_ms: ttl,
            max_attempts: 3,
            ..Default::default()
        })
        .await
        .expect("submit");
    }
}

fn start_worker(dir: &Path, endpoints: &[String], extra: &[&str]) -> WorkerProc {
    let mut args = vec!["--concurrency", "5", "--kill-grace-ms", "1000"];
    args.extend_from_slice(extra);
    WorkerProc::spawn(
        endpoints,
        QUEUE,
        &dir.join("journal"),
        &args,
        &task_command(&dir.join("marks")),
        dir.join("worker.log"),
    )
}

/// Waits for every row to end, then checks it ended SUCCEEDED exactly once and ran once.
async fn assert_rows_succeeded_once(c: &leasekeeper::client::Client, marks: &Path, log: &str) {
    for (id, _, _) in scenario_rows(MS_PER_S) {
        let t = eventually(Duration::from_secs(40), id, || async {
            let t = c.get(id).await.ok()?;
            let terminal = t.state != pb::TaskState::Pending as i32
                && t.state != pb::TaskState::Running as i32;
            terminal.then_some(t)
        })
        .await;
        assert_eq!(
            t.state,
            pb::TaskState::Succeeded as i32,
            "{id} did not succeed: {t:#?}\n--- worker log ---\n{log}"
        );
        assert_eq!(succeeded_records(&t), 1, "{id}: {t:#?}");
        assert_eq!(runs(marks, id), 1, "{id} ran more than once: {t:#?}\n{log}");
        assert_eq!(
            String::from_utf8_lossy(&t.result).trim(),
            format!("ok {id}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_succeed_with_the_link_dropped_including_during_the_report() {
    let (cluster, c, dir, _marks) = worker_bed().await;
    submit_rows(&c, None).await;
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let endpoints: Vec<String> = px.iter().map(|p| p.addr.clone()).collect();
    let w = start_worker(dir.path(), &endpoints, &[]);
    let t0 = all_running(&c).await;
    // Three drops, each longer than the renew interval (a third of the TTL) of the rows whose
    // command exits during it, and shorter than their TTL: their reports go into the void and
    // must be retried after the heal, and no lease may be lost over it.
    for (from, to, rows) in [
        (950, 1500, &["S005"][..]),
        (2900, 4200, &["S001", "S004"][..]),
        (9000, 13000, &["S002"][..]),
    ] {
        sleep_until(t0, from).await;
        px.iter().for_each(Proxy::cut);
        sleep_until(t0, to - 100).await;
        let log = w.log_text();
        for id in rows {
            // The command has exited 0, but its report cannot have reached the cluster.
            assert!(
                log.contains(&format!("exited task={id}")),
                "{id} still running:\n{log}"
            );
            let t = c.get(id).await.unwrap();
            assert_eq!(t.state, pb::TaskState::Running as i32, "{t:#?}\n{log}");
        }
        sleep_until(t0, to).await;
        px.iter().for_each(Proxy::heal);
    }
    assert_rows_succeeded_once(&c, &dir.path().join("marks"), &w.log_text()).await;
    drop(w);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_succeed_with_the_leader_killed_during_the_task_and_the_report() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    marks_dir(dir.path());
    submit_rows(&c, None).await;
    let w = start_worker(dir.path(), &cluster.addrs, &[]);
    let t0 = all_running(&c).await;
    // While every row runs.
    sleep_until(t0, 700).await;
    let first = cluster.wait_leader(Duration::from_secs(5)).await;
    cluster.stop(first).await;
    sleep_until(t0, 2000).await;
    cluster.servers[first] = Some(
        leasekeeper::server::Server::start(cluster.configs[first].clone())
            .await
            .unwrap(),
    );
    // Around S001's exit (3.1 s): its report meets an election.
    sleep_until(t0, 3000).await;
    let second = cluster.wait_leader(Duration::from_secs(5)).await;
    cluster.stop(second).await;
    sleep_until(t0, 4500).await;
    cluster.servers[second] = Some(
        leasekeeper::server::Server::start(cluster.configs[second].clone())
            .await
            .unwrap(),
    );
    assert_rows_succeeded_once(&c, &dir.path().join("marks"), &w.log_text()).await;
    drop(w);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_succeed_with_sigterm_right_after_a_child_exits_0() {
    let (cluster, c, dir, _marks) = worker_bed().await;
    // S005's command sends SIGTERM to its worker as it exits 0; the other rows are still
    // running then and get the grace period.
    submit_rows(&c, Some("S005")).await;
    let mut w = start_worker(dir.path(), &cluster.addrs, &["--grace-ms", "30000"]);
    let status = tokio::time::timeout(Duration::from_secs(40), w.child.wait())
        .await
        .expect("the worker exits once every task has finished and reported")
        .unwrap();
    let log = w.log_text();
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert_eq!(status.code(), Some(0), "drained journal → exit 0\n{log}");
    // Every report was committed before the worker exited: no waiting here.
    for (id, _, _) in scenario_rows(MS_PER_S) {
        let t = c.get(id).await.unwrap();
        assert_eq!(
            t.state,
            pb::TaskState::Succeeded as i32,
            "{id}: {t:#?}\n{log}"
        );
    }
    assert_rows_succeeded_once(&c, &dir.path().join("marks"), &log).await;
    cluster.shutdown().await;
}

/// The instant every row is RUNNING (the timeline of each test starts there).
async fn all_running(c: &leasekeeper::client::Client) -> Instant {
    eventually(Duration::from_secs(20), "every row claimed", || async {
        for (id, _, _) in scenario_rows(MS_PER_S) {
            if c.get(id).await.ok()?.state != pb::TaskState::Running as i32 {
                return None;
            }
        }
        Some(())
    })
    .await;
    Instant::now()
}

async fn sleep_until(t0: Instant, ms: u64) {
    tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await;
}

#[allow(dead_code)]
async fn pause(ms: u64) {
    sleep(Duration::from_millis(ms)).await;
}
