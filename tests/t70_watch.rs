//! WatchTasks beyond the happy path: a watcher that falls far behind the live fan-out still gets
//! every event once and in order, and a revision older than what is retained answers OUT_OF_RANGE
//! with the oldest revision a watch can start from, from which the watch resumes.
mod common;
use common::*;
use futures::StreamExt;
use leasekeeper::proto::v1 as pb;
use std::time::Duration;

async fn submit_many(client: &leasekeeper::client::Client, prefix: &str, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..32 {
        let client = client.clone();
        let prefix = prefix.to_string();
        set.spawn(async move {
            let mut i = w;
            while i < n {
                client
                    .submit(submit_req(&format!("{prefix}-{i:05}"), "q", 5000))
                    .await
                    .expect("submit");
                i += 32;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("submitter");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_watcher_gets_every_event_in_order() {
    // A small live buffer so that the watcher below falls behind it many times over.
    let cluster = Cluster::start_with(3, |c| c.watch_live_buffer = 16).await;
    let client = cluster.client();
    // Opened, then not read while far more events are written than the live channel holds.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = (leader + 1) % 3;
    let mut stream = cluster
        .client_of(follower)
        .watch(pb::WatchTasksRequest {
            from_revision: 1,
            ..Default::default()
        })
        .await
        .expect("watch");
    const N: usize = 3000;
    submit_many(&client, "t", N).await;

    let mut seen = Vec::with_capacity(N);
    let mut last = 0;
    while seen.len() < N {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("watch went quiet before every event arrived")
            .expect("stream ended")
            .expect("stream error");
        assert!(ev.revision > last, "revision {} after {last}", ev.revision);
        last = ev.revision;
        assert_eq!(ev.kind, pb::EventKind::Submitted as i32);
        seen.push(ev.task.expect("task").id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), N, "every submit seen exactly once");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compacted_revision_is_out_of_range_with_the_oldest_kept() {
    let cluster = Cluster::start_with(3, |c| c.event_retention = 100).await;
    let client = cluster.client();
    submit_many(&client, "c", 300).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let from_leader = cluster.client_of(leader);

    let err = from_leader
        .watch(pb::WatchTasksRequest {
            from_revision: 1,
            ..Default::default()
        })
        .await
        .expect_err("revision 1 was compacted");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let msg = err.message();
    assert!(
        msg.contains("oldest revision a watch can start from is"),
        "{msg}"
    );
    let oldest: u64 = msg
        .split("oldest revision a watch can start from is ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {msg:?}"));
    assert!(oldest > 1);

    // Resuming from the oldest kept revision replays the retained tail, then goes live.
    let mut stream = from_leader
        .watch(pb::WatchTasksRequest {
            from_revision: oldest,
            ..Default::default()
        })
        .await
        .expect("watch from the oldest kept revision");
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.revision >= oldest, "{} < {oldest}", first.revision);
    // One below it is refused.
    let err = from_leader
        .watch(pb::WatchTasksRequest {
            from_revision: oldest - 1,
            ..Default::default()
        })
        .await
        .expect_err("below the oldest is compacted");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    let mut last = first.revision;
    let mut count = 1;
    while count < 100 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("retained events")
            .unwrap()
            .unwrap();
        assert!(ev.revision > last);
        last = ev.revision;
        count += 1;
    }
    client
        .submit(submit_req("live", "q", 5000))
        .await
        .expect("submit");
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("live event")
        .unwrap()
        .unwrap();
    assert_eq!(ev.task.unwrap().id, "live");
    assert!(ev.revision > last);
    cluster.shutdown().await;
}

async fn next(s: &mut tonic::Streaming<pb::TaskEvent>) -> pb::TaskEvent {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_for_outcomes_gets_only_outcomes_and_resumes_with_them() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let watcher = cluster.client_of((leader + 1) % 3);
    let outcomes = |from_revision| pb::WatchTasksRequest {
        from_revision,
        queue: "q".into(),
        kinds: vec![
            pb::EventKind::Succeeded as i32,
            pb::EventKind::Cancelled as i32,
        ],
        ..Default::default()
    };
    let run = |id: &'static str| {
        let client = client.clone();
        async move {
            client
                .submit(submit_req(id, "q", 5000))
                .await
                .expect("submit");
            let claim = client
                .claim(claim_task_req("q", "w", id))
                .await
                .expect("claim");
            let token = claim.lease.expect("lease").token;
            client
                .complete(success(id, token, &claim.lease_secret))
                .await
                .expect("complete");
        }
    };
    run("a").await;
    client
        .submit(submit_req("b", "q", 5000))
        .await
        .expect("submit");
    client.cancel("b", "not needed").await.expect("cancel");
    client
        .submit(submit_req("c", "q", 5000))
        .await
        .expect("submit");

    let mut stream = watcher.watch(outcomes(1)).await.expect("watch");
    let first = next(&mut stream).await;
    assert_eq!(first.kind, pb::EventKind::Succeeded as i32, "{first:?}");
    assert_eq!(first.task.as_ref().unwrap().id, "a");
    let second = next(&mut stream).await;
    assert_eq!(second.kind, pb::EventKind::Cancelled as i32, "{second:?}");
    assert_eq!(second.task.as_ref().unwrap().id, "b");
    assert!(second.revision > first.revision);

    // Live: d's submit and claim are not sent, its success is, and it is the next event.
    run("d").await;
    let live = next(&mut stream).await;
    assert_eq!(live.kind, pb::EventKind::Succeeded as i32, "{live:?}");
    assert_eq!(live.task.as_ref().unwrap().id, "d");

    // Resuming after the first outcome with the same filter continues with the second.
    let mut resumed = watcher
        .watch(outcomes(first.revision + 1))
        .await
        .expect("resume");
    let again = next(&mut resumed).await;
    assert_eq!((again.revision, again.kind), (second.revision, second.kind));
    assert_eq!(next(&mut resumed).await.revision, live.revision);
    cluster.shutdown().await;
}
