use super::*;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(crate::state::Request {
            now_unix_ms: 1_800_000_000_000 + index,
            cmd: crate::state::Command::RenewBatch {
                tokens: (0..(index % 7)).collect(),
            },
        }),
    }
}

fn open(dir: &std::path::Path, segment_bytes: u64) -> Result<SegLog<OsFs>, StorageError> {
    SegLog::open_with(OsFs::new(dir).unwrap(), Default::default(), segment_bytes)
}

async fn ids(log: &mut SegLog<OsFs>) -> Vec<LogId> {
    let got = log.try_get_log_entries(..).await.unwrap();
    got.iter().map(|e| e.log_id).collect()
}

fn segs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn entries_vote_and_committed_survive_a_restart_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1024).unwrap();
    log.save_vote(&Vote::new(3, 2)).await.unwrap();
    for chunk in (1..=300u64).collect::<Vec<_>>().chunks(10) {
        log.append_durable(chunk.iter().map(|i| entry(1, *i)).collect())
            .await
            .unwrap();
    }
    log.save_committed(Some(id(1, 250))).await.unwrap();
    assert!(
        log.segments() > 3,
        "small segments rotate: {}",
        log.segments()
    );
    let want: Vec<LogId> = (1..=300).map(|i| id(1, i)).collect();
    assert_eq!(ids(&mut log).await, want);
    drop(log);

    let mut log = open(dir.path(), 1024).unwrap();
    assert_eq!(ids(&mut log).await, want);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(id(1, 250)));
    let st = log.get_log_state().await.unwrap();
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (None, Some(id(1, 300)))
    );
    // Entries read back from disk (not the cache) are the entries written.
    let got = log.try_get_log_entries(100..103).await.unwrap();
    assert_eq!(got, vec![entry(1, 100), entry(1, 101), entry(1, 102)]);
}

#[tokio::test]
async fn truncation_and_purge_replay_and_purged_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 512).unwrap();
    for i in (1..=100).step_by(10) {
        log.append_durable((i..i + 10).map(|i| entry(1, i)).collect())
            .await
            .unwrap();
    }
    log.truncate(id(1, 61)).await.unwrap();
    log.append_durable((61..=120).map(|i| entry(2, i)).collect())
        .await
        .unwrap();
    let oldest = segs(dir.path()).remove(0);
    log.purge(id(1, 50)).await.unwrap();
    assert!(!oldest.exists(), "a segment wholly purged is removed");
    let want: Vec<LogId> = (51..=60)
        .map(|i| id(1, i))
        .chain((61..=120).map(|i| id(2, i)))
        .collect();
    assert_eq!(ids(&mut log).await, want);
    drop(log);
    let mut log = open(dir.path(), 512).unwrap();
    assert_eq!(ids(&mut log).await, want);
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(id(1, 50))
    );
    // Purging past the end (a snapshot installed from the leader) empties the log.
    log.purge(id(3, 500)).await.unwrap();
    assert!(ids(&mut log).await.is_empty());
    log.append_durable(vec![entry(3, 501)]).await.unwrap();
    drop(log);
    let mut log = open(dir.path(), 512).unwrap();
    assert_eq!(ids(&mut log).await, vec![id(3, 501)]);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(id(3, 500)), Some(id(3, 501)))
    );
}

#[tokio::test]
async fn an_append_that_leaves_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    log.append_durable(vec![entry(1, 1), entry(1, 2)])
        .await
        .unwrap();
    let e = log.append_durable(vec![entry(1, 5)]).await.unwrap_err();
    assert!(e.to_string().contains("gap"), "{e}");
}

/// Writes 20 entries into one segment and returns the file and the offsets of each record.
async fn one_segment() -> (tempfile::TempDir, std::path::PathBuf, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    log.append_durable((1..=20).map(|i| entry(1, i)).collect())
        .await
        .unwrap();
    let len = log.size_on_disk();
    drop(log);
    let f = segs(dir.path()).pop().unwrap();
    (dir, f, len)
}

