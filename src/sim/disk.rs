//! A simulated disk for the Raft log: everything written is visible at once, but only what a
//! flush covered survives a crash.
//!
//! To ensure correctness (the same promises as the sled store): `append` calls its callback only
//! after the simulated fsync that covers the batch; `save_vote` returns only after the vote is
//! flushed. A crash ([`SimDisk::crash`]) throws away every write since the last flush, and the
//! store handles of the crashed incarnation stop touching the disk.
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct LogData {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

enum Op {
    Append(Vec<Entry>),
    Truncate(u64),
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

impl LogData {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(es) => {
                for e in es {
                    self.entries.insert(e.log_id.index, e.clone());
                }
            }
            Op::Truncate(from) => {
                self.entries.split_off(from);
            }
            Op::Purge(id) => {
                self.purged = Some(*id);
                self.entries = self.entries.split_off(&(id.index + 1));
            }
            Op::Vote(v) => self.vote = Some(*v),
            Op::Committed(c) => self.committed = *c,
        }
    }
}

#[derive(Default)]
struct DiskState {
    /// What survives a crash.
    durable: LogData,
    /// What readers see: durable plus every write since.
    current: LogData,
    /// Writes since the last flush, in order.
    pending: Vec<Op>,
    /// Bumped by each crash; store handles of an older incarnation are dead.
    incarnation: u64,
}

/// One node's log disk; outlives the node's incarnations.
#[derive(Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<DiskState>>,
    /// Simulated fsync latency.
    fsync: Duration,
    /// A deliberately broken disk that acknowledges appends before they are flushed (the bug
    /// the storage rules forbid), to show that the simulation catches it.
    acks_before_flush: bool,
}

impl SimDisk {
    pub fn new(fsync: Duration) -> Self {
        Self {
            inner: Default::default(),
            fsync,
            acks_before_flush: false,
        }
    }

    /// See [`SimDisk::acks_before_flush`](SimDisk): for the test that the simulation catches it.
    pub fn broken_acks_before_flush(mut self) -> Self {
        self.acks_before_flush = true;
        self
    }

    /// Loses every write since the last flush and kills the current store handles.
    pub fn crash(&self) {
        let mut d = self.inner.lock().expect("lock");
        d.pending.clear();
        d.current = d.durable.clone();
        d.incarnation += 1;
    }

    /// A log store for a new incarnation of the node.
    pub fn open(&self) -> SimLogStore {
        let incarnation = self.inner.lock().expect("lock").incarnation;
        SimLogStore {
            disk: self.clone(),
            incarnation,
        }
    }
}

#[derive(Clone)]
pub struct SimLogStore {
    disk: SimDisk,
    incarnation: u64,
}

fn dead() -> StorageError {
    let e = std::io::Error::other("simulated crash: this incarnation's disk is gone");
    StorageIOError::write(&e).into()
}

impl SimLogStore {
    fn write(&self, op: Op) -> Result<(), StorageError> {
        let mut d = self.disk.inner.lock().expect("lock");
        if d.incarnation != self.incarnation {
            return Err(dead());
        }
        d.current.apply(&op);
        d.pending.push(op);
        Ok(())
    }

    /// Flushes what was written before the call (after the simulated fsync latency).
    async fn flush(&self) -> Result<(), StorageError> {
        let upto = {
            let d = self.disk.inner.lock().expect("lock");
            if d.incarnation != self.incarnation {
                return Err(dead());
            }
            d.pending.len()
        };
        tokio::time::sleep(self.disk.fsync).await;
        let mut d = self.disk.inner.lock().expect("lock");
        if d.incarnation != self.incarnation {
            return Err(dead());
        }
        // Earlier flushes may have covered part of what this one was asked to cover.
        let n = upto.min(d.pending.len());
        let ops: Vec<Op> = d.pending.drain(..n).collect();
        for op in &ops {
            d.durable.apply(op);
        }
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&LogData) -> T) -> Result<T, StorageError> {
        let d = self.disk.inner.lock().expect("lock");
        if d.incarnation != self.incarnation {
            return Err(dead());
        }
        Ok(f(&d.current))
    }
}

impl RaftLogReader<TypeConfig> for SimLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read(|d| d.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for SimLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.read(|d| LogState {
            last_purged_log_id: d.purged,
            last_log_id: d
                .entries
                .last_key_value()
                .map(|(_, e)| e.log_id)
                .or(d.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write(Op::Vote(*vote))?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read(|d| d.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write(Op::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read(|d| d.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write(Op::Append(entries.into_iter().collect()))?;
        let me = self.clone();
        if self.disk.acks_before_flush {
            callback.log_io_completed(Ok(()));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = me.flush().await;
            });
            return Ok(());
        }
        tokio::spawn(async move {
            match me.flush().await {
                Ok(()) => callback.log_io_completed(Ok(())),
                Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            }
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(Op::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(Op::Purge(log_id))
    }
}
