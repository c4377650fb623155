//! Records of the segment log and how a segment is read back.
//!
//! A segment starts with [`MAGIC`]; then records, each `len: u32 LE | crc: u32 LE | kind: u8 |
//! payload (len bytes)`, the CRC (CRC-32, IEEE) taken over the kind byte and the payload. A record is at most [`MAX_RECORD`] bytes of payload.
//!
//! Reading a segment back ([`scan`]) stops at the first record that does not check out and
//! says what follows it:
//! - nothing but zeros or a partial record: a torn tail, which the caller cuts off;
//! - a record that checks out: damage before the tail, which the caller refuses.
use super::fs::LogFile;
use crate::raft::{codec, Entry, LogId, Vote};
use serde::{Deserialize, Serialize};
use std::io;

pub const MAGIC: &[u8; 8] = b"LKLOG01\n";
pub const HEADER: usize = 9;
/// The largest payload a record may carry: an entry is at most ~3.1 MiB (a batch's byte
/// limit); anything larger on disk is damage.
pub const MAX_RECORD: usize = 16 << 20;

pub const ENTRY: u8 = 1;
pub const TRUNCATE: u8 = 2;
pub const PURGE: u8 = 3;
pub const VOTE: u8 = 4;
pub const COMMITTED: u8 = 5;
pub const STATE: u8 = 6;

/// The log's metadata, written at the start of every segment so that older segments can be
/// removed without losing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

/// Appends one framed record to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_RECORD);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(kind, payload).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Frames an entry; `None` if it is larger than a record may be.
pub fn frame_entry(out: &mut Vec<u8>, e: &Entry) -> Option<usize> {
    let payload = codec::encode(e);
    if payload.len() > MAX_RECORD {
        return None;
    }
    frame(out, ENTRY, &payload);
    Some(payload.len())
}

pub fn frame_value<T: Serialize>(out: &mut Vec<u8>, kind: u8, v: &T) {
    frame(out, kind, &codec::encode(v));
}

