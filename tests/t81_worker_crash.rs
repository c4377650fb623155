//! A worker's journal and lease loss, with real `leasekeeper worker` processes:
//! - SIGKILLed after its command exited 0 (report journaled, not delivered) and restarted within
//!   the TTL: the success is committed from the journal and the task is not run again;
//! - cut off for longer than the TTL: it stops its command; the command exits 0 anyway, and that
//!   late success, delivered after the heal while a second attempt runs, ends the task SUCCEEDED;
//! - cut off from the one node it renews through: it renews through another before the TTL ends;
//! - idle in a long poll for more than two TTLs before a task comes: it keeps the lease it gets;
//! - its long poll cut off while the node claims a task for it: it finds that lease elsewhere.
mod common;
use common::proxy::{proxies, Proxy};
use common::workers::*;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_exit_0_then_restart_commits_from_the_journal() {
    let (cluster, c, dir, marks) = worker_bed().await;
    let journal = dir.path().join("journal");
    c.submit(pb::SubmitTaskRequest {
        id: "K".into(),
        queue: "crash".into(),
        payload: b"2\n".to_vec(),
        lease_ttl_ms: 8000,
        max_attempts: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let endpoints: Vec<String> = px.iter().map(|p| p.addr.clone()).collect();
    let log = dir.path().join("worker.log");
    let mut w = WorkerProc::spawn(
        &endpoints,
        "crash",
        &journal,
        &[],
        &task_command(&marks),
        log.clone(),
    );
    eventually(
        Duration::from_secs(10),
        "K started by the worker",
        || async {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("started task=K")
                .then_some(())
        },
    )
    .await;
    // Cut the worker off before its command exits: the report is journaled, not delivered.
    px.iter().for_each(Proxy::cut);
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("exited task=K"),
        "exited before the cut"
    );
    let journal_file = journal.join("reports.journal");
    eventually(
        Duration::from_secs(10),
        "the report in the journal",
        || async {
            let len = std::fs::metadata(&journal_file).ok()?.len();
            (len > 0).then_some(())
        },
    )
    .await;
    w.signal(libc::SIGKILL);
    w.child.wait().await.unwrap();
    px.iter().for_each(Proxy::heal);
    assert_eq!(
        c.get("K").await.unwrap().state,
        pb::TaskState::Running as i32
    );

    // Restarted well within the TTL, straight to the cluster this time.
    let mut w2 = WorkerProc::spawn(
        &cluster.addrs,
        "crash",
        &journal,
        &[],
        &task_command(&marks),
        log.clone(),
    );
    let t = eventually(Duration::from_secs(10), "K succeeded", || async {
        let t = c.get("K").await.ok()?;
        (t.state == pb::TaskState::Succeeded as i32).then_some(t)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("replaying an unacknowledged report"),
        "{text}"
    );
    assert_eq!(t.attempt, 1, "not run again: {t:#?}");
    assert_eq!(runs(&marks, "K"), 1);
    assert!(!t.history[0].late, "committed within the lease: {t:#?}");
    assert_eq!(String::from_utf8_lossy(&t.result).trim(), "ok K");
    w2.signal(libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), w2.child.wait())
        .await
        .expect("worker stops")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::metadata(&journal_file).unwrap().len(),
        0,
        "journal drained"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_beyond_the_ttl_stops_the_command_and_its_late_success_counts() {
    let (cluster, c, dir, marks) = worker_bed().await;
    c.submit(pb::SubmitTaskRequest {
        id: "L".into(),
        queue: "late".into(),
        payload: b"30\n".to_vec(),
        lease_ttl_ms: 1500,
        max_attempts: 3,
        retry: Some(pb::RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 100,
        }),
    })
    .await
    .unwrap();
    // Finishes its work when told to stop, and exits 0.
    let graceful = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            r#"trap 'echo "finished $LEASEKEEPER_TASK_ID"; exit 0' TERM; echo run >> "{}/$LEASEKEEPER_TASK_ID"; sleep 30 & wait"#,
            marks.display()
        ),
    ];
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let endpoints: Vec<String> = px.iter().map(|p| p.addr.clone()).collect();
    let a = WorkerProc::spawn(
        &endpoints,
        "late",
        &dir.path().join("journal-a"),
        &["--worker-id", "a"],
        &graceful,
        dir.path().join("a.log"),
    );
    a.wait_log("started task=L").await;
    px.iter().for_each(Proxy::cut);
    // Worker b takes the next attempt once the cluster has expired a's lease.
    let b = WorkerProc::spawn(
        &cluster.addrs,
        "late",
        &dir.path().join("journal-b"),
        &["--worker-id", "b"],
        &task_command(&marks),
        dir.path().join("b.log"),
    );
    let second = within(Duration::from_secs(15), || async {
        let t = c.get("L").await.ok()?;
        (t.attempt == 2 && t.state == pb::TaskState::Running as i32).then_some(t)
    })
    .await;
    let Some(t) = second else {
        panic!(
            "no second attempt within 15 s\ntask: {:#?}\n--- a.log\n{}\n--- b.log\n{}",
            c.get("L").await,
            a.log_text(),
            b.log_text()
        );
    };
    assert_eq!(
        t.history[0].outcome,
        pb::AttemptOutcome::Expired as i32,
        "{t:#?}"
    );
    // a noticed on its own that it lost the lease, stopped its command, which exited 0.
    a.wait_log("exited task=L").await;
    let alog = a.log_text();
    assert!(
        alog.contains("no node reachable within the lease TTL"),
        "{alog}"
    );
    assert!(alog.contains("sending SIGTERM"), "{alog}");
    px.iter().for_each(Proxy::heal);
    let t = eventually(Duration::from_secs(15), "L succeeded", || async {
        let t = c.get("L").await.ok()?;
        (t.state == pb::TaskState::Succeeded as i32).then_some(t)
    })
    .await;
    let first = &t.history[0];
    assert_eq!(first.attempt, 1);
    assert_eq!(
        first.outcome,
        pb::AttemptOutcome::Succeeded as i32,
        "{t:#?}"
    );
    assert!(first.late, "recorded as a late success: {t:#?}");
    assert_eq!(succeeded_records(&t), 1, "{t:#?}");
    assert_eq!(String::from_utf8_lossy(&t.result).trim(), "finished L");
    // b's attempt was superseded; b hears it and stops its command.
    b.wait_log("lease lost").await;
    drop((a, b));
    cluster.shutdown().await;
}

