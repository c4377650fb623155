//! How long a node takes to load a snapshot file at start-up (decode, index rebuild, the
//! invariant check), timed on a real node's file, for example one kept by
//! `KEEP_WORK=1 bash scripts/bench-scale.sh`:
//!
//! ```sh
//! cargo bench --bench snapshot_load -- /tmp/tmp.XXXX/node-1/snapshot [runs=3]
//! ```
//!
//! Without a path it does nothing (so that `cargo bench` as a whole still runs).
use leasekeeper::raft::{codec, SnapshotMeta};
use leasekeeper::state::State;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(path) = args.first() else {
        println!("snapshot_load: no snapshot file given; nothing to time");
        return;
    };
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let file = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("snapshot_load: {path}: {e}");
            std::process::exit(2);
        }
    };
    let (meta, data): (SnapshotMeta, Vec<u8>) = match codec::decode(&file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("snapshot_load: {path} is not a snapshot file: {e}");
            std::process::exit(2);
        }
    };
    drop(file);
    for run in 1..=runs {
        let t = std::time::Instant::now();
        match State::from_bytes(&data) {
            Ok(s) => println!(
                "snapshot_load: run {run}: {} ({:.1} MiB, {} tasks) loaded in {} ms",
                meta.snapshot_id,
                data.len() as f64 / 1048576.0,
                s.task_count(),
                t.elapsed().as_millis()
            ),
            Err(e) => {
                eprintln!("snapshot_load: {path} is refused: {e}");
                std::process::exit(1);
            }
        }
    }
}
