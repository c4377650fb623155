//! Checkpoints of the state machine in a sled tree: task states, leases, lease secrets and the
//! remembered used claims, one key each, with the snapshot's log id in the same batch.
//!
//! A checkpoint writes only what changed since the one before it (the persistent maps' diff,
//! [`SnapshotView::changes_since`]), as one atomic sled batch followed by one fsync, so it costs
//! what changed, not the size of the state. A snapshot received from the leader is written
//! whole, under a new generation number: its keys are written first, and the meta record that
//! names the generation is switched in a last batch, so a crash leaves the previous checkpoint
//! or the new one, never a mix. The previous generation's keys are deleted afterwards (and at
//! start-up, after a crash).
//!
//! Keys: `m` (the meta record), and `d`, generation (4 bytes big-endian), a kind byte and the
//! record's key (`t` task id, `l` lease token, `s` secret token, `c` used-claim number; numbers
//! big-endian, so keys sort as the state does).
use crate::raft::{codec, SnapshotMeta};
use crate::state::{Lease, LeaseSecret, Parts, Record, Revision, SnapshotView, State, Task, Token};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const META_KEY: &[u8] = b"m";
const DATA: u8 = b'd';
const TASK: u8 = b't';
const LEASE: u8 = b'l';
const SECRET: u8 = b's';
const CLAIM: u8 = b'c';
/// The record layout (the task layout of snapshot `LKSTATE4`).
const LAYOUT: u32 = 1;
/// Records per batch when a whole state is written.
const FULL_BATCH: usize = 8192;
/// sled's page cache: the state is read once at start-up and written in small batches after.
const CACHE_BYTES: u64 = 32 << 20;

/// What the meta record holds.
#[derive(Serialize, Deserialize)]
struct Meta {
    layout: u32,
    generation: u32,
    first_claim: u64,
    last_token: Token,
    last_revision: Revision,
    snapshot: SnapshotMeta,
}

/// The last checkpoint written: what the next one is the difference from.
#[derive(Clone)]
pub struct Base {
    pub meta: SnapshotMeta,
    pub view: SnapshotView,
    generation: u32,
    first_claim: u64,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing: the store already holds this checkpoint or a later one.
    Kept,
    /// This many records, and their bytes.
    Records { records: u64, bytes: u64 },
}

/// The node's checkpoint store (`state/` in the data directory).
pub struct Checkpoints {
    db: sled::Db,
    path: PathBuf,
    /// Held across a write, so that a checkpoint and a snapshot install never interleave.
    base: Mutex<Option<Base>>,
}

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn data_key(generation: u32, kind: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + key.len());
    k.push(DATA);
    k.extend_from_slice(&generation.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(key);
    k
}

/// A record as a sled key, and its value (`None`: delete).
fn encode(generation: u32, r: &Record<'_>) -> (Vec<u8>, Option<Vec<u8>>) {
    match r {
        Record::Task(id, t) => (
            data_key(generation, TASK, id.as_bytes()),
            t.map(codec::encode),
        ),
        Record::Lease(token, l) => (
            data_key(generation, LEASE, &token.to_be_bytes()),
            l.map(codec::encode),
        ),
        Record::Secret(token, s) => (
            data_key(generation, SECRET, &token.to_be_bytes()),
            s.map(|s| s.to_le_bytes().to_vec()),
        ),
        Record::UsedClaim(n, c) => (
            data_key(generation, CLAIM, &n.to_be_bytes()),
            c.map(|(w, c, t)| codec::encode(&(w, c, t))),
        ),
    }
}

/// The records of one batch, counted.
#[derive(Default)]
struct Batch {
    batch: sled::Batch,
    records: u64,
    bytes: u64,
}

