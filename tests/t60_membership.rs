//! AddNode / RemoveNode over gRPC against a real three-node cluster: a fourth node joins as a
//! learner, becomes a voter, holds every acknowledged write, counts in the quorum, and leaves.
mod common;
use common::*;
use leasekeeper::node::NodeConfig;
use leasekeeper::proto::v1 as pb;
use leasekeeper::server::Server;
use std::time::Duration;

fn voters(s: &pb::ClusterStatusResponse) -> Vec<u64> {
    s.members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_then_remove_a_voter() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    for i in 0..50 {
        client
            .submit(submit_req(&format!("before-{i}"), "q", 5000))
            .await
            .expect("submit");
    }

    // A fresh node with no initial cluster: it waits to be added.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr4 = listener.local_addr().unwrap().to_string();
    let peer4 = peer_listener.local_addr().unwrap().to_string();
    let mut c4 = NodeConfig::for_tests(4, cluster.dir.path().join("node-4"));
    c4.listen = addr4.clone();
    c4.peer_listen = peer4.clone();
    let s4 = Server::start_on(c4, listener, peer_listener)
        .await
        .expect("node 4 starts");

    // Bad requests are refused with actionable messages and change nothing.
    let e = client.add_node(0, &peer4, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Addresses no node could dial never enter the membership (every later leader would dial
    // them): refused, naming the address, on the leader and on followers alike.
    for bad in ["", "a b:1", "host", "10.0.0.9:0", "http://x:1"] {
        for i in 0..3 {
            let e = cluster
                .client_of(i)
                .add_node(9, bad, false)
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        }
    }
    let e = client.remove_node(9).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Sent to a follower on purpose: the request is forwarded to the leader.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = (leader + 1) % 3;
    let r = cluster
        .client_of(follower)
        .add_node(4, &peer4, false)
        .await
        .expect("add node 4");
    let st = r.status.expect("status");
    assert_eq!(voters(&st), vec![1, 2, 3, 4], "{st:?}");

    // Node 4 holds everything acknowledged before it joined, and what comes after.
    client
        .submit(submit_req("after", "q", 5000))
        .await
        .expect("submit after join");
    let only4 = leasekeeper::client::Client::new([addr4.clone()]).unwrap();
    eventually(Duration::from_secs(10), "node 4 to catch up", || async {
        let t = only4
            .get_with("after", pb::ReadConsistency::Stale)
            .await
            .ok()?;
        let b = only4
            .get_with("before-0", pb::ReadConsistency::Stale)
            .await
            .ok()?;
        Some((t, b))
    })
    .await;
    assert_eq!(s4.node().metrics().current_leader, Some(leader as u64 + 1));

    // Four voters need three acks: with one original node stopped, a write can only commit if
    // node 4 acknowledges it, so node 4 is really counted.
    let stop = (0..3).find(|i| *i != leader).unwrap();
    cluster.stop(stop).await;
    client
        .submit(submit_req("three-of-four", "q", 5000))
        .await
        .expect("write with 3 of 4 voters up");
    let restarted = Server::start(cluster.configs[stop].clone())
        .await
        .expect("restart");
    cluster.servers[stop] = Some(restarted);

    // Remove node 4 (through node 4 itself, forwarded to the leader).
    let r = only4.remove_node(4).await.expect("remove node 4");
    let st = r.status.expect("status");
    assert_eq!(voters(&st), vec![1, 2, 3], "{st:?}");
    assert!(st.members.iter().all(|m| m.node_id != 4), "{st:?}");
    // The cluster carries on without it.
    client
        .submit(submit_req("after-remove", "q", 5000))
        .await
        .expect("write after removal");
    let t = client.get("three-of-four").await.expect("get");
    assert_eq!(t.id, "three-of-four");

    s4.shutdown().await;
    cluster.shutdown().await;
}