fn crc(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// A record that checked out, as read from a segment.
pub struct Read {
    pub offset: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// What reading a segment found.
pub struct Scan {
    /// The end of the last record that checked out.
    pub valid_len: u64,
    /// The file's length.
    pub len: u64,
    /// Where the first bad record starts and why, if one does.
    pub bad: Option<(u64, String)>,
    /// Whether a record that checks out follows the bad one (damage before the tail).
    pub valid_after_bad: bool,
}

/// Reads every record of a segment file in order, handing each to `visit`; holds one record
/// in memory at a time. Stops at the first record that does not check out, or at the first
/// error `visit` returns (a record that checks out but makes no sense: returned as is).
pub fn scan<F: LogFile + ?Sized>(
    f: &F,
    mut visit: impl FnMut(Read) -> Result<(), String>,
) -> io::Result<Result<Scan, String>> {
    let len = f.size()?;
    let mut out = Scan {
        valid_len: 0,
        len,
        bad: None,
        valid_after_bad: false,
    };
    if len < MAGIC.len() as u64 {
        out.bad = Some((
            0,
            format!("the file is {len} bytes, shorter than its header"),
        ));
        return Ok(Ok(out));
    }
    let mut magic = [0u8; 8];
    f.read_at(0, &mut magic)?;
    if &magic != MAGIC {
        out.bad = Some((
            0,
            "the file does not start with a log segment header".into(),
        ));
        out.valid_after_bad = len > MAGIC.len() as u64 && any_valid_after(f, 0, len)?;
        return Ok(Ok(out));
    }
    let mut off = MAGIC.len() as u64;
    out.valid_len = off;
    while off < len {
        match read_one(f, off, len)? {
            Ok(r) => {
                let at = off;
                off += (HEADER + r.payload.len()) as u64;
                out.valid_len = off;
                if let Err(why) = visit(r) {
                    return Ok(Err(format!("the record at byte {at}: {why}")));
                }
            }
            Err(why) => {
                out.bad = Some((off, why));
                out.valid_after_bad = any_valid_after(f, off, len)?;
                break;
            }
        }
    }
    Ok(Ok(out))
}

/// The record at `off`, or why it does not check out.
fn read_one<F: LogFile + ?Sized>(f: &F, off: u64, len: u64) -> io::Result<Result<Read, String>> {
    if len - off < HEADER as u64 {
        return Ok(Err(format!(
            "{} bytes left, a partial record header",
            len - off
        )));
    }
    let mut h = [0u8; HEADER];
    f.read_at(off, &mut h)?;
    let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let want = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let kind = h[8];
    if !(ENTRY..=STATE).contains(&kind) {
        return Ok(Err(format!("record kind {kind} is unknown")));
    }
    if n > MAX_RECORD {
        return Ok(Err(format!(
            "record length {n} is over the limit of {MAX_RECORD}"
        )));
    }
    if (len - off - HEADER as u64) < n as u64 {
        return Ok(Err(format!(
            "a {n}-byte record with {} bytes left: cut short",
            len - off - HEADER as u64
        )));
    }
    let mut payload = vec![0u8; n];
    f.read_at(off + HEADER as u64, &mut payload)?;
    if crc(kind, &payload) != want {
        return Ok(Err("the record's CRC does not match".into()));
    }
    Ok(Ok(Read {
        offset: off,
        kind,
        payload,
    }))
}

/// The most payload bytes the search for a record after a bad one checksums before it gives
/// up and answers that one may follow (so the caller refuses: it cannot tell a torn tail from
/// damage).
const SEARCH_BUDGET: u64 = 256 << 20;

/// Whether any offset after `bad` starts a record that checks out.
fn any_valid_after<F: LogFile + ?Sized>(f: &F, bad: u64, len: u64) -> io::Result<bool> {
    // Read the rest in chunks; a record that straddles a chunk is read on its own.
    const CHUNK: u64 = 1 << 20;
    let mut budget = SEARCH_BUDGET;
    let mut start = bad + 1;
    while start + HEADER as u64 <= len {
        let end = (start + CHUNK).min(len);
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_at(start, &mut buf)?;
        for i in 0..buf.len() {
            let off = start + i as u64;
            if off + HEADER as u64 > len {
                break;
            }
            let h = match buf.get(i..i + HEADER) {
                Some(h) => h,
                None => {
                    let mut h = [0u8; HEADER];
                    f.read_at(off, &mut h)?;
                    if plausible(&h, off, len) {
                        budget = budget
                            .saturating_sub(u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64);
                        if read_one(f, off, len)?.is_ok() {
                            return Ok(true);
                        }
                    }
                    continue;
                }
            };
            if plausible(h, off, len) {
                let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
                if budget < n {
                    return Ok(true);
                }
                budget -= n;
                if read_one(f, off, len)?.is_ok() {
                    return Ok(true);
                }
            }
        }
        start = end;
    }
    Ok(false)
}

fn plausible(h: &[u8], off: u64, len: u64) -> bool {
    let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
    (ENTRY..=STATE).contains(&h[8]) && n <= MAX_RECORD as u64 && off + HEADER as u64 + n <= len
}

/// The payload of the `n`-byte record of `kind` at `off` (as the index remembers it), checked
/// against its CRC.
pub fn read_record<F: LogFile + ?Sized>(
    f: &F,
    off: u64,
    kind: u8,
    n: usize,
) -> io::Result<Result<Vec<u8>, String>> {
    let mut buf = vec![0u8; HEADER + n];
    f.read_at(off, &mut buf)?;
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let want = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len != n || buf[8] != kind {
        return Ok(Err(format!(
            "byte {off} does not start the record the index expects"
        )));
    }
    let payload = buf.split_off(HEADER);
    if crc(kind, &payload) != want {
        return Ok(Err(format!(
            "the record at byte {off} fails its CRC: damaged on disk"
        )));
    }
    Ok(Ok(payload))
}
