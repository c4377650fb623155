//! A hostile client against a real three-node cluster: every attack of docs/SECURITY.md's list.
//! Afterwards the cluster still serves, no lease expired early, and no task changed.
mod common;
use common::*;
use leasekeeper::node::TEST_CLUSTER_SECRET;
use leasekeeper::proto::raft_v1::{raft_client::RaftClient, RaftMessage};
use leasekeeper::proto::v1 as pb;
use leasekeeper::raft::codec;
use leasekeeper::raft::peer_auth::PeerKey;
use leasekeeper::state::{Command, Request};
use prost::Message;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// Every RPC of the peer service.
const PEER_METHODS: [&str; 7] = [
    "append",
    "vote",
    "snapshot",
    "propose",
    "read_index",
    "status",
    "membership",
];

/// A raw Raft client on `addr` (either port).
async fn raft_client(addr: &str) -> RaftClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RaftClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Sends `body` as peer call `method`, signed as `member` under `secret` when given.
async fn peer_call(
    addr: &str,
    method: &str,
    body: Vec<u8>,
    signed: Option<(&str, u64)>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut c = raft_client(addr).await;
    let mut req = tonic::Request::new(RaftMessage { data: body.into() });
    if let Some((secret, member)) = signed {
        PeerKey::new("leasekeeper", secret.as_bytes()).sign(member, req.metadata_mut());
    }
    let r = match method {
        "append" => c.append_entries(req).await,
        "vote" => c.vote(req).await,
        "snapshot" => c.install_snapshot(req).await,
        "propose" => c.propose(req).await,
        "read_index" => c.read_index(req).await,
        "status" => c.status(req).await,
        "membership" => c.change_membership(req).await,
        _ => unreachable!(),
    };
    r.map(|r| r.into_inner().data.to_vec())
}

