//! Real processes: SIGKILL the leader, then stop and restart the whole cluster. Nothing that was
//! acknowledged may be lost, and revisions must stay what they were.
mod common;
use common::procs::Procs;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::Duration;

async fn snapshot_of(
    c: &leasekeeper::client::Client,
    ids: &[String],
) -> BTreeMap<String, (i32, u64, u64)> {
    let mut m = BTreeMap::new();
    for id in ids {
        let t = c
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("task {id} lost: {e}"));
        m.insert(id.clone(), (t.state, t.created_rev, t.updated_rev));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_and_full_restart_lose_nothing_acknowledged() {
    let mut p = Procs::start(3, &[]);
    let leader = p.wait_leader(Duration::from_secs(15)).await;
    let c = p.client();

    // Acknowledged writes before the kill: 30 submitted, 10 of them completed.
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = format!("before-{i}");
        c.submit(submit_req(&id, "q", 3000)).await.unwrap();
        ids.push(id);
    }
    for _ in 0..10 {
        let r = c.claim(claim_req("q", "w")).await.unwrap();
        let t = r.task.unwrap();
        c.complete(success(&t.id, r.lease.unwrap().token, &r.lease_secret))
            .await
            .unwrap();
    }
    let before = snapshot_of(&c, &ids).await;

    // A running task whose worker keeps renewing across the failover.
    c.submit(submit_req("long", "long", 3000)).await.unwrap();
    let long = c.claim(claim_req("long", "w-long")).await.unwrap();
    let (long, secret) = (long.lease.unwrap().token, long.lease_secret);

    p.kill(leader);
    let started = std::time::Instant::now();
    // The client carries on: these go through whichever node answers.
    c.renew(long, &secret)
        .await
        .expect("renewal across the failover");
    let new_leader = p.wait_leader(Duration::from_secs(15)).await;
    assert_ne!(new_leader, leader);
    eprintln!("failover: new leader after {:?}", started.elapsed());
    for i in 0..10 {
        let id = format!("after-{i}");
        c.submit(submit_req(&id, "q", 3000)).await.unwrap();
        ids.push(id);
    }
    c.renew(long, &secret).await.unwrap();
    assert_eq!(
        snapshot_of(&c, &ids[..30]).await,
        before,
        "acknowledged writes survive the leader's death"
    );

    // The killed node comes back and catches up.
    p.spawn(leader);
    let all = snapshot_of(&c, &ids).await;
    eventually(
        Duration::from_secs(10),
        "the restarted node to catch up",
        || {
            let node = p.client_of(leader);
            let ids = ids.clone();
            let all = all.clone();
            async move {
                for id in &ids {
                    let t = node.get_with(id, pb::ReadConsistency::Stale).await.ok()?;
                    if (t.state, t.created_rev, t.updated_rev) != all[id] {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let long_task = c.get("long").await.unwrap();
    assert_eq!(
        long_task.state,
        pb::TaskState::Running as i32,
        "the renewing worker kept its lease"
    );

    // Stop all three (SIGKILL) and start them again: state and revisions intact.
    for i in 0..3 {
        p.kill(i);
    }
    for i in 0..3 {
        p.spawn(i);
    }
    p.wait_leader(Duration::from_secs(15)).await;
    let c = p.client();
    assert_eq!(
        snapshot_of(&c, &ids).await,
        all,
        "a full restart keeps state and revisions"
    );
    // A lease alive at the restart is heard anew: it is not expired by the downtime.
    c.renew(long, &secret)
        .await
        .expect("the lease survives a full restart");
    let r = c.complete(success("long", long, &secret)).await.unwrap();
    assert_eq!(r.task.unwrap().state, pb::TaskState::Succeeded as i32);
}
