use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const NOW: u64 = 1_000_000;

fn voters(n: u64) -> Vec<BTreeSet<NodeId>> {
    vec![(1..=n).collect()]
}

fn spec(id: &str, max_attempts: u32) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        queue: "q".into(),
        payload: b"p".to_vec(),
        max_attempts,
        lease_ttl_ms: 3000,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
    }
}

struct Sm {
    s: State,
    rev: Revision,
    fx: Effects,
    cfg: Vec<BTreeSet<NodeId>>,
}

impl Sm {
    fn new() -> Self {
        Sm {
            s: State::new(),
            rev: 0,
            fx: Effects::default(),
            cfg: voters(3),
        }
    }
    fn run(&mut self, cmd: Command) -> Response {
        self.run_at(NOW, cmd)
    }
    fn run_at(&mut self, now: u64, cmd: Command) -> Response {
        self.rev += 1;
        self.fx.clear();
        self.s.apply(
            self.rev,
            &Request {
                now_unix_ms: now,
                cmd,
            },
            &self.cfg,
            &mut self.fx,
        )
    }
    fn claim(&mut self) -> (Task, Lease) {
        match self.run(Command::Claim {
            queue: "q".into(),
            worker_id: "w".into(),
            lease_ttl_ms: None,
            task_id: None,
            claim_id: String::new(),
            secret: 7,
        }) {
            Response::Claimed { task, lease, .. } => (task, lease),
            r => panic!("expected a claim, got {r:?}"),
        }
    }
    fn complete(&mut self, id: &str, token: Token, success: bool) -> Response {
        self.run(Command::Complete {
            task_id: id.into(),
            token,
            report: WorkerReport {
                success,
                exit_code: if success { 0 } else { 3 },
                result: b"r".to_vec(),
                error: String::new(),
            },
        })
    }
    /// A machine holding task `id`, claimed: its lease's token.
    fn claimed(id: &str) -> (Sm, Token) {
        let mut sm = Sm::new();
        sm.run(Command::Submit(spec(id, 3)));
        let (_, lease) = sm.claim();
        (sm, lease.token)
    }

    fn vote(&mut self, voter: NodeId, token: Token, renewals: u64) -> Response {
        self.run(Command::ExpiryVote {
            voter,
            votes: vec![(token, renewals)],
        })
    }
}

#[test]
fn lifecycle_submit_claim_renew_progress_complete() {
    let mut sm = Sm::new();
    assert!(matches!(
        sm.run(Command::Submit(spec("a", 3))),
        Response::Submitted { created: true, .. }
    ));
    let (task, lease) = sm.claim();
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(lease.token, 2, "the token is the claim's log index");
    assert_eq!(
        sm.fx.heard,
        vec![HeardLease {
            token: 2,
            renewals: 0,
            ttl_ms: 3000,
            queue: Some("q".into()),
        }]
    );
    let r = sm.run(Command::RenewBatch {
        tokens: vec![2, 99],
    });
    assert_eq!(
        r,
        Response::Renewed(vec![
            (2, RenewOutcome::Alive { renewals: 1 }),
            (99, RenewOutcome::Lost(LostReason::Unknown))
        ])
    );
    assert!(matches!(
        sm.run(Command::Progress {
            token: 2,
            progress: b"50%".to_vec()
        }),
        Response::Progressed { .. }
    ));
    let Response::Completed { task, late } = sm.complete("a", 2, true) else {
        panic!()
    };
    assert!(!late);
    assert_eq!(task.state, TaskState::Succeeded);
    assert_eq!(task.progress, b"50%");
    assert_eq!(task.exit_code, Some(0));
    assert_eq!(sm.fx.gone, vec![2]);
    assert_eq!(sm.s.lease_count(), 0);
}

#[test]
fn submit_is_idempotent_and_detects_conflicts() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    assert!(matches!(
        sm.run(Command::Submit(spec("a", 3))),
        Response::Submitted { created: false, .. }
    ));
    assert_eq!(
        sm.run(Command::Submit(spec("a", 4))),
        Response::Rejected(Rejection::AlreadyExists { id: "a".into() })
    );
    assert!(sm.fx.events.is_empty(), "a refused submit emits nothing");
}

#[test]
fn repeated_report_gets_the_same_answer() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let (_, lease) = sm.claim();
    let first = sm.complete("a", lease.token, true);
    let again = sm.complete("a", lease.token, true);
    assert_eq!(first, again);
    assert!(sm.fx.events.is_empty(), "the repeat changes nothing");
    // A different report for the same attempt is refused.
    assert!(matches!(
        sm.complete("a", lease.token, false),
        Response::Rejected(_)
    ));
}

/// Each counted vote keeps its voter's silence: a renewal voids votes and evidence alike, and
/// the expiry records the evidence of the votes that decided it (votes in the older format,
/// without a silence, count but leave none). It survives a snapshot.
#[test]
fn an_expiry_keeps_each_voters_silence_as_its_evidence() {
    let (mut sm, t) = Sm::claimed("a");
    let silent = |voter, renewals, ms| Command::ExpiryVoteSilence {
        voter,
        votes: vec![(t, renewals, ms)],
    };
    assert_eq!(
        sm.run(silent(1, 0, 3_100)),
        Response::Voted { expired: vec![] }
    );
    assert_eq!(sm.fx.votes, vec![1]);
    assert_eq!(
        sm.s.task("a").unwrap().history[0].expiry_silence_ms,
        vec![(1, 3_100)]
    );
    sm.run(Command::RenewBatch { tokens: vec![t] });
    assert!(
        sm.s.task("a").unwrap().history[0]
            .expiry_silence_ms
            .is_empty(),
        "a renewal voids the votes and their evidence"
    );
    assert_eq!(
        sm.run(silent(3, 1, 3_050)),
        Response::Voted { expired: vec![] }
    );
    // A voter voting again replaces its evidence.
    assert_eq!(
        sm.run(silent(3, 1, 3_600)),
        Response::Voted { expired: vec![] }
    );
    assert_eq!(sm.vote(2, t, 1), Response::Voted { expired: vec![t] });
    let task = sm.s.task("a").unwrap().clone();
    let r = &task.history[0];
    assert_eq!(r.outcome, AttemptOutcome::Expired);
    assert_eq!(r.expiry_voters, vec![2, 3]);
    assert_eq!(
        r.expiry_silence_ms,
        vec![(3, 3_600)],
        "node 2 voted without a silence"
    );
    assert_eq!(sm.fx.ended.len(), 1);
    assert_eq!(sm.fx.ended[0].outcome, AttemptOutcome::Expired);
    let back = State::from_bytes(&sm.s.to_bytes()).unwrap();
    assert_eq!(
        back.task("a").unwrap().history[0].expiry_silence_ms,
        vec![(3, 3_600)]
    );
    assert_eq!(back, sm.s);
}

