//! A snapshot's bytes while openraft holds them ([`SnapshotData`]), and the same bytes for code
//! that reads them on a blocking thread ([`Source`]).
//!
//! On a node the bytes are a range of a file: the snapshot file itself when a snapshot is sent
//! (the part after its header), or an unnamed temporary file when one is received. openraft
//! reads a snapshot to send in chunks of `snapshot_max_chunk_size` (1 MiB), so a node sending
//! or receiving a snapshot of hundreds of MiB holds about one chunk of it in memory, not the
//! whole. Bytes in memory remain for the deterministic simulation, where reads on tokio's
//! blocking pool would finish at real-time moments, and for the storage suite.
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, ReadBuf};

/// The largest snapshot a node receives. A received snapshot is decoded from memory, so this
/// also bounds what decoding it allocates for its bytes.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

/// A snapshot's bytes, as openraft reads (to send), writes (the storage suite) and hands to the
/// state machine (to install) them.
pub enum SnapshotData {
    Memory(Cursor<Vec<u8>>),
    File(FileRange),
}

/// `len` bytes of a file from `start`, read-only.
pub struct FileRange {
    /// Limited to what is left of the range after the current position.
    file: tokio::io::Take<tokio::fs::File>,
    start: u64,
    len: u64,
    /// A seek was started and is not complete.
    seeking: bool,
}

impl FileRange {
    /// Where reading is, from the range's start.
    fn position(&self) -> u64 {
        self.len - self.file.limit().min(self.len)
    }
}

/// A snapshot's bytes on a blocking thread.
pub enum Source {
    Bytes(Vec<u8>),
    File {
        file: std::fs::File,
        start: u64,
        len: u64,
    },
}

impl SnapshotData {
    pub fn memory(bytes: Vec<u8>) -> Self {
        Self::Memory(Cursor::new(bytes))
    }

    /// The bytes, however they are held, for a blocking thread.
    pub async fn into_source(self) -> Source {
        match self {
            Self::Memory(c) => Source::Bytes(c.into_inner()),
            Self::File(r) => Source::File {
                file: r.file.into_inner().into_std().await,
                start: r.start,
                len: r.len,
            },
        }
    }

    /// The bytes of `src`, positioned at their start.
    pub async fn from_source(src: Source) -> io::Result<Self> {
        match src {
            Source::Bytes(b) => Ok(Self::memory(b)),
            Source::File { file, start, len } => {
                let mut file = tokio::fs::File::from_std(file);
                file.seek(SeekFrom::Start(start)).await?;
                Ok(Self::File(FileRange {
                    file: file.take(len),
                    start,
                    len,
                    seeking: false,
                }))
            }
        }
    }
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with the bytes, read into memory first if they are in a file.
    pub fn with_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        match self {
            Self::Bytes(b) => Ok(f(b)),
            Self::File { file, start, len } => Ok(f(&read_range(file, *start, *len)?)),
        }
    }

    /// The bytes in memory.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Bytes(b) => Ok(b),
            Self::File { file, start, len } => read_range(&file, start, len),
        }
    }

    /// A reader of the bytes from their start.
    pub fn reader(&self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            Self::Bytes(b) => Ok(Box::new(b.as_slice())),
            Self::File { file, start, len } => {
                let mut f = file;
                f.seek(SeekFrom::Start(*start))?;
                Ok(Box::new(f.take(*len)))
            }
        }
    }
}

/// A snapshot arriving from the leader in chunks, written as it comes to an unnamed temporary
/// file in `spool` (nothing to clean up after a crash), or kept in memory without one (the
/// simulation). Chunks must come in order: a gap is answered with the offset expected
/// ([`ChunkRefused::OutOfOrder`]), and openraft's sender starts again from offset 0.
pub struct Incoming {
    pub id: String,
    written: u64,
    /// The most it takes ([`MAX_SNAPSHOT_BYTES`] on a node).
    limit: u64,
    sink: Sink,
}

enum Sink {
    Memory(Vec<u8>),
    File(tokio::fs::File),
}

/// Why a chunk was not taken.
#[derive(Debug)]
pub enum ChunkRefused {
    /// Not the next one: the offset expected instead.
    OutOfOrder {
        expected: u64,
    },
    /// The snapshot would grow past its limit ([`MAX_SNAPSHOT_BYTES`] on a node).
    TooLarge,
    Io(io::Error),
}

impl Incoming {
    pub fn new(id: String, spool: Option<&std::path::Path>, limit: u64) -> io::Result<Self> {
        let sink = match spool {
            Some(dir) => Sink::File(tokio::fs::File::from_std(tempfile::tempfile_in(dir)?)),
            None => Sink::Memory(Vec::new()),
        };
        Ok(Self {
            id,
            written: 0,
            limit,
            sink,
        })
    }

