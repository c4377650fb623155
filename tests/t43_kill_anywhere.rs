//! SIGKILL at any point, with real processes and the real segment log on disk: three nodes with
//! tiny log segments (4 KiB: appends rotate segments all the time) and a snapshot every 30
//! entries (purges remove segments all the time), under a steady load of submits and completed
//! tasks. One node at a time is SIGKILLed at a random moment — mid-append, mid-rotation,
//! mid-purge — and restarted; sometimes it is kept down until the others have purged past it, so
//! that it comes back by a snapshot install, and is killed again during the install.
//!
//! Must hold: every node starts again each time (its log opens: a torn tail is cut, nothing is
//! refused), no acknowledged submit or success is lost, and all three converge.
//! `LEASEKEEPER_KILL_SECS` sets the length (default 15 s).
mod common;
use common::procs::Procs;
use common::*;
use leasekeeper::proto::v1 as pb;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_anywhere_comes_back_and_nothing_acknowledged_is_lost() {
    kill_anywhere("file").await;
}

/// The same with the state checkpointed in sled: kills land mid-checkpoint and mid-install too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_with_the_state_checkpointed_in_sled() {
    kill_anywhere("sled").await;
}

async fn kill_anywhere(state_store: &str) {
    let secs: u64 = std::env::var("LEASEKEEPER_KILL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = rand::random();
    eprintln!("seed {seed}, --state-store {state_store}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut p = Procs::start(
        3,
        &[
            "--log-segment-bytes",
            "4096",
            "--snapshot-every-entries",
            "30",
            "--keep-after-snapshot",
            "5",
            "--state-store",
            state_store,
        ],
    );
    p.wait_leader(Duration::from_secs(15)).await;

    // The load: submits, and claims completed with success, each recorded once acknowledged.
    let submitted = Arc::new(Mutex::new(Vec::<String>::new()));
    let succeeded = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let (c, submitted, succeeded, stop) = (
            p.client(),
            submitted.clone(),
            succeeded.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let id = format!("w{w}-{n}");
                if c.submit(submit_req(&id, "q", 60_000)).await.is_ok() {
                    submitted.lock().unwrap().push(id);
                }
                if n % 3 == 0 {
                    if let Ok(r) = c.claim(claim_req("q", &format!("worker-{w}"))).await {
                        if let (Some(t), Some(l)) = (r.task, r.lease) {
                            if c.complete(success(&t.id, l.token, &r.lease_secret))
                                .await
                                .is_ok()
                            {
                                succeeded.lock().unwrap().push(t.id);
                            }
                        }
                    }
                }
            }
        }));
    }

    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut kills, mut long_downs) = (0, 0);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        let victim = rng.gen_range(0..3);
        p.kill(victim);
        kills += 1;
        if rng.gen_bool(0.25) {
            // Down long enough for the others to purge past it: back by a snapshot install,
            // killed again while it installs, then back for good.
            long_downs += 1;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            p.spawn(victim);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..400))).await;
            p.kill(victim);
            kills += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        }
        p.spawn(victim);
        // Each restart opened its log: the process is still running a moment later.
        tokio::time::sleep(Duration::from_millis(150)).await;
        if let Some(st) = p.children[victim].as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "node {} exited on restart ({st}):\n{}",
                victim + 1,
                p.log_tail(victim, 40)
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    p.wait_leader(Duration::from_secs(20)).await;
    let submitted = submitted.lock().unwrap().clone();
    let succeeded = succeeded.lock().unwrap().clone();
    eprintln!(
        "{kills} kills ({long_downs} kept down past a purge), {} submits and {} successes acknowledged",
        submitted.len(),
        succeeded.len()
    );
    assert!(submitted.len() > 100, "the load ran: {}", submitted.len());
    assert!(kills >= 10);

    // Nothing acknowledged lost, on the cluster and on every node once it has caught up.
    let c = p.client();
    for id in &submitted {
        c.get(id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged task {id} lost: {e}"));
    }
    for id in &succeeded {
        let t = c.get(id).await.unwrap();
        assert_eq!(
            t.state,
            pb::TaskState::Succeeded as i32,
            "task {id} acknowledged as succeeded"
        );
    }
    for i in 0..3 {
        let node = p.client_of(i);
        let (submitted, succeeded) = (submitted.clone(), succeeded.clone());
        eventually(
            Duration::from_secs(20),
            &format!("node {} to catch up", i + 1),
            || {
                let (node, submitted, succeeded) =
                    (node.clone(), submitted.clone(), succeeded.clone());
                async move {
                    for id in submitted.iter().rev().take(50).chain(succeeded.iter()) {
                        let t = node.get_with(id, pb::ReadConsistency::Stale).await.ok()?;
                        if succeeded.contains(id) && t.state != pb::TaskState::Succeeded as i32 {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await;
    }
    let torn: usize = (0..3).map(|i| p.log(i).matches("torn write").count()).sum();
    eprintln!("torn tails cut on restart: {torn}");
}