/// Snapshots of the layout before silences (`LKSTATE2`) still load, with no evidence.
#[test]
fn snapshots_from_before_vote_evidence_load() {
    #[derive(serde::Serialize)]
    struct V2 {
        tasks: Vec<super::snapshot::TaskV0>,
        leases: Vec<Lease>,
        last_token: Token,
        last_revision: Revision,
        used_claims: Vec<(String, String, Token)>,
        secrets: Vec<(Token, LeaseSecret)>,
    }
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    sm.run(Command::Submit(spec("b", 3)));
    let (_, lease) = sm.claim();
    let v2 = V2 {
        tasks: sm.s.tasks().map(super::snapshot::task_v0).collect(),
        leases: sm.s.leases().cloned().collect(),
        last_token: sm.s.last_token(),
        last_revision: sm.s.last_revision(),
        used_claims: Vec::new(),
        secrets: vec![(lease.token, sm.s.secret_of(lease.token).unwrap())],
    };
    let body = postcard::to_stdvec(&v2).unwrap();
    let mut bytes = b"LKSTATE2".to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    State::check_snapshot_bytes(&bytes).unwrap();
    let back = State::from_bytes(&bytes).unwrap();
    assert_eq!(back, sm.s);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(
        State::check_snapshot_bytes(&bytes).is_err(),
        "the CRC still guards it"
    );
}

/// Snapshots of the layout before attempts kept their renewals (`LKSTATE3`) still load.
#[test]
fn snapshots_from_before_attempt_renewals_load() {
    #[derive(serde::Serialize)]
    struct V3 {
        tasks: Vec<super::snapshot::TaskV3>,
        leases: Vec<Lease>,
        last_token: Token,
        last_revision: Revision,
        used_claims: Vec<(String, String, Token)>,
        secrets: Vec<(Token, LeaseSecret)>,
    }
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let (_, lease) = sm.claim();
    let v3 = V3 {
        tasks: sm.s.tasks().map(super::snapshot::task_v3).collect(),
        leases: sm.s.leases().cloned().collect(),
        last_token: sm.s.last_token(),
        last_revision: sm.s.last_revision(),
        used_claims: Vec::new(),
        secrets: vec![(lease.token, sm.s.secret_of(lease.token).unwrap())],
    };
    let body = postcard::to_stdvec(&v3).unwrap();
    let mut bytes = b"LKSTATE3".to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    State::check_snapshot_bytes(&bytes).unwrap();
    assert_eq!(State::from_bytes(&bytes).unwrap(), sm.s);
}

/// An attempt's record keeps the renewals of its lease once the lease ends.
#[test]
fn an_ended_attempt_keeps_its_renewals() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let (_, lease) = sm.claim();
    for _ in 0..3 {
        sm.run(Command::RenewBatch {
            tokens: vec![lease.token],
        });
    }
    assert_eq!(
        sm.s.task("a").unwrap().history[0].renewals,
        0,
        "counted by the lease while it lives"
    );
    sm.run(Command::Cancel {
        task_id: "a".into(),
        reason: String::new(),
    });
    assert_eq!(sm.s.task("a").unwrap().history[0].renewals, 3);
}

/// Retry sends a FAILED or CANCELLED task back to PENDING with a new budget; it leaves a
/// PENDING one as it is and refuses a SUCCEEDED one.
#[test]
fn retry_renews_a_finished_task_but_never_a_success() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let retry = |sm: &mut Sm, id: &str| {
        sm.run(Command::Retry {
            task_id: id.into(),
            reason: "operator".into(),
        })
    };
    let before = sm.s.task("a").unwrap().clone();
    assert!(matches!(retry(&mut sm, "a"), Response::Retried { task } if task == before));
    sm.run(Command::Cancel {
        task_id: "a".into(),
        reason: String::new(),
    });
    match retry(&mut sm, "a") {
        Response::Retried { task } => {
            assert_eq!(task.state, TaskState::Pending);
            assert_eq!(task.failures, 0);
            assert_eq!(task.error, "retried by an operator: operator");
        }
        other => panic!("{other:?}"),
    }
    let (_, lease) = sm.claim();
    sm.run(Command::Complete {
        task_id: "a".into(),
        token: lease.token,
        report: WorkerReport {
            success: true,
            exit_code: 0,
            result: vec![],
            error: String::new(),
        },
    });
    assert!(matches!(
        retry(&mut sm, "a"),
        Response::Rejected(Rejection::Terminal {
            state: TaskState::Succeeded,
            ..
        })
    ));
    assert!(matches!(
        retry(&mut sm, "nope"),
        Response::Rejected(Rejection::TaskNotFound { .. })
    ));
}

/// The per-queue, per-state counts (the metrics' task gauge) follow every change.
#[test]
fn counts_by_queue_follow_every_change() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    sm.run(Command::Submit(spec("b", 3)));
    let counts = |sm: &Sm| -> Vec<(String, [u64; 5])> {
        sm.s.counts_by_queue()
            .map(|(q, c)| (q.to_string(), *c))
            .collect()
    };
    assert_eq!(counts(&sm), vec![("q".into(), [2, 0, 0, 0, 0])]);
    let (_, lease) = sm.claim();
    assert_eq!(counts(&sm), vec![("q".into(), [1, 1, 0, 0, 0])]);
    sm.complete("a", lease.token, true);
    assert_eq!(counts(&sm), vec![("q".into(), [1, 0, 1, 0, 0])]);
    sm.run(Command::Cancel {
        task_id: "b".into(),
        reason: String::new(),
    });
    assert_eq!(counts(&sm), vec![("q".into(), [0, 0, 1, 0, 1])]);
    sm.run(Command::Purge {
        finished_before_unix_ms: u64::MAX,
        max: 10,
    });
    assert!(
        counts(&sm).is_empty(),
        "a queue with no task left has no counts"
    );
}

#[test]
fn expiry_needs_a_majority_at_the_same_renewal_count() {
    let (mut sm, t) = Sm::claimed("a");
    assert_eq!(sm.vote(1, t, 0), Response::Voted { expired: vec![] });
    // A renewal lands between the votes: earlier votes are void.
    sm.run(Command::RenewBatch { tokens: vec![t] });
    assert_eq!(
        sm.vote(2, t, 0),
        Response::Voted { expired: vec![] },
        "stale renewal count is ignored"
    );
    assert_eq!(sm.vote(2, t, 1), Response::Voted { expired: vec![] });
    assert_eq!(
        sm.vote(2, t, 1),
        Response::Voted { expired: vec![] },
        "one voter counts once"
    );
    assert!(
        matches!(
            sm.vote(9, t, 1),
            Response::Rejected(Rejection::Malformed { .. })
        ),
        "non-members have no say: their vote is refused"
    );
    assert_eq!(sm.vote(3, t, 1), Response::Voted { expired: vec![t] });
    let task = sm.s.task("a").unwrap();
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!(task.not_before_unix_ms, NOW + 100);
    assert_eq!(task.history[0].outcome, AttemptOutcome::Expired);
    assert_eq!(task.history[0].expiry_voters, vec![2, 3]);
    assert_eq!(sm.fx.events[0].kind, EventKind::RetryScheduled);
    assert_eq!(
        sm.s.lost_reason(t),
        LostReason::Expired { voters: vec![2, 3] }
    );
}

