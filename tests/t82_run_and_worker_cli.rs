//! `leasekeeper run` (one externally scheduled job) and the edges of `leasekeeper worker`: exit
//! codes, signals, cancellation, and a stop while the cluster is unreachable.
mod common;
use common::proxy::{proxies, Proxy};
use common::workers::*;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::path::Path;
use std::time::Duration;

async fn run_job(
    endpoints: &[String],
    journal: &Path,
    task_id: &str,
    script: &str,
) -> (i32, String) {
    let journal = journal.to_str().expect("a UTF-8 path");
    let eps = endpoints.join(",");
    cli(&[
        "run",
        "--queue",
        "cron",
        "--task-id",
        task_id,
        "--ttl-ms",
        "2000",
        "--endpoints",
        &eps,
        "--journal-dir",
        journal,
        "--",
        "sh",
        "-c",
        script,
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_wraps_a_job_and_exits_with_its_code() {
    let (cluster, c, dir, marks) = worker_bed().await;
    let j = |n: &str| dir.path().join(format!("journal-{n}"));
    let count = format!(r#"echo run >> "{}/$LEASEKEEPER_TASK_ID";"#, marks.display());

    // Runs longer than a renew interval: renewed in the background, then SUCCEEDED.
    let (code, out) = run_job(
        &cluster.addrs,
        &j("ok"),
        "nightly-1",
        &format!("{count} sleep 1.2; echo exported"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let t = c.get("nightly-1").await.unwrap();
    assert_eq!(t.state, pb::TaskState::Succeeded as i32, "{t:#?}");
    assert_eq!(String::from_utf8_lossy(&t.result).trim(), "exported");
    assert!(t.history[0].outcome == pb::AttemptOutcome::Succeeded as i32);

    // The same job again: not run twice.
    let (code, out) = run_job(&cluster.addrs, &j("again"), "nightly-1", &count).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already SUCCEEDED"), "{out}");
    assert_eq!(runs(&marks, "nightly-1"), 1);

    // A failure keeps its exit code and stderr.
    let (code, out) = run_job(
        &cluster.addrs,
        &j("fail"),
        "nightly-2",
        "echo broken >&2; exit 3",
    )
    .await;
    assert_eq!(code, 3, "{out}");
    let t = c.get("nightly-2").await.unwrap();
    assert_eq!(t.state, pb::TaskState::Failed as i32);
    assert_eq!(t.exit_code, 3);
    assert!(t.error.contains("broken"), "{}", t.error);

    // Death by a signal is named.
    let (code, out) = run_job(&cluster.addrs, &j("sig"), "nightly-3", "kill -KILL $$").await;
    assert_eq!(code, 137, "{out}");
    let t = c.get("nightly-3").await.unwrap();
    assert!(t.error.contains("SIGKILL"), "{}", t.error);

    // SIGTERM to `run` right as its command exits 0: the success is still reported, exit 0.
    // `run` passes the SIGTERM on to the command at once; the command ignores it, so that its
    // exit 0 does not race that (a command the SIGTERM kills did not exit 0).
    let (code, out) = run_job(
        &cluster.addrs,
        &j("term"),
        "nightly-4",
        "trap '' TERM; sleep 0.3; kill -TERM $PPID; exit 0",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        c.get("nightly-4").await.unwrap().state,
        pb::TaskState::Succeeded as i32
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_running_task_stops_its_command() {
    let (cluster, c, dir, marks) = worker_bed().await;
    c.submit(pb::SubmitTaskRequest {
        id: "C".into(),
        queue: "cancel".into(),
        payload: b"30\n".to_vec(),
        lease_ttl_ms: 1500,
        ..Default::default()
    })
    .await
    .unwrap();
    let w = WorkerProc::spawn(
        &cluster.addrs,
        "cancel",
        &dir.path().join("journal"),
        &["--kill-grace-ms", "500"],
        &task_command(&marks),
        dir.path().join("w.log"),
    );
    eventually(Duration::from_secs(10), "C running", || async {
        (c.get("C").await.ok()?.state == pb::TaskState::Running as i32).then_some(())
    })
    .await;
    c.cancel("C", "not needed").await.unwrap();
    w.wait_log("exited task=C").await;
    let log = w.log_text();
    assert!(log.contains("lease lost"), "{log}");
    assert!(log.contains("sending SIGTERM"), "{log}");
    let t = c.get("C").await.unwrap();
    assert_eq!(t.state, pb::TaskState::Cancelled as i32, "{t:#?}");
    drop(w);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_with_the_cluster_unreachable_exits_75_and_keeps_the_report() {
    let (cluster, c, dir, marks) = worker_bed().await;
    c.submit(pb::SubmitTaskRequest {
        id: "U".into(),
        queue: "unreachable".into(),
        payload: b"2\n".to_vec(),
        lease_ttl_ms: 5000,
        ..Default::default()
    })
    .await
    .unwrap();
    let px: Vec<Proxy> = proxies(&cluster.addrs).await;
    let endpoints: Vec<String> = px.iter().map(|p| p.addr.clone()).collect();
    let journal = dir.path().join("journal");
    let mut w = WorkerProc::spawn(
        &endpoints,
        "unreachable",
        &journal,
        &["--drain-timeout-ms", "1500"],
        &task_command(&marks),
        dir.path().join("w.log"),
    );
    // The worker has its lease (not just the cluster: the claim's answer must have arrived).
    w.wait_log("started task=U").await;
    px.iter().for_each(Proxy::cut);
    w.wait_log("exited task=U").await;
    w.signal(libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(20), w.child.wait())
        .await
        .expect("exits after the drain timeout")
        .unwrap();
    assert_eq!(status.code(), Some(75), "{}", w.log_text());
    assert!(
        std::fs::metadata(journal.join("reports.journal"))
            .unwrap()
            .len()
            > 0
    );
    // The next start delivers it.
    px.iter().for_each(Proxy::heal);
    let mut w2 = WorkerProc::spawn(
        &cluster.addrs,
        "unreachable",
        &journal,
        &[],
        &task_command(&marks),
        dir.path().join("w2.log"),
    );
    eventually(Duration::from_secs(10), "U succeeded", || async {
        (c.get("U").await.ok()?.state == pb::TaskState::Succeeded as i32).then_some(())
    })
    .await;
    assert_eq!(runs(&marks, "U"), 1);
    w2.signal(libc::SIGTERM);
    let status = w2.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    cluster.shutdown().await;
}