impl Batch {
    fn add(&mut self, generation: u32, r: &Record<'_>) {
        let (k, v) = encode(generation, r);
        self.records += 1;
        self.bytes += (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
        match v {
            Some(v) => self.batch.insert(k, v),
            None => self.batch.remove(k),
        }
    }
}

/// Opens the sled tree at `path`. A tree this process dropped a moment ago (a node stopped and
/// started again in one process: the simulation, the tests) still holds its file lock until
/// sled's own threads let go of it, so a lock held elsewhere is waited for, up to 2 s, before
/// it is an error.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()
        {
            // sled 0.34 reports it as an `Other` error naming the lock.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

impl Checkpoints {
    /// Opens (or creates) the store at `path`, and loads the checkpoint it holds, if any.
    /// A store that does not decode, or whose records break an invariant, is refused.
    pub fn open(path: &Path) -> std::io::Result<(Self, Option<(SnapshotMeta, State)>)> {
        let db = open_db(path).map_err(err)?;
        let this = Self {
            db,
            path: path.to_path_buf(),
            base: Mutex::new(None),
        };
        let Some(meta) = this.db.get(META_KEY).map_err(err)? else {
            return Ok((this, None));
        };
        let meta: Meta = codec::decode(&meta).map_err(|e| this.damaged(format!("meta: {e}")))?;
        if meta.layout != LAYOUT {
            return Err(this.damaged(format!(
                "record layout {} (this version reads {LAYOUT})",
                meta.layout
            )));
        }
        let state = this.load(&meta)?;
        this.remove_other_generations(meta.generation)?;
        *this.base.lock() = Some(Base {
            meta: meta.snapshot.clone(),
            view: state.snapshot_view(),
            generation: meta.generation,
            first_claim: meta.first_claim,
        });
        Ok((this, Some((meta.snapshot, state))))
    }

    fn damaged(&self, what: String) -> std::io::Error {
        err(format!(
            "the state checkpoint in {} is damaged ({what}). This node's log is purged up to that \
             checkpoint, so it cannot start from it: move the node's data directory aside and add \
             the node again (`leasekeeper node remove`, then `node add`), and it is sent a \
             snapshot by the leader (docs/OPERATIONS.md, \"Replacing a node\")",
            self.path.display()
        ))
    }

    /// Reads the checkpoint's records and builds the state. The tasks are decoded on a second
    /// thread while this one goes on scanning (a restart at a million tasks spends most of its
    /// time in these two), in chunks of [`FULL_BATCH`] records.
    fn load(&self, meta: &Meta) -> std::io::Result<State> {
        let mut parts = Parts {
            last_token: meta.last_token,
            last_revision: meta.last_revision,
            ..Parts::default()
        };
        let prefix = data_key(meta.generation, 0, &[]);
        let prefix = &prefix[..5];
        let decode_tasks = |chunk: Vec<(sled::IVec, sled::IVec)>| -> std::io::Result<Vec<Task>> {
            chunk
                .iter()
                .map(|(k, v)| {
                    codec::decode::<Task>(v).map_err(|e| self.damaged(format!("record {k:?}: {e}")))
                })
                .collect()
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(sled::IVec, sled::IVec)>>(4);
        let scanned = std::thread::scope(|scope| {
            // A thread that cannot be started (the process is out of them) only costs time:
            // the chunks are then decoded here.
            let decoder = std::thread::Builder::new().spawn_scoped(scope, || {
                let mut tasks = Vec::new();
                for chunk in rx {
                    tasks.extend(decode_tasks(chunk)?);
                }
                Ok::<_, std::io::Error>(tasks)
            });
            let mut tx = decoder.is_ok().then_some(tx);
            let mut inline_tasks = Vec::new();
            let mut chunk = Vec::with_capacity(FULL_BATCH);
            let mut send = |chunk: Vec<(sled::IVec, sled::IVec)>| -> std::io::Result<()> {
                if let Some(t) = &tx {
                    if let Err(back) = t.send(chunk) {
                        // The decoder stopped at a bad record: its error is returned below.
                        drop(back);
                        tx = None;
                    }
                    return Ok(());
                }
                inline_tasks.extend(decode_tasks(chunk)?);
                Ok(())
            };
            let scan = (|| {
                for kv in self.db.scan_prefix(prefix) {
                    let (k, v) = kv.map_err(err)?;
                    let bad = |e: postcard::Error| self.damaged(format!("record {k:?}: {e}"));
                    match k.get(5) {
                        Some(&TASK) => {
                            chunk.push((k, v));
                            if chunk.len() == FULL_BATCH {
                                send(std::mem::replace(
                                    &mut chunk,
                                    Vec::with_capacity(FULL_BATCH),
                                ))?;
                            }
                        }
                        Some(&LEASE) => parts.leases.push(codec::decode::<Lease>(&v).map_err(bad)?),
                        Some(&SECRET) => {
                            let token =
                                key_number(&k).ok_or_else(|| self.damaged(format!("key {k:?}")))?;
                            let s: [u8; 16] = v[..]
                                .try_into()
                                .map_err(|_| self.damaged(format!("secret of {token}")))?;
                            parts.secrets.push((token, LeaseSecret::from_le_bytes(s)));
                        }
                        Some(&CLAIM) => parts
                            .used_claims
                            .push(codec::decode::<(String, String, Token)>(&v).map_err(bad)?),
                        _ => return Err(self.damaged(format!("unknown key {k:?}"))),
                    }
                }
                send(std::mem::take(&mut chunk))
            })();
            // Closes the channel: the decoder ends once it has the last chunk.
            drop(tx);
            let decoded = match decoder {
                Ok(d) => d
                    .join()
                    .unwrap_or_else(|_| Err(err("the task decoder stopped")))?,
                Err(_) => Vec::new(),
            };
            scan?;
            Ok::<_, std::io::Error>((decoded, inline_tasks))
        })?;
        let (mut tasks, inline_tasks) = scanned;
        tasks.extend(inline_tasks);
        parts.tasks = tasks;
        State::from_parts(parts).map_err(|e| self.damaged(e.to_string()))
    }

    /// Deletes the keys of every generation but `keep` (left by a crash during a whole write).
    fn remove_other_generations(&self, keep: u32) -> std::io::Result<()> {
        let below = self
            .db
            .range(vec![DATA]..data_key(keep, 0, &[])[..5].to_vec());
        let above = self
            .db
            .range(data_key(keep.saturating_add(1), 0, &[])[..5].to_vec()..vec![DATA + 1]);
        let mut removed = 0u64;
        let mut batch = sled::Batch::default();
        for kv in below.chain(above) {
            let (k, _) = kv.map_err(err)?;
            batch.remove(k);
            removed += 1;
            if removed % FULL_BATCH as u64 == 0 {
                self.db
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(err)?;
            }
        }
        self.db.apply_batch(batch).map_err(err)?;
        if removed > 0 {
            tracing::info!(removed, path = %self.path.display(), "removed the records of an earlier state checkpoint");
        }
        Ok(())
    }

    /// The last checkpoint written (or loaded).
    pub fn current(&self) -> Option<Base> {
        self.base.lock().clone()
    }

    fn meta_record(
        &self,
        generation: u32,
        first_claim: u64,
        meta: &SnapshotMeta,
        view: &SnapshotView,
    ) -> Vec<u8> {
        let (last_token, last_revision) = view.counters();
        codec::encode(&Meta {
            layout: LAYOUT,
            generation,
            first_claim,
            last_token,
            last_revision,
            snapshot: meta.clone(),
        })
    }

    /// Writes `view`, the state at `meta`, as the changes since the last checkpoint (the whole
    /// state if there is none), in one batch, and fsyncs it.
    pub fn write(&self, meta: &SnapshotMeta, view: &SnapshotView) -> std::io::Result<Written> {
        let mut base = self.base.lock();
        let Some(b) = base.as_ref() else {
            return self.write_whole(&mut base, meta, view);
        };
        if b.meta.last_log_id >= meta.last_log_id {
            return Ok(Written::Kept);
        }
        let mut batch = Batch::default();
        let generation = b.generation;
        let first_claim = view.changes_since(&b.view, b.first_claim, &mut |r| {
            batch.add(generation, &r);
            Ok::<_, std::convert::Infallible>(())
        });
        let Ok(first_claim) = first_claim;
        let (records, bytes) = (batch.records, batch.bytes);
        let mut batch = batch.batch;
        batch.insert(
            META_KEY,
            self.meta_record(generation, first_claim, meta, view),
        );
        self.db.apply_batch(batch).map_err(err)?;
        self.db.flush().map_err(err)?;
        *base = Some(Base {
            meta: meta.clone(),
            view: view.clone(),
            generation,
            first_claim,
        });
        Ok(Written::Records { records, bytes })
    }

    /// Writes `view`, the state at `meta`, whole, under a new generation (a snapshot received
    /// from the leader), unless the store already holds a later checkpoint.
    pub fn replace(&self, meta: &SnapshotMeta, view: &SnapshotView) -> std::io::Result<Written> {
        let mut base = self.base.lock();
        if base
            .as_ref()
            .is_some_and(|b| b.meta.last_log_id > meta.last_log_id)
        {
            return Ok(Written::Kept);
        }
        self.write_whole(&mut base, meta, view)
    }

    fn write_whole(
        &self,
        base: &mut Option<Base>,
        meta: &SnapshotMeta,
        view: &SnapshotView,
    ) -> std::io::Result<Written> {
        let old = base.as_ref().map(|b| b.generation);
        let generation = old.map_or(1, |g| g.wrapping_add(1).max(1));
        // Records of this generation left by a whole write that failed part-way.
        self.remove_generation(generation)?;
        let mut batch = Batch::default();
        let (mut records, mut bytes) = (0, 0);
        view.records(0, &mut |r| {
            batch.add(generation, &r);
            if batch.records as usize >= FULL_BATCH {
                let full = std::mem::take(&mut batch);
                records += full.records;
                bytes += full.bytes;
                self.db.apply_batch(full.batch).map_err(err)?;
            }
            Ok::<_, std::io::Error>(())
        })?;
        records += batch.records;
        bytes += batch.bytes;
        let mut last = batch.batch;
        last.insert(META_KEY, self.meta_record(generation, 0, meta, view));
        self.db.apply_batch(last).map_err(err)?;
        self.db.flush().map_err(err)?;
        *base = Some(Base {
            meta: meta.clone(),
            view: view.clone(),
            generation,
            first_claim: 0,
        });
        if let Some(old) = old {
            self.remove_generation(old)?;
        }
        Ok(Written::Records { records, bytes })
    }

    fn remove_generation(&self, generation: u32) -> std::io::Result<()> {
        let prefix = data_key(generation, 0, &[]);
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for kv in self.db.scan_prefix(&prefix[..5]) {
            let (k, _) = kv.map_err(err)?;
            batch.remove(k);
            n += 1;
            if n % FULL_BATCH == 0 {
                self.db
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(err)?;
            }
        }
        self.db.apply_batch(batch).map_err(err)
    }
}

/// The big-endian number after a data key's kind byte.
fn key_number(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(6..14)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Effects, Request, TaskSpec};

    fn state_with(ids: &[&str]) -> State {
        let mut s = State::new();
        let mut fx = Effects::default();
        for (i, id) in ids.iter().enumerate() {
            let cmd = Command::Submit(TaskSpec {
                id: (*id).into(),
                queue: "q".into(),
                payload: vec![1, 2, 3],
                max_attempts: 1,
                lease_ttl_ms: 30_000,
                initial_backoff_ms: 1_000,
                max_backoff_ms: 60_000,
            });
            let req = Request {
                now_unix_ms: 1,
                cmd,
            };
            s.apply(i as u64 + 1, &req, &[], &mut fx);
        }
        s
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                index,
            )),
            last_membership: Default::default(),
            snapshot_id: format!("s-{index}"),
        }
    }

    fn keys_of_generations(db: &sled::Db) -> std::collections::BTreeSet<u32> {
        db.scan_prefix([DATA])
            .map(|kv| {
                let (k, _) = kv.unwrap();
                u32::from_be_bytes(k[1..5].try_into().unwrap())
            })
            .collect()
    }

    /// A whole write stopped part-way (the keys of the next generation written, the meta record
    /// not switched) leaves the previous checkpoint, and its keys are removed on open.
    #[test]
    fn a_whole_write_stopped_part_way_leaves_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let old = state_with(&["a", "b"]);
        {
            let (c, none) = Checkpoints::open(&path).unwrap();
            assert!(none.is_none());
            c.write(&meta(2), &old.snapshot_view()).unwrap();
            // What a crash in `replace` leaves: some records of generation 2, meta still at 1.
            let new = state_with(&["x", "y", "z"]);
            let mut b = Batch::default();
            new.snapshot_view()
                .records(0, &mut |r| {
                    b.add(2, &r);
                    Ok::<_, ()>(())
                })
                .unwrap();
            c.db.apply_batch(b.batch).unwrap();
            c.db.flush().unwrap();
            assert_eq!(keys_of_generations(&c.db), [1, 2].into());
        }
        let (c, loaded) = Checkpoints::open(&path).unwrap();
        let (m, s) = loaded.unwrap();
        assert_eq!((m, s), (meta(2), old));
        assert_eq!(keys_of_generations(&c.db), [1].into());
        // A replace after it writes generation 2 cleanly, and drops generation 1.
        let new = state_with(&["p"]);
        c.replace(&meta(9), &new.snapshot_view()).unwrap();
        assert_eq!(keys_of_generations(&c.db), [2].into());
        drop(c);
        let (_, loaded) = Checkpoints::open(&path).unwrap();
        assert_eq!(loaded.unwrap().1, new);
    }

    /// A damaged record is refused at open, with what to do.
    #[test]
    fn a_damaged_record_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let (c, _) = Checkpoints::open(&path).unwrap();
            c.write(&meta(3), &state_with(&["a", "b", "c"]).snapshot_view())
                .unwrap();
            c.db.insert(data_key(1, TASK, b"b"), vec![0xff; 7]).unwrap();
            c.db.flush().unwrap();
        }
        let e = Checkpoints::open(&path).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("damaged") && msg.contains("node add"), "{msg}");
    }

    /// An incremental write holds only what changed.
    #[test]
    fn a_checkpoint_writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Checkpoints::open(&dir.path().join("state")).unwrap();
        let ids: Vec<String> = (0..500).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut s = state_with(&refs);
        let Written::Records { records, .. } = c.write(&meta(500), &s.snapshot_view()).unwrap()
        else {
            panic!("written")
        };
        assert_eq!(records, 500);
        let mut fx = Effects::default();
        let req = Request {
            now_unix_ms: 2,
            cmd: Command::Cancel {
                task_id: "t7".into(),
                reason: String::new(),
            },
        };
        s.apply(501, &req, &[], &mut fx);
        let w = c.write(&meta(501), &s.snapshot_view()).unwrap();
        assert!(matches!(w, Written::Records { records: 1, .. }), "{w:?}");
        assert_eq!(
            c.write(&meta(501), &s.snapshot_view()).unwrap(),
            Written::Kept
        );
    }
}
