//! Memory of the in-memory state: builds a state of N pending tasks shaped like
//! `leasekeeper bench --shape submit`'s (ids like `bench-17-123456`, queue `bench`, a 64-byte
//! payload) and reports resident memory per task (Linux, from /proc/self/status), what a
//! snapshot costs to build and load, what applies wait for while one is built, and what a
//! build against the last build's parts costs after a few thousand changes.
//!
//! ```sh
//! cargo bench --bench state_memory            # 1 000 000 tasks
//! cargo bench --bench state_memory -- 200000
//! ```
use leasekeeper::state::{Command, Effects, Request, State, TaskSpec};
use std::collections::BTreeSet;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let voters: Vec<BTreeSet<u64>> = vec![[1, 2, 3].into_iter().collect()];
    let before = rss_bytes();
    let mut state = State::new();
    let mut fx = Effects::default();
    for i in 0..n {
        fx.clear();
        let spec = bench_spec(format!("bench-{}-{i}", i % 64));
        let req = Request {
            now_unix_ms: 1,
            cmd: Command::Submit(spec),
        };
        state.apply_entry(i + 1, &req, &voters, &mut fx);
    }
    let used = rss_bytes().saturating_sub(before);
    println!(
        "state_memory: {n} pending tasks use {:.0} MiB resident, {:.0} bytes a task \
         (size_of::<Task>() = {} bytes)",
        used as f64 / 1048576.0,
        used as f64 / n as f64,
        std::mem::size_of::<leasekeeper::state::Task>()
    );
    assert_eq!(state.task_count() as u64, n);
    // What a snapshot of this state costs to build and to load (both hold the node's state,
    // so they bound how long an apply can wait behind a snapshot build).
    let t = std::time::Instant::now();
    let bytes = state.to_bytes();
    let built = t.elapsed();
    let t = std::time::Instant::now();
    let loaded = State::from_bytes(&bytes).expect("loads");
    println!(
        "snapshot: {:.1} MiB, serialized in {:.0} ms, loaded in {:.0} ms",
        bytes.len() as f64 / 1048576.0,
        built.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(loaded.task_count() as u64, n);
    drop(loaded);

    // What applies wait for while a snapshot is built: the node holds the state's lock only to
    // take the view (an O(1) copy); the serialization runs on another thread while applies go
    // on, each change copying the tree nodes on its path.
    let t = std::time::Instant::now();
    let view = state.snapshot_view();
    let view_us = t.elapsed().as_secs_f64() * 1e6;
    let serializer = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let bytes = view.to_bytes();
        (bytes.len(), t.elapsed())
    });
    let mut worst = std::time::Duration::ZERO;
    let mut applied = 0u64;
    let t = std::time::Instant::now();
    while !serializer.is_finished() || applied < 1000 {
        let i = n + applied;
        fx.clear();
        let req = Request {
            now_unix_ms: 1,
            cmd: Command::Submit(bench_spec(format!("bench-{}-{i}", i % 64))),
        };
        let one = std::time::Instant::now();
        state.apply_entry(i + 1, &req, &voters, &mut fx);
        worst = worst.max(one.elapsed());
        applied += 1;
    }
    let during = t.elapsed();
    let (len, took) = serializer.join().expect("serializer");
    println!(
        "snapshot under load: view taken in {view_us:.0} µs (the only time the state is held); {:.1} MiB serialized in {:.0} ms beside {applied} applies ({:.1} µs each on average, the slowest {:.0} µs) over {:.0} ms",
        len as f64 / 1048576.0,
        took.as_secs_f64() * 1e3,
        during.as_secs_f64() * 1e6 / applied as f64,
        worst.as_secs_f64() * 1e6,
        during.as_secs_f64() * 1e3,
    );

    // A build against the last build's parts: after 5 000 more entries (2 500 claims of the
    // oldest pending tasks, as a FIFO queue takes them, and 2 500 new tasks), only the parts
    // those touched are encoded; the rest is copied from the last build's bytes.
    let t = std::time::Instant::now();
    let first = state.snapshot_view().plan(Vec::new());
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let parts = first.parts.clone();
    let prev = assemble(first, &[]);
    let mut i = 2 * n;
    for k in 0..2_500u64 {
        for cmd in [
            Command::Claim {
                queue: "bench".into(),
                worker_id: "w".into(),
                lease_ttl_ms: None,
                task_id: None,
                claim_id: format!("c{k}"),
                secret: 7,
            },
            Command::Submit(bench_spec(format!("new-{k}"))),
        ] {
            fx.clear();
            i += 1;
            let req = Request {
                now_unix_ms: 1,
                cmd,
            };
            state.apply_entry(i, &req, &voters, &mut fx);
        }
    }
    let t = std::time::Instant::now();
    let next = state.snapshot_view().plan(parts);
    let next_ms = t.elapsed().as_secs_f64() * 1e3;
    let (kept, encoded) = (next.kept_tasks, next.encoded_tasks);
    let t = std::time::Instant::now();
    let bytes = assemble(next, &prev);
    let copy_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(
        bytes,
        state.to_bytes(),
        "the same bytes as a build from nothing"
    );
    println!(
        "snapshot against the last build: first build planned in {first_ms:.0} ms; after 5 000 \
         entries planned in {next_ms:.0} ms ({kept} tasks kept, {encoded} encoded), its kept \
         bytes copied in {copy_ms:.0} ms"
    );
}

/// A task as `leasekeeper bench --shape submit` submits it, with id `id`.
fn bench_spec(id: String) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        queue: "bench".into(),
        payload: vec![b'x'; 64],
        max_attempts: 3,
        lease_ttl_ms: 30_000,
        initial_backoff_ms: 1_000,
        max_backoff_ms: 60_000,
    }
}

/// The bytes of `plan`, its kept pieces copied from `prev`.
fn assemble(plan: leasekeeper::state::Plan, prev: &[u8]) -> Vec<u8> {
    use leasekeeper::state::Piece;
    let mut out = Vec::with_capacity(plan.len as usize);
    for p in plan.pieces {
        match p {
            Piece::New(b) => out.extend_from_slice(&b),
            Piece::Kept { offset, len, .. } => {
                out.extend_from_slice(&prev[offset as usize..(offset + len) as usize])
            }
        }
    }
    out
}
