//! Bad input gets a clear gRPC status and loses nothing already acknowledged.
mod common;
use common::*;
use leasekeeper::proto::v1 as pb;
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
