//! Bad input gets a clear gRPC status and loses nothing already acknowledged.
mod common;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_actionable_statuses() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    c.submit(submit_req("kept", "q", 3000)).await.unwrap();

    let cases: Vec<(pb::SubmitTaskRequest, Code, &str)> = vec![
        (
            submit_req("a", "", 3000),
            Code::InvalidArgument,
            "queue is empty",
        ),
        (
            submit_req("a", "bad queue", 3000),
            Code::InvalidArgument,
            "is invalid",
        ),
        (
            submit_req("a", "q", 50),
            Code::InvalidArgument,
            "below the minimum",
        ),
        (
            submit_req("a b", "q", 3000),
            Code::InvalidArgument,
            "whitespace",
        ),
        (
            pb::SubmitTaskRequest {
                payload: vec![0; (1 << 20) + 1],
                ..submit_req("a", "q", 3000)
            },
            Code::InvalidArgument,
            "payload is",
        ),
        (
            pb::SubmitTaskRequest {
                max_attempts: 1000,
                ..submit_req("a", "q", 3000)
            },
            Code::InvalidArgument,
            "max_attempts",
        ),
        (
            pb::SubmitTaskRequest {
                payload: b"other".to_vec(),
                ..submit_req("kept", "q", 3000)
            },
            Code::AlreadyExists,
            "different spec",
        ),
    ];
    for (req, code, msg) in cases {
        let e = c.submit(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(msg), "{:?} lacks {msg:?}", e.message());
    }
    let e = c.get("missing").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.renew(0, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.renew(999_999, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c.complete(success("kept", 12345, &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let e = c
        .list(pb::ListTasksRequest {
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .watch(pb::WatchTasksRequest {
            from_revision: 1,
            queue: "no space".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for bad in [pb::EventKind::Unspecified as i32, 99] {
        let e = c
            .watch(pb::WatchTasksRequest {
                kinds: vec![pb::EventKind::Succeeded as i32, bad],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("not an event kind"), "{}", e.message());
    }

    // Nothing acknowledged was touched.
    let t = c.get("kept").await.unwrap();
    assert_eq!(t.state, pb::TaskState::Pending as i32);
    assert_eq!(t.payload, b"payload");
    cluster.shutdown().await;
}

/// The largest legal task — 1 MiB each of payload, progress and result — still submits, claims,
/// reads, lists and watches through the bundled client; a page of such tasks is cut by bytes
/// and the listing still sees every task once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_largest_legal_tasks_read_watch_claim_and_list_in_bounded_pages() {
    // Each 1 MiB entry must replicate within one heartbeat interval (50 ms here): byte fields
    // are copied in one go, not encoded byte by byte.
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let mib = 1 << 20;
    for i in 0..6 {
        c.submit(pb::SubmitTaskRequest {
            payload: vec![b'p'; mib],
            ..submit_req(&format!("big-{i}"), "big", 3000)
        })
        .await
        .unwrap();
    }
    let claim = c.claim(claim_task_req("big", "w", "big-0")).await.unwrap();
    let token = claim.lease.as_ref().unwrap().token;
    assert_eq!(claim.task.as_ref().unwrap().payload.len(), mib);
    c.progress(token, &claim.lease_secret, vec![b'g'; mib])
        .await
        .unwrap();
    c.complete(pb::CompleteTaskRequest {
        result: vec![b'r'; mib],
        ..success("big-0", token, &claim.lease_secret)
    })
    .await
    .unwrap();
    let t = c.get("big-0").await.unwrap();
    assert_eq!(
        (t.payload.len(), t.progress.len(), t.result.len()),
        (mib, mib, mib)
    );
    let mut w = c
        .watch(pb::WatchTasksRequest {
            from_revision: 1,
            task_id: "big-0".into(),
            kinds: vec![pb::EventKind::Succeeded as i32],
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = w.message().await.unwrap().unwrap();
    assert_eq!(ev.task.unwrap().result.len(), mib);
    // Pages of 1000 are cut at about 4 MiB, and continue where they stopped.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list(pb::ListTasksRequest {
                queue: "big".into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            page.tasks.len() <= 4,
            "{} tasks in a page",
            page.tasks.len()
        );
        seen.extend(page.tasks.into_iter().map(|t| t.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<String> = (0..6).map(|i| format!("big-{i}")).collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, want, "every task once");
    assert!(pages >= 2);
    cluster.shutdown().await;
}

/// A node whose Raft core has stopped says so on grpc.health.v1 instead of taking calls that
/// can only time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_raft_stopped_answers_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let cluster = Cluster::start(3).await;
    assert_eq!(
        health_of(&cluster.addrs[2]).await,
        ServingStatus::Serving as i32
    );
    // The core stops (as after a storage error); the gRPC server stays up.
    cluster.servers[2]
        .as_ref()
        .unwrap()
        .node()
        .raft
        .shutdown()
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "NOT_SERVING", || {
        let addr = cluster.addrs[2].clone();
        async move { (health_of(&addr).await == ServingStatus::NotServing as i32).then_some(()) }
    })
    .await;
    // The others serve on.
    assert_eq!(
        health_of(&cluster.addrs[0]).await,
        ServingStatus::Serving as i32
    );
    cluster.shutdown().await;
}
