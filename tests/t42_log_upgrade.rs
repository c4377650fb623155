//! Upgrade in place, with real processes: a cluster that ran on the previous log layout (the
//! Raft log in sled, `--log-store sled`) with whole snapshot files, snapshots and purges
//! included, is SIGKILLed and started on the segment log with the sled checkpoint
//! (`--state-store sled`). Each node converts its log and its snapshot file on start; nothing
//! acknowledged is lost, revisions stay what they were, and the cluster goes on. A converted
//! node refuses `--log-store sled` and `--state-store file` with a message saying why.
mod common;
use common::procs::Procs;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

async fn states(
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

/// Starts node `i` with `p.extra` and expects it to exit with `why` in its log.
async fn refuses(p: &mut Procs, i: usize, why: &str) {
    p.spawn(i);
    let exited = within(Duration::from_secs(15), || {
        let st = p.children[i].as_mut().unwrap().try_wait().unwrap();
        async move { st }
    })
    .await
    .expect("the node refuses to start");
    assert!(!exited.success());
    let log = std::fs::read_to_string(p.dir.path().join(format!("node-{}.log", i + 1))).unwrap();
    assert!(log.contains(why), "{log}");
    p.children[i] = None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sled_log_is_converted_on_start_and_nothing_is_lost() {
    let timing = [
        "--snapshot-every-entries",
        "40",
        "--keep-after-snapshot",
        "10",
    ];
    let mut old: Vec<&str> = timing.to_vec();
    old.extend(["--log-store", "sled", "--state-store", "file"]);
    let mut new: Vec<&str> = timing.to_vec();
    new.extend(["--state-store", "sled"]);
    let mut p = Procs::start(3, &old);
    p.wait_leader(Duration::from_secs(15)).await;
    let c = p.client();
    let mut ids = Vec::new();
    for i in 0..120 {
        let id = format!("t-{i}");
        c.submit(submit_req(&id, "q", 3000)).await.unwrap();
        ids.push(id);
    }
    for _ in 0..20 {
        let r = c.claim(claim_req("q", "w")).await.unwrap();
        let t = r.task.unwrap();
        c.complete(success(&t.id, r.lease.unwrap().token, &r.lease_secret))
            .await
            .unwrap();
    }
    let before = states(&c, &ids).await;
    for i in 0..3 {
        let d = p.dir.path().join(format!("node-{}", i + 1));
        assert!(d.join("sled").exists());
        eventually(Duration::from_secs(15), "a snapshot file written", || {
            let f = d.join("snapshot");
            async move { f.exists().then_some(()) }
        })
        .await;
    }

    // SIGKILL all three; start them on the new layout.
    for i in 0..3 {
        p.kill(i);
    }
    p.extra = new.iter().map(|s| s.to_string()).collect();
    for i in 0..3 {
        p.spawn(i);
    }
    p.wait_leader(Duration::from_secs(20)).await;
    let c = p.client();
    assert_eq!(
        states(&c, &ids).await,
        before,
        "the conversion kept every task and revision"
    );
    for i in 0..3 {
        let d = p.dir.path().join(format!("node-{}", i + 1));
        assert!(
            !d.join("sled").exists(),
            "node {}: the old log is removed",
            i + 1
        );
        let segs = std::fs::read_dir(d.join("raftlog")).unwrap().count();
        assert!(segs >= 1, "node {}: segments written", i + 1);
        assert!(d.join("state").is_dir(), "node {}: checkpoint store", i + 1);
        assert!(
            !d.join("snapshot").exists(),
            "node {}: the converted snapshot file is removed",
            i + 1
        );
    }
    assert!((1..=3).all(|i| {
        std::fs::read_to_string(p.dir.path().join(format!("node-{i}.log")))
            .unwrap()
            .contains("snapshot file converted to the state checkpoint")
    }));
    assert!(
        p.logs()
            .contains("converted the Raft log from sled to segment files")
            || {
                // The log tail printed by `logs()` may have scrolled past it: read the whole files.
                (1..=3).all(|i| {
                    std::fs::read_to_string(p.dir.path().join(format!("node-{i}.log")))
                        .unwrap()
                        .contains("converted the Raft log")
                })
            }
    );
    // The cluster goes on: writes, and a completed task after the upgrade.
    c.submit(submit_req("after", "q", 3000)).await.unwrap();
    let r = c.claim(claim_req("q", "w2")).await.unwrap();
    let t = r.task.unwrap();
    c.complete(success(&t.id, r.lease.unwrap().token, &r.lease_secret))
        .await
        .unwrap();

    // A converted node refuses the old layout, saying why, and starts again without the flag.
    p.kill(2);
    p.extra = old.iter().map(|s| s.to_string()).collect();
    refuses(&mut p, 2, "holds a segment log").await;
    // Started on snapshot files (the default) after it converted to the sled checkpoint.
    p.extra = timing.iter().map(|s| s.to_string()).collect();
    refuses(&mut p, 2, "holds a state checkpoint").await;
    p.extra = new.iter().map(|s| s.to_string()).collect();
    p.spawn(2);
    let node = p.client_of(2);
    eventually(Duration::from_secs(15), "node 3 back and caught up", || {
        let node = node.clone();
        async move {
            node.get_with("after", leasekeeper::proto::v1::ReadConsistency::Stale)
                .await
                .ok()
        }
    })
    .await;
}
