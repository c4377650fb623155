//! Deterministic simulation of whole clusters (3 and 5 nodes) with workers, a scheduler and a
//! fault schedule drawn from one seed: partitions, leader isolation, crashes that lose unflushed
//! writes, lossy and reordering links, and one node's clock at 2x, 0.5x, frozen or an hour ahead.
//! Every run checks the invariants listed in `leasekeeper::sim`.
//!
//! ```sh
//! cargo test --release --test t95_simulation -- --nocapture                     # CI batch
//! LEASEKEEPER_SIM_SEEDS=500 cargo test --release --test t95_simulation -- --nocapture
//! LEASEKEEPER_SIM_SEED=1234 cargo test --test t95_simulation -- --nocapture     # replay one
//! ```
use leasekeeper::sim::{run, SimConfig, SimReport};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn show(r: &SimReport) {
    eprintln!(
        "seed {:>6}: {} nodes, {:>5} ms simulated, {} faults, {} succeeded, {} cancelled, \
         {} claims, {} renewals, {} expirations ({} of dead workers), {} late successes, \
         {} histories linearizable ({} inconclusive), messages {:?}, trace {:016x}",
        r.seed,
        r.nodes,
        r.simulated_ms,
        r.faults.len(),
        r.tasks_succeeded,
        r.tasks_cancelled,
        r.claims,
        r.renewals_acked,
        r.expirations,
        r.dead_leases_expired,
        r.late_successes,
        r.histories_checked,
        r.histories_inconclusive,
        r.messages,
        r.trace
    );
}

fn run_checked(seed: u64) -> SimReport {
    let r = run(SimConfig::from_seed(seed));
    show(&r);
    if !r.violations.is_empty() {
        panic!(
            "simulation seed {seed} failed; replay it with\n  LEASEKEEPER_SIM_SEED={seed} cargo test \
             --test t95_simulation -- --nocapture\nfaults:\n  {}\nviolations:\n  {}",
            r.faults.join("\n  "),
            r.violations.join("\n  ")
        );
    }
    r
}

#[test]
fn seeds_hold_every_invariant() {
    if let Some(seed) = env_u64("LEASEKEEPER_SIM_SEED") {
        run_checked(seed);
        return;
    }
    let count = env_u64("LEASEKEEPER_SIM_SEEDS").unwrap_or(60);
    let first = env_u64("LEASEKEEPER_SIM_FIRST").unwrap_or(1);
    for seed in first..first + count {
        run_checked(seed);
    }
}

#[test]
fn a_seed_replays_exactly() {
    // 42 keeps the state in snapshot files, 43 in the sled checkpoint store.
    for seed in [42, 43] {
        let a = run(SimConfig::from_seed(seed));
        let b = run(SimConfig::from_seed(seed));
        assert_eq!(a.faults, b.faults);
        assert_eq!(
            a.trace, b.trace,
            "seed {seed}: the same seed must give the same client-visible history"
        );
    }
}

/// The simulation's power to find a real storage bug: disks that acknowledge an append before
/// it is flushed lose acknowledged writes when a majority loses power at once, and some seed of
/// a small batch must show it (a lost success, a non-linearizable history, or nodes that
/// disagree).
#[test]
fn a_disk_that_acknowledges_before_fsync_is_caught() {
    for seed in 1..=60 {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.broken_disks = true;
        let r = run(cfg);
        if !r.violations.is_empty() {
            eprintln!("seed {seed} caught the planted bug: {}", r.violations[0]);
            return;
        }
    }
    panic!("60 seeds ran on disks that acknowledge before fsync and no invariant noticed");
}

/// One node's clock an hour ahead from the start (it gets no client traffic, so every claim is
/// stamped by a sane clock), no other faults, several dead workers: when that node's vote
/// decides an expiry, the retry's not-before is stamped an hour ahead.
fn clock_an_hour_ahead(seed: u64) -> SimConfig {
    let mut c = SimConfig::from_seed(seed);
    c.nodes = 3;
    c.fault_schedule = false;
    c.fault_ms = 8_000;
    c.skewed_node = Some((3, 3_600_000));
    c.dead_workers = 6;
    c
}

#[test]
fn regression_seed_retry_stamped_an_hour_ahead_is_not_stuck() {
    // Before the fix, seed 5 left a queue task PENDING with a not-before an hour ahead: claims
    // stamped by the sane nodes found nothing to claim, for an hour.
    let r = run_checked_cfg(clock_an_hour_ahead(5));
    assert!(r.dead_leases_expired > 0);
}

fn run_checked_cfg(cfg: SimConfig) -> SimReport {
    let seed = cfg.seed;
    let r = run(cfg);
    show(&r);
    assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
    r
}

#[test]
#[ignore = "a search over seeds for the scenario above; run by hand"]
fn search_clock_an_hour_ahead() {
    let n = env_u64("LEASEKEEPER_SIM_SEEDS").unwrap_or(20);
    let failing: Vec<u64> = (1..=n)
        .filter(|s| !run(clock_an_hour_ahead(*s)).violations.is_empty())
        .collect();
    eprintln!("failing seeds: {failing:?}");
    assert!(failing.is_empty());
}
