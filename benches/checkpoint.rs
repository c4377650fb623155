//! What the state checkpoint costs at scale: a whole write (a snapshot install, or the first
//! checkpoint), the incremental checkpoints that snapshot builds write after it, a restart's
//! load, and, to compare, the whole-state serialization the file store does at every build.
//! The state is N tasks shaped like `leasekeeper bench`'s (64-byte payloads), of which one in
//! ten has run and succeeded.
//!
//! ```sh
//! cargo bench --bench checkpoint               # 200 000 tasks
//! cargo bench --bench checkpoint -- 1000000
//! ```
use leasekeeper::raft::SnapshotMeta;
use leasekeeper::state::{Command, Effects, Request, State, TaskSpec, WorkerReport};
use leasekeeper::store::checkpoint::{Checkpoints, Written};
use std::collections::BTreeSet;
use std::time::Instant;

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(1, 1),
            index,
        )),
        last_membership: Default::default(),
        snapshot_id: format!("bench-{index}"),
    }
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

struct Driver {
    state: State,
    voters: Vec<BTreeSet<u64>>,
    fx: Effects,
    index: u64,
}

impl Driver {
    fn run(&mut self, cmd: Command) -> leasekeeper::state::Response {
        self.index += 1;
        self.fx.clear();
        let req = Request {
            now_unix_ms: 1_000 + self.index,
            cmd,
        };
        self.state
            .apply_entry(self.index, &req, &self.voters, &mut self.fx)
    }

    fn submit(&mut self, i: u64) {
        self.run(Command::Submit(TaskSpec {
            id: format!("bench-{}-{i}", i % 64).into(),
            queue: "bench".into(),
            payload: vec![b'x'; 64],
            max_attempts: 3,
            lease_ttl_ms: 30_000,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }));
    }

    /// Claims the next pending task and reports it succeeded: two entries.
    fn run_one(&mut self, claim: u64) {
        let r = self.run(Command::Claim {
            queue: "bench".into(),
            worker_id: "w".into(),
            lease_ttl_ms: None,
            task_id: None,
            claim_id: format!("c{claim}"),
            secret: 7,
        });
        if let leasekeeper::state::Response::Claimed { task, lease, .. } = r {
            self.run(Command::Complete {
                task_id: task.spec.id.to_string(),
                token: lease.token,
                report: WorkerReport {
                    success: true,
                    exit_code: 0,
                    result: Vec::new(),
                    error: String::new(),
                },
            });
        }
    }
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let mut d = Driver {
        state: State::new(),
        voters: vec![[1, 2, 3].into_iter().collect()],
        fx: Effects::default(),
        index: 0,
    };
    for i in 0..n {
        d.submit(i);
    }
    let mut claims = 0;
    for _ in 0..n / 10 {
        claims += 1;
        d.run_one(claims);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state");
    let (ckpt, _) = Checkpoints::open(&path).expect("open");

    let t = Instant::now();
    let w = ckpt
        .write(&meta(d.index), &d.state.snapshot_view())
        .expect("write");
    println!(
        "checkpoint: {n} tasks: whole write {w:?} in {} ms, {:.0} MiB on disk",
        t.elapsed().as_millis(),
        dir_bytes(&path) as f64 / 1048576.0
    );
    let t = Instant::now();
    let bytes = d.state.snapshot_view().to_bytes();
    println!(
        "checkpoint: the whole-state serialization a file snapshot does: {:.1} MiB in {} ms",
        bytes.len() as f64 / 1048576.0,
        t.elapsed().as_millis()
    );
    drop(bytes);
    for round in 1..=5 {
        // 5 000 entries between checkpoints, as with --snapshot-logs 5000.
        let until = d.index + 5_000;
        while d.index < until {
            claims += 1;
            d.run_one(claims);
        }
        let t = Instant::now();
        let w = ckpt
            .write(&meta(d.index), &d.state.snapshot_view())
            .expect("write");
        let Written::Records { records, bytes } = w else {
            panic!("nothing written")
        };
        println!(
            "checkpoint: incremental {round}: {records} records, {:.1} KiB, in {:.1} ms",
            bytes as f64 / 1024.0,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let want = d.state.task_count();
    drop(ckpt);
    println!(
        "checkpoint: {:.0} MiB on disk after the incremental writes",
        dir_bytes(&path) as f64 / 1048576.0
    );
    for run in 1..=2 {
        let t = Instant::now();
        let (_c, loaded) = Checkpoints::open(&path).expect("reopen");
        let (_, s) = loaded.expect("a checkpoint");
        assert_eq!(s.task_count(), want);
        println!(
            "checkpoint: restart {run}: opened and loaded {want} tasks in {} ms",
            t.elapsed().as_millis()
        );
    }
}
