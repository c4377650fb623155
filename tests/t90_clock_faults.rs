//! One node's clock goes wrong — running twice as fast, jumping an hour ahead, standing still —
//! on a cluster of real `leasekeeper server` processes, the faulty one under libfaketime (its
//! monotonic clock faked too). Whatever that node does, a worker that renews on time never loses
//! its lease, and a lease nobody renews still expires by the votes of the sane majority.
//!
//! Needs Debian's `faketime` package (`.ci/run` installs it).
mod common;
use common::procs::Procs;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::time::{Duration, Instant};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const TTL: u64 = 1500;

fn faketime_env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let mut env = vec![("LD_PRELOAD".to_string(), LIBFAKETIME.to_string())];
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Makes node 0 (the faulty one) the leader if a few leader kills get it there; returns whether
/// it is.
async fn try_make_leader(p: &mut Procs, node: usize) -> bool {
    for _ in 0..8 {
        let l = p.wait_leader(Duration::from_secs(15)).await;
        if l == node {
            return true;
        }
        p.kill(l);
        // The others elect without it; then it comes back as a follower.
        p.wait_leader(Duration::from_secs(15)).await;
        p.spawn(l);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    p.wait_leader(Duration::from_secs(15)).await == node
}

/// (wall, monotonic) clock of node `i` as it reports them, against the test's own clocks.
async fn clock_of(p: &Procs, i: usize) -> (i64, u64) {
    let s = p.status(i).await.expect("node answers");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (s.unix_ms as i64 - now, s.monotonic_ms)
}

struct Outcome {
    live_renewals: u32,
    dead_expired_after: Duration,
}

/// A renewing worker and a silent one for `run_for`; `during` runs at `fault_at` (e.g. a jump).
async fn renewing_and_silent(
    p: &Procs,
    run_for: Duration,
    fault_at: Duration,
    during: impl FnOnce(),
) -> Outcome {
    let c = p.client();
    for id in ["live", "dead"] {
        c.submit(pb::SubmitTaskRequest {
            id: id.into(),
            queue: "clock".into(),
            lease_ttl_ms: TTL,
            max_attempts: 3,
            retry: Some(pb::RetryPolicy {
                initial_backoff_ms: 60_000,
                max_backoff_ms: 60_000,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let claim = |id: &'static str| {
        let c = c.clone();
        async move { c.claim(claim_task_req("clock", "w", id)).await.unwrap() }
    };
    let live = claim("live").await;
    let (live, live_secret) = (live.lease.unwrap().token, live.lease_secret);
    let _dead = claim("dead").await;
    let started = Instant::now();
    let mut dead_expired_after = None;
    let mut live_renewals = 0;
    let mut during = Some(during);
    while started.elapsed() < run_for {
        if started.elapsed() >= fault_at {
            if let Some(f) = during.take() {
                f();
            }
        }
        // Renew on time: a third of the TTL, as the SDK does.
        match c.renew(live, &live_secret).await {
            Ok(_) => live_renewals += 1,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                panic!(
                    "false expiration after {:?}: {}\n{}",
                    started.elapsed(),
                    e.message(),
                    p.logs()
                )
            }
            Err(e) => eprintln!("renewal not answered ({e}); trying again"),
        }
        if dead_expired_after.is_none() {
            if let Ok(t) = c.get("dead").await {
                if t.state != pb::TaskState::Running as i32 {
                    dead_expired_after = Some(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(TTL / 3)).await;
    }
    let t = c.get("live").await.unwrap();
    assert_eq!(t.state, pb::TaskState::Running as i32, "{t:#?}");
    assert_eq!(
        t.attempt, 1,
        "the renewing worker kept its first lease: {t:#?}"
    );
    let dead = c.get("dead").await.unwrap();
    assert_eq!(
        dead.history[0].outcome,
        pb::AttemptOutcome::Expired as i32,
        "a silent worker's lease expires by the sane majority: {dead:#?}\n{}",
        p.logs()
    );
    Outcome {
        live_renewals,
        dead_expired_after: dead_expired_after.expect("dead lease expired during the run"),
    }
}

fn check_expiry_delay(o: &Outcome) {
    // Not before the TTL, and within TTL + a renew interval + vote/commit slack.
    assert!(
        o.dead_expired_after >= Duration::from_millis(TTL),
        "{:?}",
        o.dead_expired_after
    );
    assert!(
        o.dead_expired_after <= Duration::from_millis(TTL * 3),
        "silent lease expired only after {:?}",
        o.dead_expired_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_at_double_speed_even_as_leader() {
    let mut envs = vec![Vec::new(); 3];
    envs[0] = faketime_env(&[("FAKETIME", "+0 x2")]);
    let mut p = Procs::start_with_env(3, &[], envs);
    let leads = try_make_leader(&mut p, 0).await;
    // The others' probes see node 1's clock at twice their rate, and node 1 sees theirs at
    // half its own: most voters disagree with it, so it judges its own clock off.
    let judged = eventually(
        Duration::from_secs(15),
        "node 1 judges its clock off",
        || async {
            let s = p.status(0).await?;
            s.clock_off.then_some(s)
        },
    )
    .await;
    assert!(
        judged
            .peer_clocks
            .iter()
            .all(|c| (0.4..0.6).contains(&c.rate)),
        "node 1 sees the others at half its rate: {:?}",
        judged.peer_clocks
    );
    for i in [1, 2] {
        let fast = eventually(
            Duration::from_secs(10),
            "a rate estimate of node 1",
            || async {
                let s = p.status(i).await?;
                assert!(!s.clock_off, "node {} is sane: {s:?}", i + 1);
                let c = *s.peer_clocks.iter().find(|c| c.node_id == 1)?;
                (c.rate > 0.0).then_some(c)
            },
        )
        .await;
        assert!(
            (1.6..2.4).contains(&fast.rate),
            "node {} sees node 1 at {}",
            i + 1,
            fast.rate
        );
        let (_, metrics) = http_get(&p.metrics_addrs[i], "/metrics").await;
        let rate = metric(&metrics, "leasekeeper_peer_clock_rate", &[("peer", "1")]);
        assert!(
            (1.6..2.4).contains(&rate),
            "node {}'s metric: {rate}",
            i + 1
        );
    }
    let (code, text) = cli(&["status", "--endpoints", &p.addrs.join(",")]).await;
    assert_eq!(code, 0, "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .expect("node 1's row");
    assert!(
        row.contains("OFF"),
        "status shows node 1's clock off: {text}"
    );
    let (_, m0) = clock_of(&p, 0).await;
    let t0 = Instant::now();
    let o = renewing_and_silent(&p, Duration::from_secs(6), Duration::ZERO, || {}).await;
    // Node 1 cast no vote while its clock was off: the expiry is the sane nodes' alone.
    let dead = p.client().get("dead").await.unwrap();
    assert!(
        !dead.history[0].expiry_voters.contains(&1),
        "{:?}",
        dead.history[0]
    );
    let (_, metrics) = http_get(&p.metrics_addrs[0], "/metrics").await;
    assert_eq!(
        metric(&metrics, "leasekeeper_expiry_votes_cast_total", &[]),
        0.0
    );
    assert_eq!(metric(&metrics, "leasekeeper_clock_off", &[]), 1.0);
    let (_, m1) = clock_of(&p, 0).await;
    let rate = (m1 - m0) as f64 / t0.elapsed().as_millis() as f64;
    assert!(
        (1.6..2.4).contains(&rate),
        "node 1's monotonic clock ran at {rate:.2}x, not 2x"
    );
    eprintln!(
        "x2 node (measured {rate:.2}x) leader={leads}: {} renewals, silent lease expired after {:?}",
        o.live_renewals, o.dead_expired_after
    );
    check_expiry_delay(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_jumps_an_hour_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("faketime");
    std::fs::write(&file, "+0\n").unwrap();
    let mut envs = vec![Vec::new(); 3];
    envs[0] = faketime_env(&[
        ("FAKETIME_TIMESTAMP_FILE", file.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
    ]);
    let mut p = Procs::start_with_env(3, &[], envs);
    let leads = try_make_leader(&mut p, 0).await;
    let o = renewing_and_silent(
        &p,
        Duration::from_secs(6),
        Duration::from_millis(2000),
        || {
            std::fs::write(&file, "+3600\n").unwrap();
        },
    )
    .await;
    let (skew, _) = clock_of(&p, 0).await;
    assert!(
        (3_500_000..3_700_000).contains(&skew),
        "node 1's wall clock is {skew} ms off, not +1 h"
    );
    eprintln!(
        "+1 h node (wall clock {skew} ms ahead) leader={leads}: {} renewals, silent lease expired after {:?}",
        o.live_renewals, o.dead_expired_after
    );
    check_expiry_delay(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_clock_stands_still() {
    let mut envs = vec![Vec::new(); 3];
    // An absolute time without '@' is a frozen clock (wall and monotonic).
    envs[0] = faketime_env(&[("FAKETIME", "2026-11-24 12:00:00")]);
    let p = Procs::start_with_env(3, &[], envs);
    // A node whose clock does not move cannot time anything out; the other two elect a leader.
    p.wait_leader(Duration::from_secs(15)).await;
    let (_, m0) = clock_of(&p, 0).await;
    let o = renewing_and_silent(&p, Duration::from_secs(6), Duration::ZERO, || {}).await;
    let (_, m1) = clock_of(&p, 0).await;
    assert!(
        m1 - m0 < 50,
        "node 1's monotonic clock moved {} ms while frozen",
        m1 - m0
    );
    eprintln!(
        "frozen node: {} renewals, silent lease expired after {:?}",
        o.live_renewals, o.dead_expired_after
    );
    check_expiry_delay(&o);
}