/// Every task's full state, as the leader holds it.
async fn all_tasks(c: &leasekeeper::client::Client) -> Vec<pb::Task> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list(pb::ListTasksRequest {
                page_token: token.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        out.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn forged_expiry(token: u64) -> Vec<u8> {
    codec::encode(&Request {
        now_unix_ms: 1,
        cmd: Command::Batch(vec![
            Command::ExpiryVote {
                voter: 1,
                votes: vec![(token, 0)],
            },
            Command::ExpiryVote {
                voter: 2,
                votes: vec![(token, 0)],
            },
        ]),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_client_can_neither_forge_crash_wedge_nor_steal() {
    let cluster = Cluster::start_with(3, |c| {
        c.limits.max_watchers = 4;
        c.limits.max_heartbeat_streams = 8;
        c.limits.stream_stall_ms = 500;
    })
    .await;
    let c = cluster.client();
    // The victim: a task claimed with a 60 s lease, and a finished one.
    c.submit(submit_req("victim", "q", 60_000)).await.unwrap();
    c.submit(submit_req("done", "q", 60_000)).await.unwrap();
    let claim = c
        .claim(claim_task_req("q", "w-good", "victim"))
        .await
        .unwrap();
    let token = claim.lease.as_ref().unwrap().token;
    let secret = claim.lease_secret.clone();
    let done = c
        .claim(claim_task_req("q", "w-good", "done"))
        .await
        .unwrap();
    c.complete(success(
        "done",
        done.lease.unwrap().token,
        &done.lease_secret,
    ))
    .await
    .unwrap();
    let before = all_tasks(&c).await;

    // 1. Raft is not served on the client port at all.
    for addr in &cluster.addrs {
        for m in PEER_METHODS {
            let e = peer_call(addr, m, forged_expiry(token), None)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unimplemented, "{m} on client port {addr}");
        }
    }
    // 2. On the peer port: no credentials, a wrong secret, or a non-member's id are refused
    //    before anything in the body is decoded.
    let wrong = "not the cluster secret, but long";
    for addr in &cluster.peer_addrs {
        for m in PEER_METHODS {
            for signed in [None, Some((wrong, 1)), Some((TEST_CLUSTER_SECRET, 9))] {
                let e = peer_call(addr, m, forged_expiry(token), signed)
                    .await
                    .unwrap_err();
                assert_eq!(
                    e.code(),
                    Code::Unauthenticated,
                    "{m} on {addr} as {signed:?}: {e:?}"
                );
            }
        }
    }
    // Counted on every node, shown in status, and the same count in its metrics.
    let st = c.cluster_status().await.unwrap();
    for m in &st.members {
        let refused = m.status.as_ref().unwrap().refused_peer_calls;
        assert!(refused >= 21, "node {} counted {refused}", m.node_id);
        let i = (m.node_id - 1) as usize;
        let (_, text) = http_get(&cluster.metrics_addrs[i], "/metrics").await;
        let counted = metric(&text, "leasekeeper_peer_calls_refused_total", &[]);
        assert_eq!(counted, refused as f64, "node {}", m.node_id);
    }

    // 3. Even a member cannot vote in another's name, purge, or nest batches.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let leader_peer = &cluster.peer_addrs[leader];
    let follower_id = ((leader + 1) % 3) as u64 + 1;
    let as_follower = Some((TEST_CLUSTER_SECRET, follower_id));
    let e = peer_call(leader_peer, "propose", forged_expiry(token), as_follower)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("in the name of node"), "{e:?}");
    let purge = codec::encode(&Request {
        now_unix_ms: u64::MAX,
        cmd: Command::Purge {
            finished_before_unix_ms: u64::MAX,
            max: 1000,
        },
    });
    let e = peer_call(leader_peer, "propose", purge, as_follower)
        .await
        .unwrap_err();
    assert!(e.message().contains("retention purge"), "{e:?}");
    // ~100 KB of nested batches: a decode error, not a stack overflow.
    let mut nested = vec![1u8, 7];
    for _ in 0..50_000 {
        nested.extend_from_slice(&[7, 1]);
    }
    for addr in &cluster.peer_addrs {
        let e = peer_call(addr, "propose", nested.clone(), as_follower)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = peer_call(addr, "append", nested.clone(), as_follower)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // Garbage of every kind from a member is an error too.
    for m in ["append", "vote", "snapshot", "propose", "membership"] {
        let e = peer_call(leader_peer, m, vec![0xff; 64], as_follower)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{m}: {e:?}");
    }

    // Snapshot chunks from a member, sent to a follower under its own vote: out of order, at
    // an offset far past the end (no sparse file, no allocation of it), and a whole snapshot
    // of garbage. Each is answered with the offset expected or refused; the follower keeps its
    // state and its Raft core.
    let follower = (leader + 1) % 3;
    let node = cluster.servers[follower].as_ref().unwrap().node().clone();
    let vote = node.raft.metrics().borrow().vote;
    let chunk = |offset: u64, data: Vec<u8>, done: bool| {
        codec::encode(
            &openraft::raft::InstallSnapshotRequest::<leasekeeper::raft::TypeConfig> {
                vote,
                meta: leasekeeper::raft::SnapshotMeta {
                    last_log_id: Some(openraft::LogId::new(
                        openraft::CommittedLeaderId::new(vote.leader_id().term, leader as u64 + 1),
                        1_000_000,
                    )),
                    last_membership: Default::default(),
                    snapshot_id: "forged".into(),
                },
                offset,
                data,
                done,
            },
        )
    };
    type Answer = Result<
        openraft::raft::InstallSnapshotResponse<u64>,
        leasekeeper::raft::RaftError<openraft::error::InstallSnapshotError>,
    >;
    let expects = |answer: Vec<u8>| match codec::decode::<Answer>(&answer).unwrap() {
        Err(leasekeeper::raft::RaftError::APIError(
            openraft::error::InstallSnapshotError::SnapshotMismatch(m),
        )) => m.expect.offset,
        other => panic!("not a mismatch: {other:?}"),
    };
    let follower_peer = &cluster.peer_addrs[follower];
    let as_leader = Some((TEST_CLUSTER_SECRET, leader as u64 + 1));
    let sent = |body| peer_call(follower_peer, "snapshot", body, as_leader);
    assert_eq!(
        expects(sent(chunk(1 << 50, vec![1; 10], false)).await.unwrap()),
        0
    );
    sent(chunk(0, vec![7; 1000], false)).await.unwrap();
    assert_eq!(
        expects(sent(chunk(1 << 50, vec![1; 10], false)).await.unwrap()),
        1000
    );
    assert_eq!(
        expects(sent(chunk(10, vec![1; 10], false)).await.unwrap()),
        1000
    );
    let e = sent(chunk(1000, vec![0xff; 1000], true)).await.unwrap_err();
    assert!(e.message().contains("refused"), "{e:?}");
    assert!(node.raft.metrics().borrow().running_state.is_ok());
    assert_eq!(
        node.raft.metrics().borrow().snapshot.map(|s| s.index),
        None,
        "nothing installed"
    );

    // 4. What reads return does not let anyone act on a lease.
    let got = c.get("victim").await.unwrap();
    let listed = all_tasks(&c).await;
    let mut watch = c
        .watch(pb::WatchTasksRequest {
            from_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(ev))) =
        tokio::time::timeout(Duration::from_millis(500), watch.message()).await
    {
        seen.push(ev.encode_to_vec());
    }
    drop(watch);
    let shown: Vec<Vec<u8>> = std::iter::once(got.encode_to_vec())
        .chain(listed.iter().map(|t| t.encode_to_vec()))
        .chain(seen)
        .collect();
    for bytes in &shown {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "a read shows the lease secret"
        );
    }
    let read_token = got.history[0].lease_token;
    assert_eq!(read_token, token);
    let thief = cluster.client_of((leader + 1) % 3);
    for guess in [Vec::new(), vec![0u8; 16], token.to_be_bytes().repeat(2)] {
        let e = thief.renew(read_token, &guess).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = thief
            .progress(read_token, &guess, b"mine".to_vec())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = thief
            .release(read_token, &guess, "stolen")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = thief
            .complete(pb::CompleteTaskRequest {
                result: b"forged".to_vec(),
                ..success("victim", read_token, &guess)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let e = thief.renew(read_token, &[1, 2, 3]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // On the Heartbeat stream: DENIED for the stolen token, ALIVE for the claimer's.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = thief
        .worker()
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::HeartbeatRequest {
        seq: 1,
        lease_tokens: vec![read_token, read_token],
        lease_secrets: vec![vec![9; 16], secret.clone()],
    })
    .await
    .unwrap();
    let a = answers.message().await.unwrap().unwrap();
    let statuses: Vec<i32> = a.leases.iter().map(|l| l.status).collect();
    assert!(
        statuses.contains(&(pb::LeaseStatus::Denied as i32)),
        "{a:?}"
    );
    assert!(statuses.contains(&(pb::LeaseStatus::Alive as i32)), "{a:?}");
    drop(tx);

    // 5. Streams are capped per node, and a watcher that never reads is let go.
    let node0 = cluster.client_of(0);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            node0
                .watch(pb::WatchTasksRequest {
                    from_revision: 1,
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
    }
    let e = node0
        .watch(pb::WatchTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // None of the four reads: with more events waiting than the HTTP/2 windows (2 MiB a
    // stream, 5 MiB a connection) and the stream's buffer hold, each is ended after the stall
    // limit and its slot freed.
    for i in 0..400 {
        c.submit(pb::SubmitTaskRequest {
            payload: vec![b'x'; 16 << 10],
            ..submit_req(&format!("flood-{i}"), "flood", 60_000)
        })
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "stalled watchers to be let go",
        || async {
            node0
                .watch(pb::WatchTasksRequest::default())
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    drop(held);
    let mut streams = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::HeartbeatRequest>(1);
        match node0
            .worker()
            .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(s) => streams.push((tx, s)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("heartbeat streams are capped");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(streams.len() <= 8);
    drop(streams);

    // 6. Bad values get INVALID_ARGUMENT with short messages.
    let e = c
        .submit(pb::SubmitTaskRequest {
            retry: Some(pb::RetryPolicy {
                initial_backoff_ms: u64::MAX,
                max_backoff_ms: u64::MAX,
            }),
            ..submit_req("forever", "q", 60_000)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("back-off"), "{e:?}");
    let long_queue = "q".repeat(10_000);
    let e = c
        .submit(submit_req("long", &long_queue, 60_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 300, "{}", e.message().len());
    for token in ["zé", "é", "00", &"ab".repeat(5000), "0g"] {
        let e = c
            .list(pb::ListTasksRequest {
                page_token: token.to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{token:?}: {e:?}");
    }
    let e = c
        .submit(pb::SubmitTaskRequest {
            payload: vec![0; 3 << 20],
            ..submit_req("huge", "q", 60_000)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    for bad in ["a b:1", "", "x:0", "[::1:1"] {
        let e = c.add_node(9, bad, false).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }

    // Afterwards: every node serves, the victim still runs its first attempt, and nothing
    // that was there before changed.
    for i in 0..3 {
        let t = cluster.client_of(i).get("victim").await.unwrap();
        assert_eq!(t.state, pb::TaskState::Running as i32, "node {i}: {t:?}");
        assert_eq!(t.attempt, 1);
    }
    c.renew(token, &secret)
        .await
        .expect("the claimer still holds its lease");
    let after: Vec<pb::Task> = all_tasks(&c)
        .await
        .into_iter()
        .filter(|t| t.queue != "flood")
        .collect();
    let strip = |ts: &[pb::Task]| -> Vec<pb::Task> {
        ts.iter()
            .map(|t| pb::Task {
                lease: None,
                ..t.clone()
            })
            .collect()
    };
    assert_eq!(strip(&after), strip(&before), "no task changed");
    let st = c.cluster_status().await.unwrap();
    assert_eq!(st.members.len(), 3, "{st:?}");
    assert!(st.members.iter().all(|m| m.reachable), "{st:?}");
    cluster.shutdown().await;
}