/// The node a worker renews through is cut off from it (the cluster itself is healthy): the
/// worker must notice within a renew interval and renew through another node before the
/// lease's TTL runs out on the nodes' clocks — the task runs once, and no attempt expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_a_worker_renews_through_cut_off_costs_no_lease() {
    let (cluster, c, dir, marks) = worker_bed().await;
    submit(&c, "N", "cut", b"5\n", 1500).await;
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let endpoints: Vec<String> = px.iter().map(|p| p.addr.clone()).collect();
    let w = plain_worker(&endpoints, "cut", dir.path());
    w.wait_log("started task=N").await;
    // Let a renewal or two go through, then cut the node the worker is connected to.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let used: Vec<usize> = (0..px.len())
        .filter(|&i| px[i].open_connections() > 0)
        .collect();
    assert_eq!(used.len(), 1, "the worker talks to one node: {used:?}");
    px[used[0]].cut();
    assert_one_clean_run(&c, &w, &marks, "N").await;
    px[used[0]].heal();
    drop(w);
    cluster.shutdown().await;
}

/// A worker that waited in a long poll for longer than two TTLs before a task came: the lease it
/// gets is fresh, and it keeps it (the time spent waiting does not count against the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_claimed_after_a_long_wait_keeps_its_lease() {
    let (cluster, c, dir, marks) = worker_bed().await;
    let w = plain_worker(&cluster.addrs, "idle", dir.path());
    w.wait_log("worker started").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    submit(&c, "I", "idle", b"2\n", 1500).await;
    assert_one_clean_run(&c, &w, &marks, "I").await;
    drop(w);
    cluster.shutdown().await;
}

/// A worker's long poll sits on a node that gets cut off from it; a task comes, and that node
/// claims it for the worker — the answer is lost in the cut. The worker notices the silent
/// connection, asks another node under the same claim id, gets the lease it already holds, and
/// renews it before its TTL ends: the task runs once, and no attempt expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_answered_into_a_cut_is_found_and_kept() {
    let (cluster, c, dir, marks) = worker_bed().await;
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let endpoints: Vec<String> = px.iter().map(|p| p.addr.clone()).collect();
    let w = plain_worker(&endpoints, "orphan", dir.path());
    w.wait_log("worker started").await;
    let used = within(Duration::from_secs(10), || async {
        let open: Vec<usize> = (0..px.len())
            .filter(|&i| px[i].open_connections() > 0)
            .collect();
        (open.len() == 1).then(|| open[0])
    })
    .await
    .expect("the worker's long poll is on one node");
    px[used].cut();
    submit(&c, "O", "orphan", b"3\n", 2000).await;
    assert_one_clean_run(&c, &w, &marks, "O").await;
    px[used].heal();
    drop(w);
    cluster.shutdown().await;
}

/// Submits task `id` to `queue` with `payload` (the task command's stdin) and `ttl_ms`.
async fn submit(
    c: &leasekeeper::client::Client,
    id: &str,
    queue: &str,
    payload: &[u8],
    ttl_ms: u64,
) {
    c.submit(pb::SubmitTaskRequest {
        payload: payload.to_vec(),
        max_attempts: 3,
        ..submit_req(id, queue, ttl_ms)
    })
    .await
    .unwrap();
}

/// A `leasekeeper worker` on `queue` running the marking task command, with its journal and log
/// in `dir`.
fn plain_worker(endpoints: &[String], queue: &str, dir: &std::path::Path) -> WorkerProc {
    WorkerProc::spawn(
        endpoints,
        queue,
        &dir.join("journal"),
        &[],
        &task_command(&marks_dir(dir)),
        dir.join("w.log"),
    )
}

/// Waits until `id` succeeded or went past its first attempt, then checks that its first attempt
/// succeeded and that the command ran once.
async fn assert_one_clean_run(
    c: &leasekeeper::client::Client,
    w: &WorkerProc,
    marks: &std::path::Path,
    id: &str,
) {
    let t = eventually(Duration::from_secs(30), "the task finished", || async {
        let t = c.get(id).await.ok()?;
        (t.state == pb::TaskState::Succeeded as i32 || t.attempt > 1).then_some(t)
    })
    .await;
    assert_eq!(t.attempt, 1, "no attempt expired: {t:#?}\n{}", w.log_text());
    assert_eq!(t.state, pb::TaskState::Succeeded as i32, "{t:#?}");
    assert_eq!(runs(marks, id), 1);
}
