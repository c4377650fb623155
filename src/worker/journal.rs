//! The worker's durable journal of final reports.
//!
//! A final report is appended and fsynced here *before* it is sent, and marked acknowledged once
//! the cluster committed it. On start the journal is read back and every report without an
//! acknowledgement is sent again; reports are idempotent (lease token + outcome), so a replay of
//! one that did commit changes nothing.
//!
//! Format: records of `len: u32 LE | crc32(body): u32 LE | body` where body is postcard. A
//! torn last record (a crash mid-append) is cut off on open. A damaged record with records
//! after it is not a crash's doing: the journal is refused, naming the path and offset, rather
//! than dropping every report after it. A write that fails is cut back, so later appends never
//! follow a torn record. When every report is acknowledged the file is truncated, so it stays
//! small.
use super::report::{Outcome, Report};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A report as journaled before lease secrets (its lease has none).
#[derive(Serialize, Deserialize, Debug)]
struct ReportV0 {
    task_id: String,
    lease_token: u64,
    outcome: Outcome,
}

// Variants are appended, never reordered: journals of older versions still replay.
#[derive(Serialize, Deserialize, Debug)]
enum Record {
    ReportV0(ReportV0),
    Acked { lease_token: u64 },
    Report(Report),
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {err}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("journal {0} is in use by another worker process: give each worker its own --journal-dir (or --worker-id)")]
    Locked(PathBuf),
    #[error("journal {path} is damaged at byte {offset} with records after it (not a crash's torn tail): move it aside to start without its reports, or repair it; nothing after it was dropped")]
    Corrupt { path: PathBuf, offset: u64 },
    #[error("journal directory {} holds reports the Python SDK has not delivered yet ({}): run that worker until its journal is empty, or give this worker another --worker-id; replaying them is up to the SDK that wrote them", .0.parent().map(|p| p.display().to_string()).unwrap_or_default(), .0.display())]
    OtherSdk(PathBuf),
}

/// The Python SDK's journal file, in the same directory layout: this SDK does not read its
/// format, so it refuses to start over pending reports it would silently skip.
const PYTHON_JOURNAL: &str = "reports.jsonl";

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Reports not acknowledged yet, by lease token.
    pending: BTreeMap<u64, Report>,
    len: u64,
    /// Held for the journal's lifetime: one process per journal.
    _lock: File,
}

const MAX_RECORD: u32 = 64 * 1024 * 1024;

