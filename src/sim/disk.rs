//! A simulated disk under the real segment log ([`crate::store::SegLog`]): files whose writes
//! are visible at once, but of which only what a `sync` covered survives a crash.
//!
//! A crash ([`SimDisk::crash`]) cuts every file back to what its last sync covered, plus a torn
//! prefix of what came after (a power cut mid-write); files whose creation no directory sync
//! covered vanish; the file handles of the crashed incarnation stop working. A removal is durable
//! at once (the log removes only segments it no longer needs).
//!
//! The planted bug ([`SimDisk::broken_acks_before_flush`]): a disk whose cache lies, a sync
//! making durable only what the previous sync was asked for. The log acknowledges appends that
//! a crash then loses, which the simulation must catch.
use crate::store::seglog::{Fs, LogFile};
use crate::store::SegLog;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct FileData {
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Whether a directory sync covered the file's creation.
    created_durably: bool,
    /// The broken disk: the length the previous sync was asked for.
    lagging_mark: usize,
}

#[derive(Default)]
struct DiskState {
    files: BTreeMap<String, Arc<Mutex<FileData>>>,
    /// Bumped by each crash; handles of an older incarnation are dead.
    incarnation: u64,
    crashes: u64,
}

/// One node's log disk; outlives the node's incarnations.
#[derive(Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<DiskState>>,
    /// Simulated fsync latency.
    fsync: Duration,
    broken: bool,
}

impl SimDisk {
    pub fn new(fsync: Duration) -> Self {
        Self {
            inner: Default::default(),
            fsync,
            broken: false,
        }
    }

    /// See the module docs: for the test that the simulation catches it.
    pub fn broken_acks_before_flush(mut self) -> Self {
        self.broken = true;
        self
    }

    /// Loses what no sync covered (keeping a torn prefix of it) and kills the current handles.
    pub fn crash(&self) {
        let mut d = self.inner.lock().expect("lock");
        d.crashes += 1;
        d.incarnation += 1;
        let crashes = d.crashes;
        d.files
            .retain(|_, f| f.lock().expect("lock").created_durably);
        for (k, f) in d.files.values().enumerate() {
            let mut f = f.lock().expect("lock");
            let unsynced = f.data.len().saturating_sub(f.durable.len());
            // A deterministic share of the unsynced bytes made it: none, some, or all.
            let keep = unsynced * ((crashes as usize * 7 + k * 3) % 5) / 4;
            let mut kept = f.durable.clone();
            if f.data.starts_with(&f.durable) {
                kept.extend_from_slice(
                    &f.data[f.durable.len()..f.durable.len() + keep.min(unsynced)],
                );
            }
            f.data = kept.clone();
            f.durable = kept;
            f.lagging_mark = f.lagging_mark.min(f.data.len());
        }
    }

    /// The real log store, for a new incarnation of the node, on this disk. Small segments, so
    /// that a run rotates and removes them.
    pub fn open(&self) -> SegLog<SimFs> {
        let incarnation = self.inner.lock().expect("lock").incarnation;
        let fs = SimFs {
            disk: self.clone(),
            incarnation,
        };
        SegLog::open_with(fs, Default::default(), 16 << 10).unwrap_or_else(|e| {
            panic!("the log of a simulated disk must open after any crash: {e}")
        })
    }
}

/// The file layer of one incarnation of a node.
#[derive(Clone)]
pub struct SimFs {
    disk: SimDisk,
    incarnation: u64,
}

pub struct SimFile {
    disk: SimDisk,
    incarnation: u64,
    data: Arc<Mutex<FileData>>,
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: this incarnation's disk is gone")
}

impl SimFs {
    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, DiskState>> {
        let d = self.disk.inner.lock().expect("lock");
        if d.incarnation != self.incarnation {
            return Err(dead());
        }
        Ok(d)
    }

    fn handle(&self, data: Arc<Mutex<FileData>>) -> Arc<SimFile> {
        Arc::new(SimFile {
            disk: self.disk.clone(),
            incarnation: self.incarnation,
            data,
        })
    }
}

impl Fs for SimFs {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state()?.files.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Arc<SimFile>> {
        let mut d = self.state()?;
        if d.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let f: Arc<Mutex<FileData>> = Default::default();
        d.files.insert(name.to_string(), f.clone());
        drop(d);
        Ok(self.handle(f))
    }

    fn open(&self, name: &str) -> io::Result<Arc<SimFile>> {
        let f = self.state()?.files.get(name).cloned();
        f.map(|f| self.handle(f))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.state()?.files.remove(name);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        for f in self.state()?.files.values() {
            f.lock().expect("lock").created_durably = true;
        }
        Ok(())
    }

    fn inline_sync(&self) -> Option<Duration> {
        Some(self.disk.fsync)
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut FileData) -> io::Result<T>) -> io::Result<T> {
        let d = self.disk.inner.lock().expect("lock");
        if d.incarnation != self.incarnation {
            return Err(dead());
        }
        let mut data = self.data.lock().expect("lock");
        drop(d);
        f(&mut data)
    }
}

impl LogFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.with(|f| Ok(f.data.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|f| {
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            match f.data.get(start..start + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    Ok(())
                }
                None => Err(io::ErrorKind::UnexpectedEof.into()),
            }
        })
    }

    fn append(&self, data: &[u8]) -> io::Result<()> {
        self.with(|f| {
            f.data.extend_from_slice(data);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|f| {
            f.data.truncate(len as usize);
            Ok(())
        })
    }

    fn sync(&self) -> io::Result<()> {
        let broken = self.disk.broken;
        self.with(|f| {
            if broken {
                let upto = f.lagging_mark.min(f.data.len());
                f.durable = f.data[..upto].to_vec();
                f.lagging_mark = f.data.len();
            } else {
                f.durable = f.data.clone();
            }
            Ok(())
        })
    }
}
