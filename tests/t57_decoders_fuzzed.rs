//! Every decoder that network or disk input reaches, fed arbitrary and mutated bytes with a
//! bounded budget (proptest; `PROPTEST_CASES` raises it for longer runs): Raft messages and
//! forwarded proposals, their answers, snapshots, the worker journal, page tokens and peer
//! credentials. None may panic; postcard pre-allocates no more than the input can fill, so no
//! decode allocates beyond the input's legal size.
use leasekeeper::api::validate::{decode_page, encode_page};
use leasekeeper::raft::{codec, Entry, TypeConfig};
use leasekeeper::state::{Command, Request, Response, State, TaskSpec, TaskState, WorkerReport};
use leasekeeper::worker::{Journal, Outcome};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proptest::prelude::*;

fn spec(id: &str) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        queue: "q".into(),
        payload: b"payload".to_vec(),
        max_attempts: 3,
        lease_ttl_ms: 3000,
        initial_backoff_ms: 10,
        max_backoff_ms: 100,
    }
}

/// Valid encodings of each kind of input, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let req = Request {
        now_unix_ms: 1_700_000_000_000,
        cmd: Command::Batch(vec![
            Command::Submit(spec("a")),
            Command::Claim {
                queue: "q".into(),
                worker_id: "w".into(),
                lease_ttl_ms: Some(5000),
                task_id: None,
                claim_id: "k".into(),
                secret: 42,
            },
            Command::RenewBatch {
                tokens: vec![1, 2, 3],
            },
            Command::Complete {
                task_id: "a".into(),
                token: 65536,
                report: WorkerReport {
                    success: true,
                    exit_code: 0,
                    result: b"ok".to_vec(),
                    error: String::new(),
                },
            },
            Command::ExpiryVote {
                voter: 1,
                votes: vec![(65536, 2)],
            },
        ]),
    };
    let entry: Entry = openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
        payload: openraft::EntryPayload::Normal(req.clone()),
    };
    let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: openraft::Vote::new_committed(3, 1),
        prev_log_id: None,
        entries: vec![entry.clone()],
        leader_commit: None,
    };
    let vote: VoteRequest<u64> = VoteRequest::new(openraft::Vote::new(4, 2), None);
    let mut state = State::new();
    let mut fx = leasekeeper::state::Effects::default();
    let cfg = vec![[1u64, 2, 3].into_iter().collect()];
    state.apply_entry(1, &req, &cfg, &mut fx);
    let snapshot = state.to_bytes();
    let chunk: InstallSnapshotRequest<TypeConfig> = InstallSnapshotRequest {
        vote: openraft::Vote::new_committed(3, 1),
        meta: Default::default(),
        offset: 0,
        data: snapshot.clone(),
        done: true,
    };
    vec![
        codec::encode(&req),
        codec::encode(&entry),
        codec::encode(&append),
        codec::encode(&vote),
        codec::encode(&chunk),
        codec::encode(&Response::Batch(vec![Response::Ok, Response::NoTask])),
        snapshot,
    ]
}

/// Every decoder of the Raft path, on the same bytes.
fn decode_all(bytes: &[u8]) {
    let _ = codec::decode::<Request>(bytes);
    let _ = codec::decode::<Entry>(bytes);
    let _ = codec::decode::<AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = codec::decode::<VoteRequest<u64>>(bytes);
    let _ = codec::decode::<InstallSnapshotRequest<TypeConfig>>(bytes);
    let _ = codec::decode::<Response>(bytes);
    let _ = State::from_bytes(bytes);
    let _ = State::from_bytes_with_parts(bytes, 4);
    let _ = State::check_snapshot_bytes(bytes);
}