#[test]
fn a_retry_stamped_by_a_clock_an_hour_ahead_is_claimable_by_sane_nodes() {
    const HOUR_MS: u64 = 3_600_000;
    let queue_claim = || Command::Claim {
        queue: "q".into(),
        worker_id: "w2".into(),
        lease_ttl_ms: None,
        task_id: None,
        claim_id: String::new(),
        secret: 7,
    };
    for (vote_clock_ahead_ms, claim_after_ms, claimable) in [
        // An ordinary back-off (100 ms after the first failure) is respected...
        (0, 50, false),
        (0, 100, true),
        // ...and a clock a little ahead only delays a retry by that much.
        (300, 350, false),
        (300, 400, true),
        // A not-before further ahead than the task's longest back-off (1 s) was stamped by a
        // clock ahead of this one's: the retry must not wait for that clock (an hour here).
        (HOUR_MS, 0, true),
        (HOUR_MS, 50, true),
    ] {
        let mut sm = Sm::new();
        sm.run(Command::Submit(spec("a", 3)));
        let (_, lease) = sm.claim();
        let t = lease.token;
        sm.run_at(
            NOW,
            Command::ExpiryVote {
                voter: 1,
                votes: vec![(t, 0)],
            },
        );
        // The vote that decides comes from the node whose clock is ahead.
        let decided = sm.run_at(
            NOW + vote_clock_ahead_ms,
            Command::ExpiryVote {
                voter: 2,
                votes: vec![(t, 0)],
            },
        );
        assert_eq!(decided, Response::Voted { expired: vec![t] });
        let r = sm.run_at(NOW + claim_after_ms, queue_claim());
        assert_eq!(
            matches!(r, Response::Claimed { .. }),
            claimable,
            "vote clock +{vote_clock_ahead_ms} ms, claim at +{claim_after_ms} ms: {r:?}"
        );
        sm.s.check_invariants();
    }
}

#[test]
fn quorum_table() {
    // (voter configs, votes, expired?)
    type Case<'a> = (&'a [&'a [u64]], &'a [u64], bool);
    let cases: &[Case] = &[
        (&[&[1, 2, 3]], &[1], false),
        (&[&[1, 2, 3]], &[1, 2], true),
        (&[&[1, 2, 3]], &[1, 2, 3], true),
        (&[&[1, 2, 3, 4, 5]], &[1, 2], false),
        (&[&[1, 2, 3, 4, 5]], &[1, 2, 3], true),
        (&[&[1]], &[1], true),
        // Joint consensus: a majority in each configuration.
        (&[&[1, 2, 3], &[3, 4, 5]], &[1, 2], false),
        (&[&[1, 2, 3], &[3, 4, 5]], &[2, 3, 4], true),
        (&[&[1, 2, 3], &[3, 4, 5]], &[1, 4, 5], false),
    ];
    for (i, (cfgs, votes, want)) in cases.iter().enumerate() {
        let mut sm = Sm::new();
        sm.cfg = cfgs.iter().map(|c| c.iter().copied().collect()).collect();
        sm.run(Command::Submit(spec("a", 3)));
        let (_, lease) = sm.claim();
        let mut expired = false;
        for v in votes.iter() {
            if let Response::Voted { expired: e } = sm.vote(*v, lease.token, 0) {
                expired |= !e.is_empty();
            }
        }
        assert_eq!(expired, *want, "case {i}: configs {cfgs:?} votes {votes:?}");
    }
}

#[test]
fn retries_back_off_and_then_fail() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 2)));
    let (_, l1) = sm.claim();
    sm.complete("a", l1.token, false);
    let t = sm.s.task("a").unwrap().clone();
    assert_eq!(t.state, TaskState::Pending);
    assert!(
        !sm.s.has_claimable("q", NOW + 99),
        "not before its back-off"
    );
    assert_eq!(
        sm.run_at(
            NOW + 50,
            Command::Claim {
                queue: "q".into(),
                worker_id: "w".into(),
                lease_ttl_ms: None,
                task_id: None,
                claim_id: String::new(),
                secret: 7,
            }
        ),
        Response::NoTask
    );
    let r = sm.run_at(
        NOW + 100,
        Command::Claim {
            queue: "q".into(),
            worker_id: "w".into(),
            lease_ttl_ms: Some(5000),
            task_id: None,
            claim_id: String::new(),
            secret: 7,
        },
    );
    let Response::Claimed { lease: l2, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(l2.attempt, 2);
    assert_eq!(l2.ttl_ms, 5000);
    assert!(l2.token > l1.token);
    let Response::Completed { task, .. } = sm.complete("a", l2.token, false) else {
        panic!()
    };
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.exit_code, Some(3));
}

#[test]
fn late_success_is_accepted_and_supersedes_a_newer_attempt() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let (_, l1) = sm.claim();
    sm.vote(1, l1.token, 0);
    sm.vote(2, l1.token, 0);
    let r = sm.run_at(
        NOW + 1000,
        Command::Claim {
            queue: "q".into(),
            worker_id: "w2".into(),
            lease_ttl_ms: None,
            task_id: None,
            claim_id: String::new(),
            secret: 7,
        },
    );
    let Response::Claimed { lease: l2, .. } = r else {
        panic!("{r:?}")
    };
    // The first worker's renewal learns why it lost the lease.
    assert!(
        matches!(sm.run(Command::RenewBatch { tokens: vec![l1.token] }), Response::Renewed(v) if matches!(v[0].1, RenewOutcome::Lost(LostReason::Expired { .. })))
    );
    // But its success is the truth: the task succeeded.
    let Response::Completed { task, late } = sm.complete("a", l1.token, true) else {
        panic!()
    };
    assert!(late);
    assert_eq!(task.state, TaskState::Succeeded);
    assert!(task.history[0].late);
    assert_eq!(task.history[0].outcome, AttemptOutcome::Succeeded);
    assert_eq!(task.history[1].outcome, AttemptOutcome::Cancelled);
    // The newer attempt learns it at its next renewal.
    assert_eq!(
        sm.run(Command::RenewBatch {
            tokens: vec![l2.token]
        }),
        Response::Renewed(vec![(
            l2.token,
            RenewOutcome::Lost(LostReason::Finished {
                state: TaskState::Succeeded
            })
        )])
    );
    // Its own success now answers that the task is terminal.
    assert_eq!(
        sm.complete("a", l2.token, true),
        Response::Rejected(Rejection::Terminal {
            id: "a".into(),
            state: TaskState::Succeeded
        })
    );
}

#[test]
fn stale_failure_is_recorded_but_changes_nothing() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let (_, l1) = sm.claim();
    sm.run(Command::Release {
        token: l1.token,
        reason: "shutting down".into(),
    });
    let (_, l2) = sm.claim();
    let Response::Completed { task, late } = sm.complete("a", l1.token, false) else {
        panic!()
    };
    assert!(late);
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.lease, Some(l2.token));
    assert_eq!(
        task.failures, 0,
        "a released attempt and a stale failure do not use up attempts"
    );
    assert_eq!(sm.fx.events[0].kind, EventKind::LateReport);
}

#[test]
fn cancel_ends_the_lease_and_is_final() {
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let (_, l) = sm.claim();
    assert!(matches!(
        sm.run(Command::Cancel {
            task_id: "a".into(),
            reason: "".into()
        }),
        Response::Cancelled { .. }
    ));
    assert!(matches!(
        sm.run(Command::Cancel {
            task_id: "a".into(),
            reason: "".into()
        }),
        Response::Cancelled { .. }
    ));
    assert_eq!(sm.s.lost_reason(l.token), LostReason::Cancelled);
    assert_eq!(
        sm.complete("a", l.token, true),
        Response::Rejected(Rejection::Terminal {
            id: "a".into(),
            state: TaskState::Cancelled
        })
    );
    assert_eq!(
        sm.run(Command::Cancel {
            task_id: "zz".into(),
            reason: "".into()
        }),
        Response::Rejected(Rejection::TaskNotFound { id: "zz".into() })
    );
}

