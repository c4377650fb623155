//! The log append path with fsync, on both stores: encode entries, write them, one fsync — what
//! an append and its flusher do per group commit. `cargo bench --bench log_append`.
//!
//! - `segments/…`: the segment log (`SegLog::append_durable`: framing, the write, the flusher
//!   thread's fdatasync, the wake-up);
//! - `sled/…`: the previous layout, a sled batch and `Db::flush`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leasekeeper::raft::{codec, Entry, TypeConfig};
use leasekeeper::state::{Command, Request};
use leasekeeper::store::{OsFs, SegLog};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::<TypeConfig>::Normal(Request {
            now_unix_ms: 1_800_000_000_000,
            cmd: Command::RenewBatch {
                tokens: (0..16).collect(),
            },
        }),
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let log = db.open_tree("log").unwrap();
    let mut g = c.benchmark_group("log_append");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seg_dir = tempfile::tempdir().unwrap();
    let mut seg = SegLog::open(OsFs::new(seg_dir.path()).unwrap(), Default::default()).unwrap();
    let mut seg_index = 0u64;
    for per_flush in [1u64, 16, 256] {
        g.throughput(Throughput::Elements(per_flush));
        g.bench_function(format!("segments/{per_flush}_entries_per_fsync"), |b| {
            b.iter(|| {
                let es: Vec<Entry> = (0..per_flush)
                    .map(|_| {
                        seg_index += 1;
                        entry(seg_index)
                    })
                    .collect();
                rt.block_on(seg.append_durable(es)).unwrap();
            })
        });
    }
    for per_flush in [1u64, 16, 256] {
        g.throughput(Throughput::Elements(per_flush));
        let mut index = 0u64;
        g.bench_function(format!("sled/{per_flush}_entries_per_fsync"), |b| {
            b.iter(|| {
                let mut batch = sled::Batch::default();
                for _ in 0..per_flush {
                    index += 1;
                    batch.insert(&index.to_be_bytes(), codec::encode(&entry(index)));
                }
                log.apply_batch(batch).unwrap();
                db.flush().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(name = log_append; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(log_append);