impl Journal {
    /// Opens (or creates) the journal in `dir`, locking it for this process, and reads back the
    /// reports that were never acknowledged.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        let io = |err| JournalError::Io {
            path: dir.to_path_buf(),
            err,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = File::create(dir.join("LOCK")).map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is touched.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(JournalError::Locked(dir.to_path_buf()));
        }
        let other = dir.join(PYTHON_JOURNAL);
        if std::fs::metadata(&other).is_ok_and(|m| m.len() > 0) {
            return Err(JournalError::OtherSdk(other));
        }
        let path = dir.join("reports.journal");
        let io = |err| JournalError::Io {
            path: path.clone(),
            err,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut pending = BTreeMap::new();
        let mut good = 0usize;
        loop {
            match decode(&bytes[good..]) {
                Decoded::Record(rec, next) => {
                    match rec {
                        Record::ReportV0(r) => {
                            let r = Report {
                                task_id: r.task_id,
                                lease_token: r.lease_token,
                                lease_secret: Vec::new(),
                                outcome: r.outcome,
                            };
                            pending.insert(r.lease_token, r);
                        }
                        Record::Report(r) => {
                            pending.insert(r.lease_token, r);
                        }
                        Record::Acked { lease_token } => {
                            pending.remove(&lease_token);
                        }
                    }
                    good += next;
                }
                Decoded::End | Decoded::Torn => break,
                Decoded::Damaged => {
                    return Err(JournalError::Corrupt {
                        path,
                        offset: good as u64,
                    })
                }
            }
        }
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - good,
                "journal ends in a torn record (a crash mid-append); cutting it off"
            );
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        if good > 0 || !pending.is_empty() {
            tracing::info!(path = %path.display(), unacknowledged = pending.len(), "journal opened");
        }
        // The directory entry of a new journal must survive a crash too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Journal {
            path,
            file,
            pending,
            len: good as u64,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reports still to be acknowledged, oldest token first.
    pub fn pending(&self) -> Vec<Report> {
        self.pending.values().cloned().collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Appends `report` and fsyncs it. Only after this returns may the report be sent. A report
    /// for a token that already has one keeps the first (reports are final).
    pub fn append(&mut self, report: &Report) -> Result<(), JournalError> {
        if self.pending.contains_key(&report.lease_token) {
            return Ok(());
        }
        self.write(&Record::Report(report.clone()))?;
        self.pending.insert(report.lease_token, report.clone());
        Ok(())
    }

    /// Marks the report of `lease_token` acknowledged by the cluster.
    pub fn ack(&mut self, lease_token: u64) -> Result<(), JournalError> {
        if self.pending.remove(&lease_token).is_none() {
            return Ok(());
        }
        if self.pending.is_empty() {
            // Nothing left to replay: start over with an empty file.
            let io = |err| JournalError::Io {
                path: self.path.clone(),
                err,
            };
            self.file.set_len(0).map_err(io)?;
            self.file.sync_data().map_err(io)?;
            self.len = 0;
            return Ok(());
        }
        self.write(&Record::Acked { lease_token })
    }

    fn write(&mut self, rec: &Record) -> Result<(), JournalError> {
        let body = postcard::to_stdvec(rec).expect("journal records serialize");
        let mut buf = Vec::with_capacity(body.len() + 8);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        let io = |err| JournalError::Io {
            path: self.path.clone(),
            err,
        };
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Whatever part of the record reached the file is cut off again, so that the next
            // append does not follow a torn record (which would read as damage on open).
            let _ = self.file.set_len(self.len);
            let _ = self.file.sync_data();
            return Err(io(e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// What the front of the journal's remaining bytes holds.
enum Decoded {
    Record(Record, usize),
    /// Nothing left.
    End,
    /// An incomplete or damaged last record: what a crash mid-append leaves.
    Torn,
    /// A damaged record with more bytes after it.
    Damaged,
}

fn decode(bytes: &[u8]) -> Decoded {
    if bytes.is_empty() {
        return Decoded::End;
    }
    if bytes.len() < 8 {
        return Decoded::Torn;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_RECORD {
        return Decoded::Damaged;
    }
    let end = 8 + len as usize;
    if bytes.len() < end {
        return Decoded::Torn;
    }
    let body = &bytes[8..end];
    let rec = (crc32fast::hash(body) == crc)
        .then(|| postcard::from_bytes(body).ok())
        .flatten();
    match rec {
        Some(rec) => Decoded::Record(rec, end),
        None if end == bytes.len() => Decoded::Torn,
        None => Decoded::Damaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(token: u64) -> Report {
        Report {
            task_id: format!("t{token}"),
            lease_token: token,
            lease_secret: token.to_be_bytes().to_vec(),
            outcome: Outcome::Success {
                result: b"done".to_vec(),
            },
        }
    }

    #[test]
    fn unacknowledged_reports_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.append(&report(1)).unwrap();
            j.append(&report(2)).unwrap();
            j.append(&report(3)).unwrap();
            j.ack(2).unwrap();
        }
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.pending(), vec![report(1), report(3)]);
        j.ack(1).unwrap();
        j.ack(3).unwrap();
        assert_eq!(std::fs::metadata(j.path()).unwrap().len(), 0, "compacted");
        drop(j);
        assert!(Journal::open(dir.path()).unwrap().pending().is_empty());
    }

    #[test]
    fn a_report_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(&report(5)).unwrap();
        let mut other = report(5);
        other.outcome = Outcome::Release { reason: "x".into() };
        j.append(&other).unwrap();
        assert_eq!(j.pending(), vec![report(5)]);
    }

    #[test]
    fn torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.append(&report(1)).unwrap();
            j.append(&report(2)).unwrap();
            path = j.path().to_path_buf();
        }
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the second record keeps exactly the first.
        let Decoded::Record(_, first_len) = decode(&full) else {
            panic!("first record decodes")
        };
        for cut in first_len..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let j = Journal::open(dir.path()).unwrap();
            assert_eq!(j.pending(), vec![report(1)], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), first_len as u64);
        }
        // A flipped bit in the body is a corrupt record, not a different report.
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(
            Journal::open(dir.path()).unwrap().pending(),
            vec![report(1)]
        );
    }

    #[test]
    fn damage_before_the_last_record_is_refused_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let mut j = Journal::open(dir.path()).unwrap();
            for t in 1..=3 {
                j.append(&report(t)).unwrap();
            }
            path = j.path().to_path_buf();
        }
        let full = std::fs::read(&path).unwrap();
        let Decoded::Record(_, first_len) = decode(&full) else {
            panic!("first record decodes")
        };
        // A flipped bit in the middle (the second record's body).
        let mut bad = full.clone();
        bad[first_len + 10] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        match Journal::open(dir.path()) {
            Err(JournalError::Corrupt { path: p, offset }) => {
                assert_eq!(p, path);
                assert_eq!(offset, first_len as u64);
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|j| j.pending())),
        }
        // Nothing was cut: the file is as it was.
        assert_eq!(std::fs::read(&path).unwrap(), bad);
        // An absurd length in the middle is damage too, not an allocation.
        let mut huge = full.clone();
        huge[first_len..first_len + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    fn journals_without_secrets_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.journal");
        let old = Record::ReportV0(ReportV0 {
            task_id: "t9".into(),
            lease_token: 9,
            outcome: Outcome::Success { result: vec![] },
        });
        let body = postcard::to_stdvec(&old).unwrap();
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        std::fs::write(&path, &buf).unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let p = j.pending();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].lease_token, p[0].lease_secret.len()), (9, 0));
    }

    #[test]
    fn one_process_per_journal() {
        let dir = tempfile::tempdir().unwrap();
        let _j = Journal::open(dir.path()).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::Locked(_))
        ));
    }

    #[test]
    fn pending_reports_of_the_python_sdk_are_not_skipped_silently() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PYTHON_JOURNAL), b"0000 {}\n").unwrap();
        match Journal::open(dir.path()) {
            Err(e @ JournalError::OtherSdk(_)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("Python SDK") && msg.contains("--worker-id"),
                    "{msg}"
                );
            }
            other => panic!("expected OtherSdk, got {:?}", other.map(|_| ())),
        }
        // An empty one (drained) is no obstacle.
        std::fs::write(dir.path().join(PYTHON_JOURNAL), b"").unwrap();
        Journal::open(dir.path()).expect("opens over a drained Python journal");
    }
}
