//! The file layer under the segment log: a directory of append-only files. [`OsFs`] is the real
//! one; the deterministic simulation supplies its own (`crate::sim::disk::SimFs`), where a crash
//! loses what no `sync` covered.
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One directory of log files.
pub trait Fs: Clone + Send + Sync + 'static {
    type File: LogFile;
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; it survives a crash once [`Fs::sync_dir`] has returned.
    fn create(&self, name: &str) -> io::Result<Arc<Self::File>>;
    /// Opens an existing file for reading and appending.
    fn open(&self, name: &str) -> io::Result<Arc<Self::File>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations and removals in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// `None` (real disks): fsyncs run on the log's flusher thread, shared by every append
    /// waiting. `Some(d)` (the simulation): each sync runs inline after a simulated delay `d`,
    /// on the caller's task, so that a run stays deterministic.
    fn inline_sync(&self) -> Option<Duration> {
        None
    }
}

/// One append-only file.
pub trait LogFile: Send + Sync + 'static {
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Appends at the end of the file.
    fn append(&self, data: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes (a torn tail); durable after the next `sync`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
}

/// Files in a directory of the machine's file system.
#[derive(Clone, Debug)]
pub struct OsFs {
    dir: PathBuf,
}

impl OsFs {
    /// The directory `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

pub struct OsFile(std::fs::File);

impl Fs for OsFs {
    type File = OsFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }

    fn create(&self, name: &str) -> io::Result<Arc<OsFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        Ok(Arc::new(OsFile(f)))
    }

    fn open(&self, name: &str) -> io::Result<Arc<OsFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join(name))?;
        Ok(Arc::new(OsFile(f)))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

impl LogFile for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn append(&self, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut &self.0, data)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}