    /// Writes the chunk at `offset`, which must be where the last one ended.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ChunkRefused> {
        if offset != self.written {
            return Err(ChunkRefused::OutOfOrder {
                expected: self.written,
            });
        }
        let end = self.written.saturating_add(data.len() as u64);
        if end > self.limit {
            return Err(ChunkRefused::TooLarge);
        }
        match &mut self.sink {
            Sink::Memory(v) => v.extend_from_slice(data),
            Sink::File(f) => {
                use tokio::io::AsyncWriteExt;
                f.write_all(data).await.map_err(ChunkRefused::Io)?;
            }
        }
        self.written = end;
        Ok(())
    }

    /// The whole snapshot, once its last chunk is written.
    pub async fn finish(self) -> io::Result<SnapshotData> {
        match self.sink {
            Sink::Memory(v) => Ok(SnapshotData::memory(v)),
            Sink::File(mut f) => {
                use tokio::io::AsyncWriteExt;
                f.flush().await?;
                SnapshotData::from_source(Source::File {
                    file: f.into_std().await,
                    start: 0,
                    len: self.written,
                })
                .await
            }
        }
    }
}

/// `len` bytes of `file` from `start`, in one buffer.
fn read_range(file: &std::fs::File, start: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| io::Error::other("a snapshot larger than this machine's memory"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a snapshot held in a file is read-only",
    )
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Memory(c) => Pin::new(c).poll_read(cx, buf),
            Self::File(r) => Pin::new(&mut r.file).poll_read(cx, buf),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, pos: SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            Self::Memory(c) => Pin::new(c).start_seek(pos),
            Self::File(r) => {
                let at = match pos {
                    SeekFrom::Start(n) => Some(n),
                    SeekFrom::End(d) => r.len.checked_add_signed(d),
                    SeekFrom::Current(d) => r.position().checked_add_signed(d),
                }
                .filter(|at| *at <= r.len)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("a seek outside the snapshot's {} bytes", r.len),
                    )
                })?;
                Pin::new(r.file.get_mut()).start_seek(SeekFrom::Start(r.start + at))?;
                r.seeking = true;
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            Self::Memory(c) => Pin::new(c).poll_complete(cx),
            // The file's own answer is used only for a seek started here: tokio's file does not
            // count reads into the position it reports without one. Polled either way, so that
            // an operation still in flight is finished before a seek starts.
            Self::File(r) if !r.seeking => {
                ready!(Pin::new(r.file.get_mut()).poll_complete(cx))?;
                Poll::Ready(Ok(r.position()))
            }
            Self::File(r) => {
                let abs = ready!(Pin::new(r.file.get_mut()).poll_complete(cx))?;
                r.seeking = false;
                let at = abs.saturating_sub(r.start).min(r.len);
                r.file.set_limit(r.len - at);
                Poll::Ready(Ok(at))
            }
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Memory(c) => Pin::new(c).poll_write(cx, buf),
            Self::File(_) => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Memory(c) => Pin::new(c).poll_flush(cx),
            Self::File(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Memory(c) => Pin::new(c).poll_shutdown(cx),
            Self::File(_) => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Read as openraft sends a snapshot (seek to the end for its size, then seek to each
    /// offset and read up to a chunk), a file range yields exactly its bytes and nothing of the
    /// file around them; a seek past its end is refused.
    #[test]
    fn a_file_range_reads_as_its_bytes_alone() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(b"header--").unwrap();
        f.write_all(&body).unwrap();
        f.write_all(b"--trailer").unwrap();
        runtime().block_on(async {
            let mut d = SnapshotData::from_source(Source::File {
                file: f,
                start: 8,
                len: body.len() as u64,
            })
            .await
            .unwrap();
            let end = d.seek(SeekFrom::End(0)).await.unwrap();
            assert_eq!(end, body.len() as u64);
            let mut got = Vec::new();
            let mut offset = 0;
            while offset < end {
                d.seek(SeekFrom::Start(offset)).await.unwrap();
                let mut chunk = Vec::with_capacity(1 << 20);
                while chunk.capacity() > chunk.len() {
                    if d.read_buf(&mut chunk).await.unwrap() == 0 {
                        break;
                    }
                }
                assert!(!chunk.is_empty(), "progress at {offset}");
                offset += chunk.len() as u64;
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, body);
            // Reading again from the middle, and past the end.
            d.seek(SeekFrom::Start(10)).await.unwrap();
            let mut rest = Vec::new();
            d.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, body[10..]);
            assert_eq!(d.seek(SeekFrom::Current(-5)).await.unwrap(), end - 5);
            assert!(d.seek(SeekFrom::Start(end + 1)).await.is_err());
            assert!(d.seek(SeekFrom::Current(-(end as i64) - 1)).await.is_err());
            // Writes are refused; the bytes come back for a blocking thread.
            use tokio::io::AsyncWriteExt;
            assert!(d.write_all(b"x").await.is_err());
            let src = d.into_source().await;
            assert_eq!(src.len(), body.len() as u64);
            assert!(src.with_bytes(|b| b == body.as_slice()).unwrap());
            let mut via = Vec::new();
            src.reader().unwrap().read_to_end(&mut via).unwrap();
            assert_eq!(via, body);
        });
    }
}