fn claim_with_key(worker: &str, key: &str) -> Command {
    Command::Claim {
        queue: "q".into(),
        worker_id: worker.into(),
        lease_ttl_ms: None,
        task_id: None,
        claim_id: key.into(),
        secret: 7,
    }
}

#[test]
fn retried_claim_gets_the_same_lease() {
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    let Response::Claimed { lease: l1, .. } = sm.run(claim_with_key("w", "k1")) else {
        panic!("claim")
    };
    // The answer was lost; the worker retries with the same key: same lease, nothing new.
    let Response::Claimed {
        task, lease: l2, ..
    } = sm.run(claim_with_key("w", "k1"))
    else {
        panic!("retried claim")
    };
    assert_eq!(l1, l2);
    assert_eq!(task.attempt, 1);
    assert_eq!(sm.s.lease_count(), 1);
    // Another worker using the same key is another claim.
    let Response::Claimed { lease: l3, .. } = sm.run(claim_with_key("w2", "k1")) else {
        panic!("other worker")
    };
    assert_ne!(l3.task_id, l1.task_id);
    // Once the lease has ended the key stays spent: a late duplicate makes no second lease.
    sm.complete(&l1.task_id, l1.token, true);
    assert!(sm.s.lease_of_claim("w", "k1").is_none());
    assert!(matches!(
        sm.run(claim_with_key("w", "k1")),
        Response::Rejected(Rejection::ClaimKeyUsed { .. })
    ));
    // Snapshots keep the key index.
    let restored = State::from_bytes(&sm.s.to_bytes()).unwrap();
    assert_eq!(restored.lease_of_claim("w2", "k1"), Some(&l3));
}

#[test]
fn claim_by_id_and_listing() {
    let mut sm = Sm::new();
    for id in ["a", "b", "c"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    let r = sm.run(Command::Claim {
        queue: "q".into(),
        worker_id: "w".into(),
        lease_ttl_ms: None,
        task_id: Some("b".into()),
        claim_id: String::new(),
        secret: 7,
    });
    assert!(matches!(r, Response::Claimed { ref task, .. } if &*task.spec.id == "b"));
    let r = sm.run(Command::Claim {
        queue: "q".into(),
        worker_id: "w".into(),
        lease_ttl_ms: None,
        task_id: Some("b".into()),
        claim_id: String::new(),
        secret: 7,
    });
    assert_eq!(
        r,
        Response::Rejected(Rejection::NotClaimable {
            id: "b".into(),
            state: TaskState::Running
        })
    );
    let (page, next) = sm.s.list(Some("q"), Some(TaskState::Pending), None, 1);
    assert_eq!(page.iter().map(|t| t.id()).collect::<Vec<_>>(), vec!["a"]);
    let (page, next) =
        sm.s.list(Some("q"), Some(TaskState::Pending), next.as_ref(), 1);
    assert_eq!(page.iter().map(|t| t.id()).collect::<Vec<_>>(), vec!["c"]);
    assert!(next.is_none(), "no page follows the last one");
    assert_eq!(
        sm.s.list(None, Some(TaskState::Running), None, 10).0.len(),
        1
    );
    assert_eq!(sm.s.list(Some("q"), None, None, 10).0.len(), 3);
    assert_eq!(sm.s.list(Some("other"), None, None, 10).0.len(), 0);
}

#[test]
fn purge_forgets_old_terminal_tasks_only() {
    let mut sm = Sm::new();
    for id in ["a", "b", "c"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    let (t, l) = sm.claim();
    sm.run_at(
        NOW + 10,
        Command::Complete {
            task_id: t.spec.id.to_string(),
            token: l.token,
            report: WorkerReport {
                success: true,
                exit_code: 0,
                result: vec![],
                error: String::new(),
            },
        },
    );
    sm.run_at(
        NOW + 20,
        Command::Cancel {
            task_id: "b".into(),
            reason: String::new(),
        },
    );
    // Nothing finished before NOW + 10.
    let purge = |before, max| Command::Purge {
        finished_before_unix_ms: before,
        max,
    };
    assert_eq!(sm.run(purge(NOW + 10, 10)), Response::Purged { count: 0 });
    assert_eq!(sm.run(purge(NOW + 100, 1)), Response::Purged { count: 1 });
    assert!(
        sm.s.task("a").is_none(),
        "the oldest finished task goes first"
    );
    assert!(sm.s.task("b").is_some());
    assert_eq!(sm.run(purge(NOW + 100, 10)), Response::Purged { count: 1 });
    assert_eq!(
        sm.s.task("c").unwrap().state,
        TaskState::Pending,
        "live tasks stay"
    );
    // Its lease token is forgotten too; a report for it now names an unknown task.
    assert_eq!(sm.s.lost_reason(l.token), LostReason::Unknown);
    let back = State::from_bytes(&sm.s.to_bytes()).unwrap();
    assert_eq!(back, sm.s);
}

/// A claim key makes one lease, ever: a duplicate of the claim that arrives after its lease ended
/// (a re-sent forward, an attempt the worker gave up on) is refused instead of taking another
/// task under a lease nobody knows of — also after a snapshot is loaded.
#[test]
fn a_claim_key_makes_one_lease_ever() {
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    let (task, lease) = match sm.run(claim_with_key("w", "k1")) {
        Response::Claimed { task, lease, .. } => (task, lease),
        other => panic!("{other:?}"),
    };
    let done = sm.run(Command::Complete {
        task_id: task.spec.id.to_string(),
        token: lease.token,
        report: WorkerReport {
            success: true,
            exit_code: 0,
            result: Vec::new(),
            error: String::new(),
        },
    });
    assert!(matches!(done, Response::Completed { .. }), "{done:?}");
    let again = sm.run(claim_with_key("w", "k1"));
    assert!(
        matches!(again, Response::Rejected(Rejection::ClaimKeyUsed { token, .. }) if token == lease.token),
        "{again:?}"
    );
    assert_eq!(sm.s.leases().count(), 0, "no second lease");
    // The same after a snapshot; another worker's key of the same name is its own.
    let mut back = State::from_bytes(&sm.s.to_bytes()).unwrap();
    assert_eq!(back, sm.s);
    let mut fx = Effects::default();
    let r = back.apply(
        sm.rev + 1,
        &Request {
            now_unix_ms: NOW,
            cmd: claim_with_key("w", "k1"),
        },
        &voters(3),
        &mut fx,
    );
    assert!(
        matches!(r, Response::Rejected(Rejection::ClaimKeyUsed { .. })),
        "{r:?}"
    );
    assert!(matches!(
        sm.run(claim_with_key("v", "k1")),
        Response::Claimed { .. }
    ));
}

/// Snapshots written before claim keys were remembered still load.
#[test]
fn snapshots_without_used_claim_keys_load() {
    #[derive(serde::Serialize)]
    struct Old<'a> {
        tasks: Vec<super::snapshot::TaskV0>,
        leases: Vec<&'a Lease>,
        last_token: Token,
        last_revision: Revision,
    }
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    // As an older log holds it: a claim without a secret.
    sm.run(Command::ClaimV0 {
        queue: "q".into(),
        worker_id: "w".into(),
        lease_ttl_ms: None,
        task_id: None,
        claim_id: String::new(),
    });
    let old = Old {
        tasks: sm.s.tasks().map(super::snapshot::task_v0).collect(),
        leases: sm.s.leases().collect(),
        last_token: sm.s.last_token(),
        last_revision: sm.s.last_revision(),
    };
    let back = State::from_bytes(&postcard::to_stdvec(&old).unwrap()).unwrap();
    assert_eq!(back, sm.s);
}

/// A queue's name is one allocation for all its tasks, and a lease names its task with the
/// task's own id — after submits and after a snapshot is loaded (where every name arrives as a
/// separate string).
#[test]
fn names_are_shared_not_copied() {
    use std::sync::Arc;
    fn check(s: &State) {
        let (a, b) = (s.task("a").unwrap(), s.task("b").unwrap());
        assert!(Arc::ptr_eq(&a.spec.queue, &b.spec.queue));
        let token = a.lease.or(b.lease).expect("one of them is claimed");
        let lease = s.lease(token).unwrap();
        let holder = s.task(&lease.task_id).unwrap();
        assert!(Arc::ptr_eq(&lease.task_id, &holder.spec.id));
    }
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        // A fresh allocation for each submit's queue name, as decoding a log entry makes one.
        let queue: Name = String::from("q").into();
        sm.run(Command::Submit(TaskSpec {
            queue,
            ..spec(id, 3)
        }));
    }
    sm.claim();
    check(&sm.s);
    check(&State::from_bytes(&sm.s.to_bytes()).unwrap());
}