fn flip(path: &std::path::Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_back_to_the_last_valid_record() {
    let (dir, f, len) = one_segment().await;
    // Cut in the middle of the last record, then zeros as a file system may leave.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    let got = ids(&mut log).await;
    assert_eq!(got, (1..=19).map(|i| id(1, i)).collect::<Vec<_>>());
    let cut = std::fs::metadata(&f).unwrap().len();
    assert!(cut < len - 3, "the torn record is cut off the file");
    // The log goes on after the cut.
    log.append_durable(vec![entry(1, 20), entry(1, 21)])
        .await
        .unwrap();
    drop(log);
    let mut b = std::fs::read(&f).unwrap();
    b.extend_from_slice(&[0u8; 100]);
    std::fs::write(&f, b).unwrap();
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(ids(&mut log).await.len(), 21);
}

#[tokio::test]
async fn a_bit_flip_in_the_last_record_is_a_torn_tail() {
    let (dir, f, len) = one_segment().await;
    flip(&f, len - 2);
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(ids(&mut log).await.len(), 19);
}

#[tokio::test]
async fn damage_before_the_tail_is_refused_with_where_it_is() {
    let (dir, f, len) = one_segment().await;
    flip(&f, len / 2);
    let e = open(dir.path(), SEGMENT_BYTES).err().expect("refused");
    let msg = e.to_string();
    assert!(msg.contains("damaged at byte"), "{msg}");
    assert!(msg.contains("records that check out follow it"), "{msg}");
    assert!(msg.contains("Replacing a node"), "{msg}");
    // Nothing was cut: the operator still has the evidence.
    assert_eq!(std::fs::metadata(&f).unwrap().len(), len);
}

#[tokio::test]
async fn damage_in_an_earlier_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1024).unwrap();
    for i in 1..=100 {
        log.append_durable(vec![entry(1, i)]).await.unwrap();
    }
    drop(log);
    let first = segs(dir.path()).remove(0);
    let len = std::fs::metadata(&first).unwrap().len();
    flip(&first, len - 2);
    let e = open(dir.path(), 1024).err().expect("refused");
    assert!(e.to_string().contains("later segments follow it"), "{e}");
}

#[tokio::test]
async fn a_missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1024).unwrap();
    for i in 1..=100 {
        log.append_durable(vec![entry(1, i)]).await.unwrap();
    }
    log.purge(id(1, 10)).await.unwrap();
    drop(log);
    let s = segs(dir.path());
    std::fs::remove_file(&s[s.len() / 2]).unwrap();
    let e = open(dir.path(), 1024).err().expect("refused");
    assert!(
        e.to_string().contains("gap") || e.to_string().contains("missing"),
        "{e}"
    );
}

#[tokio::test]
async fn a_segment_whose_header_was_torn_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    log.append_durable((1..=5).map(|i| entry(1, i)).collect())
        .await
        .unwrap();
    drop(log);
    std::fs::write(dir.path().join(seg_name(2)), b"LKL").unwrap();
    let mut log = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(ids(&mut log).await.len(), 5);
    assert_eq!(segs(dir.path()).len(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u64),
    Truncate(u64),
    Purge(u64),
    Vote(u64),
    Committed(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..20u64).prop_map(Op::Append),
        1 => (0..30u64).prop_map(Op::Truncate),
        1 => (0..40u64).prop_map(Op::Purge),
        1 => (1..9u64).prop_map(Op::Vote),
        1 => (0..40u64).prop_map(Op::Committed),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of appends, truncations, purges, votes and restarts on small segments reads
    /// back as a map of index to entry kept alongside says it should.
    #[test]
    fn the_log_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path(), 700).unwrap();
            let mut model: BTreeMap<u64, LogId> = BTreeMap::new();
            let (mut purged, mut vote, mut committed) = (None::<LogId>, None, None);
            let mut term = 1;
            for op in ops {
                match op {
                    Op::Append(n) => {
                        let next = model.keys().last().map(|i| i + 1).or(purged.map(|p| p.index + 1)).unwrap_or(1);
                        let es: Vec<Entry> = (next..next + n).map(|i| entry(term, i)).collect();
                        for e in &es { model.insert(e.log_id.index, e.log_id); }
                        log.append_durable(es).await.unwrap();
                    }
                    Op::Truncate(back) => {
                        let Some(&last) = model.keys().last() else { continue };
                        let from = last.saturating_sub(back).max(model.keys().next().copied().unwrap_or(0));
                        log.truncate(id(term, from)).await.unwrap();
                        model.split_off(&from);
                        term += 1;
                    }
                    Op::Purge(k) => {
                        let Some(&first) = model.keys().next() else { continue };
                        let up_to = first + k;
                        let pid = model.get(&up_to).copied().unwrap_or(id(term, up_to));
                        if purged.is_some_and(|p: LogId| p.index >= up_to) { continue }
                        log.purge(pid).await.unwrap();
                        model = model.split_off(&(up_to + 1));
                        purged = Some(pid);
                    }
                    Op::Vote(t) => {
                        let v = Vote::new(t + 10 * term, 1);
                        log.save_vote(&v).await.unwrap();
                        vote = Some(v);
                    }
                    Op::Committed(i) => {
                        let c = Some(id(term, i));
                        log.save_committed(c).await.unwrap();
                        committed = c;
                    }
                    Op::Reopen => {
                        drop(log);
                        log = open(dir.path(), 700).unwrap();
                    }
                }
                let got: Vec<LogId> = ids(&mut log).await;
                let want: Vec<LogId> = model.values().copied().collect();
                assert_eq!(got, want);
                let st = log.get_log_state().await.unwrap();
                assert_eq!(st.last_purged_log_id, purged);
                assert_eq!(st.last_log_id, want.last().copied().or(purged));
                assert_eq!(log.read_vote().await.unwrap(), vote);
                assert_eq!(log.read_committed().await.unwrap(), committed);
            }
            drop(log);
            let mut log = open(dir.path(), 700).unwrap();
            assert_eq!(ids(&mut log).await, model.values().copied().collect::<Vec<_>>());
        });
    }
}
