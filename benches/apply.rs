//! The state machine's apply path: `cargo bench --bench apply`.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use leasekeeper::state::{Command, Effects, Request, State, TaskSpec, WorkerReport};
use std::collections::BTreeSet;

const NOW: u64 = 1_800_000_000_000;

fn spec(id: String) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        queue: "q".into(),
        payload: vec![b'x'; 64],
        max_attempts: 3,
        lease_ttl_ms: 30_000,
        initial_backoff_ms: 1000,
        max_backoff_ms: 60_000,
    }
}

fn req(cmd: Command) -> Request {
    Request {
        now_unix_ms: NOW,
        cmd,
    }
}

fn claim(task_id: Option<String>) -> Command {
    Command::Claim {
        queue: "q".into(),
        worker_id: "w".into(),
        lease_ttl_ms: None,
        task_id,
        claim_id: String::new(),
        secret: 1,
    }
}

/// A state with `n` running tasks; returns it, the next free index and the lease tokens.
fn with_leases(n: usize) -> (State, u64, Vec<u64>) {
    let cfg = vec![BTreeSet::from([1u64, 2, 3])];
    let mut s = State::new();
    let mut fx = Effects::default();
    let mut index = 1;
    let mut tokens = Vec::new();
    for i in 0..n {
        s.apply_entry(
            index,
            &req(Command::Submit(spec(format!("t{i}")))),
            &cfg,
            &mut fx,
        );
        index += 1;
        if let leasekeeper::state::Response::Claimed { lease, .. } =
            s.apply_entry(index, &req(claim(None)), &cfg, &mut fx)
        {
            tokens.push(lease.token);
        }
        index += 1;
        fx.clear();
    }
    (s, index, tokens)
}

fn benches(c: &mut Criterion) {
    let cfg = vec![BTreeSet::from([1u64, 2, 3])];
    let mut g = c.benchmark_group("apply");

    g.throughput(Throughput::Elements(1));
    g.bench_function("submit", |b| {
        let mut s = State::new();
        let mut fx = Effects::default();
        let mut index = 0;
        b.iter(|| {
            index += 1;
            s.apply_entry(
                index,
                &req(Command::Submit(spec(format!("t{index}")))),
                &cfg,
                &mut fx,
            );
            fx.clear();
        })
    });

    // One RenewBatch of 1000 tokens over 100 000 live leases.
    let (state, next, tokens) = with_leases(100_000);
    let batch: Vec<u64> = tokens.iter().step_by(100).copied().collect();
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("renew_batch_1000_of_100k", |b| {
        let mut s = state.clone();
        let mut fx = Effects::default();
        let mut index = next;
        b.iter(|| {
            index += 1;
            s.apply_entry(
                index,
                &req(Command::RenewBatch {
                    tokens: batch.clone(),
                }),
                &cfg,
                &mut fx,
            );
            fx.clear();
        })
    });

    // submit → claim → 3 renewals → complete for 100 tasks, one command per entry.
    g.throughput(Throughput::Elements(100));
    g.bench_function("lifecycle", |b| {
        b.iter_batched(
            || (State::new(), Effects::default()),
            |(mut s, mut fx)| {
                let mut index = 0;
                for i in 0..100 {
                    let id = format!("t{i}");
                    index += 1;
                    s.apply_entry(
                        index,
                        &req(Command::Submit(spec(id.clone()))),
                        &cfg,
                        &mut fx,
                    );
                    index += 1;
                    let token =
                        match s.apply_entry(index, &req(claim(Some(id.clone()))), &cfg, &mut fx) {
                            leasekeeper::state::Response::Claimed { lease, .. } => lease.token,
                            r => panic!("{r:?}"),
                        };
                    for _ in 0..3 {
                        index += 1;
                        s.apply_entry(
                            index,
                            &req(Command::RenewBatch {
                                tokens: vec![token],
                            }),
                            &cfg,
                            &mut fx,
                        );
                    }
                    index += 1;
                    let done = Command::Complete {
                        task_id: id,
                        token,
                        report: WorkerReport {
                            success: true,
                            exit_code: 0,
                            result: b"ok".to_vec(),
                            error: String::new(),
                        },
                    };
                    s.apply_entry(index, &req(done), &cfg, &mut fx);
                    fx.clear();
                }
                s
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(name = apply; config = Criterion::default().sample_size(20); targets = benches);
criterion_main!(apply);