#[test]
fn snapshot_round_trip_keeps_indexes() {
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    sm.claim();
    let back = State::from_bytes(&sm.s.to_bytes()).unwrap();
    assert_eq!(back, sm.s);
}

// ---------------------------------------------------------------- property tests

fn arb_cmd() -> impl Strategy<Value = (u64, Command)> {
    let id = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
    let queue = prop::sample::select(vec!["q", "r"]).prop_map(String::from);
    let token = 0u64..40;
    let cmd = prop_oneof![
        (id.clone(), queue.clone(), 1u32..4).prop_map(|(id, queue, m)| Command::Submit(TaskSpec {
            queue: queue.into(),
            ..spec(&id, m)
        })),
        (
            queue.clone(),
            prop::option::of(id.clone()),
            prop::sample::select(vec!["", "", "c1", "c2"])
        )
            .prop_map(|(queue, task_id, claim_id)| Command::Claim {
                queue,
                worker_id: "w".into(),
                lease_ttl_ms: None,
                task_id,
                claim_id: claim_id.into(),
                secret: 7,
            }),
        prop::collection::vec(token.clone(), 0..4)
            .prop_map(|tokens| Command::RenewBatch { tokens }),
        token.clone().prop_map(|token| Command::Progress {
            token,
            progress: vec![1]
        }),
        (id.clone(), token.clone(), any::<bool>()).prop_map(|(task_id, token, success)| {
            Command::Complete {
                task_id,
                token,
                report: WorkerReport {
                    success,
                    exit_code: if success { 0 } else { 1 },
                    result: vec![],
                    error: String::new(),
                },
            }
        }),
        token.clone().prop_map(|token| Command::Release {
            token,
            reason: String::new()
        }),
        id.clone().prop_map(|task_id| Command::Cancel {
            task_id,
            reason: String::new()
        }),
        id.prop_map(|task_id| Command::Retry {
            task_id,
            reason: String::new()
        }),
        (1u64..5, prop::collection::vec((token, 0u64..3), 1..3))
            .prop_map(|(voter, votes)| Command::ExpiryVote { voter, votes }),
        (0u64..30_000, 1u32..3).prop_map(|(age, max)| Command::Purge {
            finished_before_unix_ms: NOW + age,
            max
        }),
    ];
    (0u64..500, cmd)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Group commit changes nothing but the entry boundaries: commands applied as batch entries
    /// give the same answers and the same state as the same commands applied one per revision.
    #[test]
    fn batches_equal_their_commands_one_by_one(
        cmds in prop::collection::vec(arb_cmd(), 1..80),
        cuts in prop::collection::vec(1usize..6, 1..40),
    ) {
        let cfg = vec![BTreeSet::from([1, 2, 3])];
        let (mut batched, mut single) = (State::new(), State::new());
        let (mut fx_b, mut fx_s) = (Effects::default(), Effects::default());
        let mut i = 0;
        let mut index = 0u64;
        let mut cut = cuts.iter().cycle();
        while i < cmds.len() {
            index += 1;
            let n = (*cut.next().unwrap()).min(cmds.len() - i);
            let group = &cmds[i..i + n];
            let now = NOW + i as u64 * 100;
            let req = Request { now_unix_ms: now, cmd: Command::Batch(group.iter().map(|(_, c)| c.clone()).collect()) };
            let Response::Batch(answers) = batched.apply_entry(index, &req, &cfg, &mut fx_b) else {
                panic!("a batch answers with a batch")
            };
            prop_assert_eq!(answers.len(), n);
            for (j, (_, c)) in group.iter().enumerate() {
                let one = Request { now_unix_ms: now, cmd: c.clone() };
                let a = single.apply(entry_revision(index) + j as u64, &one, &cfg, &mut fx_s);
                prop_assert_eq!(&answers[j], &a);
            }
            batched.check_invariants();
            i += n;
        }
        prop_assert_eq!(&batched, &single);
        prop_assert_eq!(fx_b.events.len(), fx_s.events.len());
        let revs: Vec<_> = fx_b.events.iter().map(|e| e.revision).collect();
        prop_assert!(revs.windows(2).all(|w| w[0] <= w[1]), "event revisions never go back");
    }

    /// Over random command sequences: invariants hold after every step, terminal states never
    /// change, tokens only grow, and a replay (or a snapshot) reaches the same state.
    #[test]
    fn listing_pages_through_exactly_the_matching_tasks(
        cmds in prop::collection::vec(arb_cmd(), 1..80),
        queue in prop::option::of(prop::sample::select(vec!["q", "r", "s"])),
        state in prop::option::of(prop::sample::select(vec![
            TaskState::Pending, TaskState::Running, TaskState::Succeeded,
            TaskState::Failed, TaskState::Cancelled,
        ])),
        limit in 1usize..4,
    ) {
        let mut sm = Sm::new();
        let mut now = NOW;
        for (dt, cmd) in cmds {
            now += dt;
            sm.run_at(now, cmd);
        }
        // What a listing must return: every matching task, by (queue, state, id).
        let mut want: Vec<(String, TaskState, String)> = sm
            .s
            .tasks()
            .filter(|t| queue.map_or(true, |q| &*t.spec.queue == q))
            .filter(|t| state.map_or(true, |s| t.state == s))
            .map(|t| (t.spec.queue.to_string(), t.state, t.spec.id.to_string()))
            .collect();
        want.sort();
        let mut got = Vec::new();
        let mut after = None;
        for _ in 0..100 {
            let (page, next) = sm.s.list(queue, state, after.as_ref(), limit);
            prop_assert!(page.len() <= limit);
            got.extend(
                page.iter()
                    .map(|t| (t.spec.queue.to_string(), t.state, t.spec.id.to_string())),
            );
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_sequences_keep_invariants(cmds in prop::collection::vec(arb_cmd(), 1..120)) {
        let mut sm = Sm::new();
        let mut replica = Sm::new();
        let mut max_token = 0;
        let mut now = NOW;
        // A snapshot view taken halfway serializes the state as it was then, whatever the
        // commands after it changed (they share tree nodes with it).
        let half = cmds.len() / 2;
        let mut halfway = None;
        for (k, (dt, cmd)) in cmds.into_iter().enumerate() {
            if k == half {
                halfway = Some((sm.s.snapshot_view(), sm.s.clone().to_bytes()));
            }
            now += dt;
            let before = sm.s.clone();
            let cmd_seen = cmd.clone();
            let a = sm.run_at(now, cmd.clone());
            let b = replica.run_at(now, cmd);
            prop_assert_eq!(&a, &b, "same command, same answer");
            sm.s.check_invariants();
            for l in sm.s.leases() {
                max_token = max_token.max(l.token);
            }
            if let Response::Claimed { lease, .. } = &a {
                match before.lease(lease.token) {
                    // A retried claim: the same live lease, created by the same key.
                    Some(old) => {
                        prop_assert_eq!(old, lease);
                        prop_assert!(!lease.claim_id.is_empty());
                        prop_assert_eq!(sm.s.clone(), { let mut b = before.clone(); b.note_revision(sm.s.last_revision()); b }, "a retried claim changes nothing");
                    }
                    None => prop_assert!(lease.token == max_token, "a new lease has the highest token"),
                }
            }
            for l in before.leases() {
                prop_assert!(l.token <= max_token);
            }
            // Terminal tasks never change; a purge forgets only terminal tasks, oldest first,
            // finished before its cut-off.
            let purged: Vec<&Task> = before.tasks().filter(|t| sm.s.task(t.id()).is_none()).collect();
            if let Response::Purged { count } = &a {
                prop_assert_eq!(*count as usize, purged.len());
                let cut = match &cmd_seen { Command::Purge { finished_before_unix_ms, .. } => *finished_before_unix_ms, _ => unreachable!() };
                let newest_purged = purged.iter().map(|t| t.updated_at_unix_ms).max();
                for t in &purged {
                    prop_assert!(t.state.is_terminal() && t.updated_at_unix_ms < cut);
                }
                for t in sm.s.tasks().filter(|t| t.state.is_terminal()) {
                    prop_assert!(newest_purged.is_none_or(|n| t.updated_at_unix_ms >= n), "oldest first");
                }
            } else {
                prop_assert!(purged.is_empty(), "only a purge forgets tasks");
            }
            // Terminal tasks never change, but for an operator's retry of a FAILED or
            // CANCELLED one, which sends it back to PENDING with its spec and history. A
            // SUCCEEDED task never changes.
            for t in before.tasks() {
                let id = t.id();
                let Some(now) = sm.s.task(id) else { continue };
                let retried = matches!(&cmd_seen, Command::Retry { task_id, .. } if task_id == id)
                    && matches!(t.state, TaskState::Failed | TaskState::Cancelled);
                if retried {
                    prop_assert_eq!(now.state, TaskState::Pending);
                    prop_assert_eq!(&now.spec, &t.spec);
                    prop_assert_eq!(&now.history, &t.history);
                    prop_assert_eq!(now.failures, 0);
                } else if t.state.is_terminal() {
                    prop_assert_eq!(Some(t), Some(now), "terminal task {} changed", id);
                }
            }
            // Every event is of this revision and shows the task as it now is.
            for e in &sm.fx.events {
                prop_assert_eq!(e.revision, sm.rev);
                prop_assert_eq!(Some(&e.task), sm.s.task(e.task.id()));
            }
        }
        prop_assert_eq!(&sm.s, &replica.s);
        prop_assert_eq!(State::from_bytes(&sm.s.to_bytes()).unwrap(), sm.s);
        if let Some((view, bytes_then)) = halfway {
            prop_assert_eq!(view.to_bytes(), bytes_then, "a view is the state when it was taken");
        }
    }
}

/// Snapshots carry a CRC: a flipped bit anywhere is refused, never half-loaded; and the lease
/// secrets survive a snapshot (without appearing in any task).
#[test]
fn damaged_snapshots_are_refused_and_secrets_survive_snapshots() {
    let mut sm = Sm::new();
    for id in ["a", "b"] {
        sm.run(Command::Submit(spec(id, 3)));
    }
    let (_, lease) = sm.claim();
    let bytes = sm.s.to_bytes();
    assert!(bytes.starts_with(SNAPSHOT_MAGIC));
    let back = State::from_bytes(&bytes).unwrap();
    assert_eq!(back, sm.s);
    assert_eq!(back.secret_of(lease.token), Some(7));
    for i in (SNAPSHOT_MAGIC.len()..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        assert!(
            matches!(State::from_bytes(&bad), Err(SnapshotError::Checksum { .. })),
            "flip at {i} accepted"
        );
        assert!(State::check_snapshot_bytes(&bad).is_err());
    }
    assert!(State::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(State::from_bytes(&bytes[..SNAPSHOT_MAGIC.len() + 2]).is_err());
}

/// What no API call produces is refused by the state machine, deterministically, with no
/// panic: a batch inside a batch, a batch longer than its entry's revision range.
#[test]
fn nested_and_oversized_batches_are_refused() {
    let cfg = voters(3);
    let mut s = State::new();
    let mut fx = Effects::default();
    let nested = Request {
        now_unix_ms: NOW,
        cmd: Command::Batch(vec![
            Command::Submit(spec("ok", 1)),
            Command::Batch(vec![Command::Submit(spec("inner", 1))]),
        ]),
    };
    match s.apply_entry(1, &nested, &cfg, &mut fx) {
        Response::Batch(answers) => {
            assert!(matches!(answers[0], Response::Submitted { .. }));
            assert!(matches!(
                answers[1],
                Response::Rejected(Rejection::Malformed { .. })
            ));
        }
        other => panic!("{other:?}"),
    }
    assert!(s.task("ok").is_some() && s.task("inner").is_none());
    let huge = Request {
        now_unix_ms: NOW,
        cmd: Command::Batch(vec![
            Command::RenewBatch { tokens: vec![] };
            MAX_BATCH_COMMANDS + 1
        ]),
    };
    let before = s.clone();
    assert!(matches!(
        s.apply_entry(2, &huge, &cfg, &mut fx),
        Response::Rejected(Rejection::Malformed { .. })
    ));
    assert_eq!(s.task_count(), before.task_count());
    assert!(s.last_revision() >= entry_revision(2));
}

/// Nested batches are refused by the decoder before it recurses: a message of a hundred
/// thousand nested batches is an error, not a stack overflow.
#[test]
fn deeply_nested_commands_do_not_decode() {
    // postcard: Batch is variant 7, then a length of 1, repeated.
    let mut deep = vec![0u8];
    for _ in 0..100_000 {
        deep.extend_from_slice(&[7, 1]);
    }
    deep.push(0);
    assert!(crate::raft::codec::decode::<Request>(&deep).is_err());
    // Two levels (a batch of single commands) is what the proposer makes, and decodes.
    let legal = Request {
        now_unix_ms: NOW,
        cmd: Command::Batch(vec![Command::Submit(spec("a", 1))]),
    };
    let bytes = crate::raft::codec::encode(&legal);
    assert_eq!(
        crate::raft::codec::decode::<Request>(&bytes).unwrap(),
        legal
    );
    // And the depth counter is back to zero after an error: a legal value still decodes.
    assert!(crate::raft::codec::decode::<Request>(&deep).is_err());
    assert_eq!(
        crate::raft::codec::decode::<Request>(&bytes).unwrap(),
        legal
    );
}

/// Logs and snapshots written before lease secrets still load: a claim entry decodes as
/// `ClaimV0` (a lease without a secret), and a snapshot without secrets or a checksum loads.
#[test]
fn logs_and_snapshots_from_before_lease_secrets_load() {
    #[derive(serde::Serialize)]
    enum OldCommand {
        #[allow(dead_code)]
        Submit(TaskSpec),
        Claim {
            queue: String,
            worker_id: String,
            lease_ttl_ms: Option<u64>,
            task_id: Option<String>,
            claim_id: String,
        },
    }
    #[derive(serde::Serialize)]
    struct OldRequest {
        now_unix_ms: u64,
        cmd: OldCommand,
    }
    let old = OldRequest {
        now_unix_ms: NOW,
        cmd: OldCommand::Claim {
            queue: "q".into(),
            worker_id: "w".into(),
            lease_ttl_ms: None,
            task_id: None,
            claim_id: "k".into(),
        },
    };
    let req: Request = crate::raft::codec::decode(&postcard::to_stdvec(&old).unwrap()).unwrap();
    assert!(matches!(req.cmd, Command::ClaimV0 { .. }), "{req:?}");
    let mut sm = Sm::new();
    sm.run(Command::Submit(spec("a", 3)));
    let Response::Claimed { lease, secret, .. } = sm.run(req.cmd) else {
        panic!("claim")
    };
    assert_eq!(secret, 0);
    assert_eq!(sm.s.secret_of(lease.token), Some(0));

    #[derive(serde::Serialize)]
    struct V1<'a> {
        tasks: Vec<super::snapshot::TaskV0>,
        leases: Vec<&'a Lease>,
        last_token: Token,
        last_revision: Revision,
        used_claims: Vec<(&'a str, &'a str, Token)>,
    }
    let v1 = V1 {
        tasks: sm.s.tasks().map(super::snapshot::task_v0).collect(),
        leases: sm.s.leases().collect(),
        last_token: sm.s.last_token(),
        last_revision: sm.s.last_revision(),
        used_claims: Vec::new(),
    };
    let back = State::from_bytes(&postcard::to_stdvec(&v1).unwrap()).unwrap();
    assert_eq!(back, sm.s);
}

/// Byte fields encode as bytes, which in postcard is the same as the sequence of u8 they were
/// encoded as before: logs and snapshots of older versions read alike.
#[test]
fn byte_fields_keep_their_encoding() {
    #[derive(serde::Serialize)]
    struct Plain {
        payload: Vec<u8>,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Bytes {
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    }
    let v: Vec<u8> = (0..=255).cycle().take(70_000).collect();
    let plain = postcard::to_stdvec(&Plain { payload: v.clone() }).unwrap();
    let bytes = postcard::to_stdvec(&Bytes { payload: v.clone() }).unwrap();
    assert_eq!(plain, bytes);
    let back: Bytes = postcard::from_bytes(&plain).unwrap();
    assert_eq!(back.payload, v);
}

/// Paging through `list` with any filter and any page size gives exactly the tasks a plain
/// filter over every task gives, in (queue, state, id) order.
#[test]
fn list_pages_match_a_plain_filter() {
    let mut sm = Sm::new();
    for i in 0..60 {
        let q = ["a", "q", "z"][i % 3];
        sm.run(Command::Submit(TaskSpec {
            queue: q.into(),
            ..spec(&format!("t{i:02}"), 3)
        }));
    }
    for i in 0..12 {
        sm.run(Command::Claim {
            queue: ["a", "q", "z"][i % 3].into(),
            worker_id: "w".into(),
            lease_ttl_ms: None,
            task_id: None,
            claim_id: String::new(),
            secret: 7,
        });
    }
    for i in (0..60).step_by(7) {
        sm.run(Command::Cancel {
            task_id: format!("t{i:02}"),
            reason: String::new(),
        });
    }
    let queues = [None, Some("a"), Some("q"), Some("z"), Some("nope")];
    let states = [None].into_iter().chain(TaskState::ALL.map(Some));
    for state in states {
        for queue in queues {
            let mut want: Vec<(String, TaskState, String)> =
                sm.s.tasks()
                    .filter(|t| {
                        queue.is_none_or(|q| t.queue() == q) && state.is_none_or(|s| t.state == s)
                    })
                    .map(|t| (t.queue().to_string(), t.state, t.id().to_string()))
                    .collect();
            want.sort();
            for limit in [1, 2, 7, 100] {
                let (mut got, mut after) = (Vec::new(), None);
                loop {
                    let (page, next) = sm.s.list(queue, state, after.as_ref(), limit);
                    assert!(page.len() <= limit);
                    got.extend(
                        page.iter()
                            .map(|t| (t.queue().to_string(), t.state, t.id().to_string())),
                    );
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                assert_eq!(got, want, "queue {queue:?} state {state:?} limit {limit}");
            }
        }
    }
}

// ---------------------------------------------------------------- checkpoint records

/// A checkpoint's records as a store would hold them.
#[derive(Default, Debug, PartialEq)]
struct RecordStore {
    tasks: BTreeMap<String, Task>,
    leases: BTreeMap<Token, Lease>,
    secrets: BTreeMap<Token, LeaseSecret>,
    claims: BTreeMap<u64, (String, String, Token)>,
}

impl RecordStore {
    fn put(&mut self, r: Record<'_>) -> Result<(), ()> {
        match r {
            Record::Task(id, Some(t)) => drop(self.tasks.insert(id.into(), t.clone())),
            Record::Task(id, None) => drop(self.tasks.remove(id)),
            Record::Lease(k, Some(l)) => drop(self.leases.insert(k, l.clone())),
            Record::Lease(k, None) => drop(self.leases.remove(&k)),
            Record::Secret(k, Some(s)) => drop(self.secrets.insert(k, s)),
            Record::Secret(k, None) => drop(self.secrets.remove(&k)),
            Record::UsedClaim(n, Some((w, c, t))) => {
                drop(self.claims.insert(n, (w.into(), c.into(), t)))
            }
            Record::UsedClaim(n, None) => drop(self.claims.remove(&n)),
        }
        Ok(())
    }

    fn of(view: &SnapshotView, first_claim: u64) -> Self {
        let mut s = Self::default();
        view.records(first_claim, &mut |r| s.put(r)).unwrap();
        s
    }

    fn load(&self, view: &SnapshotView) -> State {
        let (last_token, last_revision) = view.counters();
        State::from_parts(Parts {
            tasks: self.tasks.values().cloned().collect(),
            leases: self.leases.values().cloned().collect(),
            last_token,
            last_revision,
            used_claims: self.claims.values().cloned().collect(),
            secrets: self.secrets.iter().map(|(k, s)| (*k, *s)).collect(),
        })
        .unwrap()
    }
}

#[test]
fn checkpoint_changes_drop_the_oldest_used_claims_and_add_the_new() {
    let mut s = State::new();
    for i in 0..machine::USED_CLAIMS_KEPT as u64 - 2 {
        s.remember_used_claim(("w".into(), format!("c{i}")), i + 1);
    }
    let base = s.snapshot_view();
    let mut store = RecordStore::of(&base, 10);
    for i in 0..7u64 {
        s.remember_used_claim(("w".into(), format!("n{i}")), 1_000_000 + i);
    }
    let view = s.snapshot_view();
    let mut writes = 0;
    let first = view
        .changes_since(&base, 10, &mut |r| {
            writes += 1;
            store.put(r)
        })
        .unwrap();
    // Five dropped from the front (7 added, 2 of them into free room), 7 added.
    assert_eq!(first, 15);
    assert_eq!(writes, 12);
    assert_eq!(store, RecordStore::of(&view, first));
    assert_eq!(store.load(&view), s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A store fed one full checkpoint and then only the changes of each later one holds what
    /// a full checkpoint of the last state holds, and loads back into that exact state.
    #[test]
    fn checkpoint_changes_rebuild_the_state(
        cmds in prop::collection::vec(arb_cmd(), 1..120),
        every in 1usize..30,
    ) {
        let mut sm = Sm::new();
        let mut now = NOW;
        let mut base = sm.s.snapshot_view();
        let mut store = RecordStore::of(&base, 0);
        let mut first = 0;
        for (k, (dt, cmd)) in cmds.into_iter().enumerate() {
            now += dt;
            sm.run_at(now, cmd);
            if k % every == 0 {
                let view = sm.s.snapshot_view();
                first = view.changes_since(&base, first, &mut |r| store.put(r)).unwrap();
                base = view;
            }
        }
        let view = sm.s.snapshot_view();
        first = view.changes_since(&base, first, &mut |r| store.put(r)).unwrap();
        prop_assert_eq!(&store, &RecordStore::of(&view, first));
        prop_assert_eq!(store.load(&view), sm.s);
    }
}

/// The bytes of `plan`, its kept pieces taken from `prev` (the bytes of the plan it was made
/// against), each checked against the CRC the plan carries for it.
fn assemble(plan: Plan, prev: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in plan.pieces {
        match p {
            Piece::New(b) => out.extend_from_slice(&b),
            Piece::Kept { offset, len, crc } => {
                let b = &prev[offset as usize..(offset + len) as usize];
                assert_eq!(crc32fast::hash(b), crc, "a kept piece's CRC");
                out.extend_from_slice(b);
            }
        }
    }
    assert_eq!(out.len() as u64, plan.len);
    out
}

#[test]
fn a_plan_copies_the_parts_whose_tasks_did_not_change() {
    let mut sm = Sm::new();
    for i in 0..100 {
        sm.run(Command::Submit(spec(&format!("t{i:03}"), 3)));
    }
    let first = sm.s.snapshot_view().plan_in_parts_of(Vec::new(), 10);
    assert_eq!((first.kept_tasks, first.encoded_tasks), (0, 100));
    assert_eq!(first.parts.len(), 10);
    let parts = first.parts.clone();
    let prev = assemble(first, &[]);
    assert_eq!(prev, sm.s.to_bytes());

    // Nothing changed: every part is copied.
    let same = sm.s.snapshot_view().plan_in_parts_of(parts.clone(), 10);
    assert_eq!((same.kept_tasks, same.encoded_tasks), (100, 0));
    // One task of the 4th part claimed (the oldest pending one is t000: claim by id), and ten
    // new tasks: the changed part and the new ones are encoded, the rest copied.
    sm.run(Command::Claim {
        queue: "q".into(),
        worker_id: "w".into(),
        lease_ttl_ms: None,
        task_id: Some("t035".into()),
        claim_id: String::new(),
        secret: 7,
    });
    for i in 100..110 {
        sm.run(Command::Submit(spec(&format!("t{i:03}"), 3)));
    }
    let next = sm.s.snapshot_view().plan_in_parts_of(parts, 10);
    assert_eq!((next.kept_tasks, next.encoded_tasks), (80, 30));
    let bytes = assemble(next, &prev);
    assert_eq!(
        bytes,
        sm.s.to_bytes(),
        "the same bytes as a plan from nothing"
    );
    assert_eq!(State::from_bytes(&bytes).unwrap(), sm.s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Snapshot bytes planned against the previous build's parts, its unchanged parts copied
    /// from its bytes, are the bytes a plan from nothing makes, and load back into the state:
    /// whatever changed between the builds (claims, reports, votes' evidence, purges, new tasks).
    #[test]
    fn planned_bytes_equal_bytes_encoded_anew(
        cmds in prop::collection::vec(arb_cmd(), 1..120),
        every in 1usize..20,
        part_tasks in 1usize..5,
        fresh in prop::collection::vec(0usize..3, 1..120),
    ) {
        let mut sm = Sm::new();
        let mut now = NOW;
        let mut parts: Vec<Part> = Vec::new();
        let mut prev: Vec<u8> = Vec::new();
        for (k, (dt, cmd)) in cmds.into_iter().enumerate() {
            now += dt;
            sm.run_at(now, cmd);
            for j in 0..fresh[k % fresh.len()] {
                sm.run_at(now, Command::Submit(spec(&format!("n{k}-{j}"), 2)));
            }
            if k % every == 0 {
                let plan = sm.s.snapshot_view().plan_in_parts_of(std::mem::take(&mut parts), part_tasks);
                let next_parts = plan.parts.clone();
                prop_assert!(next_parts.iter().all(|p| !p.tasks.is_empty() && p.tasks.len() <= part_tasks));
                let bytes = assemble(plan, &prev);
                prop_assert_eq!(&bytes, &sm.s.to_bytes());
                prop_assert_eq!(State::from_bytes(&bytes).unwrap(), sm.s.clone());
                // Loaded with its parts (a restart), its plan copies every task.
                let (loaded, loaded_parts) = State::from_bytes_with_parts(&bytes, part_tasks).unwrap();
                prop_assert_eq!(&loaded, &sm.s);
                let loaded_parts = loaded_parts.expect("the parts of bytes in creation order");
                let again = loaded.snapshot_view().plan_in_parts_of(loaded_parts, part_tasks);
                prop_assert_eq!(again.encoded_tasks, 0);
                prop_assert_eq!(assemble(again, &bytes), bytes.clone());
                parts = next_parts;
                prev = bytes;
            }
        }
    }
}

/// A snapshot whose task count claims more tasks than its bytes hold (its CRC made to match)
/// is refused without reserving room for the count.
#[test]
fn a_snapshot_claiming_endless_tasks_is_refused() {
    let mut body = Vec::new();
    let mut n: u64 = 1 << 62;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.extend_from_slice(&[1, 2, 3]);
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    assert!(matches!(
        State::from_bytes_with_parts(&bytes, 16),
        Err(SnapshotError::Decode(_))
    ));
    assert!(State::from_bytes(&bytes).is_err());
}
