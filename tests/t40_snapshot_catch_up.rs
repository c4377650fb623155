//! A follower that was down while many entries were written catches up by snapshot.
mod common;
use common::procs::Procs;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_follower_catches_up_by_snapshot() {
    let mut p = Procs::start(
        3,
        &[
            "--snapshot-every-entries",
            "50",
            "--keep-after-snapshot",
            "10",
        ],
    );
    let leader = p.wait_leader(Duration::from_secs(15)).await;
    let lagging = (leader + 1) % 3;
    p.kill(lagging);
    let c = p.client();
    for i in 0..300 {
        c.submit(submit_req(&format!("t-{i}"), "q", 3000))
            .await
            .unwrap();
    }
    // The leader's log has been purged past what the lagging node had.
    let st = eventually(Duration::from_secs(10), "a purge on the leader", || {
        let p = &p;
        async move { p.status(leader).await.filter(|s| s.purged_index > 100) }
    })
    .await;
    p.spawn(lagging);
    let caught = eventually(
        Duration::from_secs(15),
        "the lagging node to catch up",
        || {
            let p = &p;
            async move {
                p.status(lagging)
                    .await
                    .filter(|s| s.applied_index >= st.applied_index && s.tasks == 300)
            }
        },
    )
    .await;
    assert!(
        caught.snapshot_index > 0,
        "caught up by installing a snapshot: {caught:?}"
    );
    let t = p
        .client_of(lagging)
        .get_with("t-0", pb::ReadConsistency::Stale)
        .await
        .unwrap();
    assert_eq!(t.state, pb::TaskState::Pending as i32);
}