fn mutate(mut b: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, op, val) in edits {
        if b.is_empty() {
            b.push(val);
            continue;
        }
        let i = pos % b.len();
        match op % 5 {
            0 => b[i] ^= val | 1,
            1 => b.insert(i, val),
            2 => {
                b.remove(i);
            }
            3 => b.truncate(i),
            _ => b[i] = val,
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_raft_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic_a_raft_decoder(
        which in 0usize..7,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let seeds = seeds();
        let b = mutate(seeds[which % seeds.len()].clone(), &edits);
        decode_all(&b);
    }

    #[test]
    fn a_mutated_snapshot_is_refused_or_loads_a_consistent_state(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let b = mutate(seeds()[6].clone(), &edits);
        if let Ok(s) = State::from_bytes(&b) {
            prop_assert!(s.validate().is_ok());
        }
        // The same bytes with their CRC made to match, so that the decoders meet the damage
        // itself: the decoder that also finds the task list's parts (a start, a received
        // snapshot) agrees with the plain one, and never panics.
        let mut fixed = b.clone();
        if fixed.starts_with(leasekeeper::state::SNAPSHOT_MAGIC) && fixed.len() >= 12 {
            let crc = crc32fast::hash(&fixed[12..]);
            fixed[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        for bytes in [&b, &fixed] {
            let plain = State::from_bytes(bytes).ok();
            let with_parts = State::from_bytes_with_parts(bytes, 2).ok();
            prop_assert_eq!(with_parts.as_ref().map(|(s, _)| s), plain.as_ref());
            if let Some(s) = &plain {
                prop_assert!(s.validate().is_ok());
            }
        }
        // The check a snapshot file gets, read a piece at a time before it is sent, agrees
        // with the check of the bytes in memory.
        let streamed = State::check_snapshot_reader(b.as_slice()).expect("reading memory");
        prop_assert_eq!(streamed.is_ok(), State::check_snapshot_bytes(&b).is_ok());
    }

    #[test]
    fn page_tokens_of_any_text_never_panic(s in "\\PC{0,600}") {
        let _ = decode_page(&s);
    }

    #[test]
    fn mutated_page_tokens_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let token = encode_page(&("queue/a".into(), TaskState::Running, "task-1".into()));
        let b = mutate(token.into_bytes(), &edits);
        let _ = decode_page(&String::from_utf8_lossy(&b));
    }
}

proptest! {
    // Each case opens a journal on disk (fsyncs): a smaller budget.
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_journal_of_any_bytes_opens_or_is_refused_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // A real journal's bytes, mutated; or plain garbage.
        let base = {
            let mut j = Journal::open(dir.path()).unwrap();
            for t in 1..=3u64 {
                j.append(&leasekeeper::worker::Report {
                    task_id: format!("t{t}"),
                    lease_token: t,
                    lease_secret: vec![7; 16],
                    outcome: Outcome::Success { result: vec![1, 2] },
                }).unwrap();
            }
            std::fs::read(j.path()).unwrap()
        };
        let content = if edits.is_empty() { bytes } else { mutate(base, &edits) };
        std::fs::write(dir.path().join("reports.journal"), &content).unwrap();
        match Journal::open(dir.path()) {
            Ok(j) => prop_assert!(j.pending_count() <= content.len() / 8),
            Err(leasekeeper::worker::JournalError::Corrupt { offset, .. }) => {
                prop_assert!(offset < content.len() as u64)
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}

/// Peer credentials are decoded from metadata before anything else: garbage is refused.
#[test]
fn peer_credentials_of_any_shape_are_refused_without_panic() {
    use leasekeeper::raft::peer_auth::{PeerKey, CLUSTER_HEADER, FROM_HEADER, PROOF_HEADER};
    use tonic::metadata::{MetadataMap, MetadataValue};
    let key = PeerKey::new("leasekeeper", b"0123456789abcdef");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..2000 {
        let mut md = MetadataMap::new();
        let n = (next() % 40) as usize;
        let text: String = (0..n)
            .map(|_| (b'!' + (next() % 90) as u8) as char)
            .collect();
        if let Ok(v) = MetadataValue::try_from(text.as_str()) {
            md.insert(CLUSTER_HEADER, v.clone());
            if next() % 2 == 0 {
                md.insert(FROM_HEADER, v);
            } else {
                md.insert(FROM_HEADER, MetadataValue::from(next()));
            }
        }
        let proof: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
        md.insert_bin(PROOF_HEADER, MetadataValue::from_bytes(&proof));
        assert!(key.verify(&md).is_err());
    }
}
