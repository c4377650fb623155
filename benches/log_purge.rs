//! How long appends wait while the log is purged, in one sled batch versus one key at a time
//! (what `LogStore::purge` does now). `cargo bench --bench log_purge`
//!
//! Fills a sled log with 40 000 entries of 600 bytes, then, while a second thread appends one
//! entry and flushes (fsync) in a loop as a node's log does, deletes the first 20 000 — the
//! entries one snapshot covers by default — first in one `apply_batch`, then (on a fresh log) one
//! `remove` at a time. Prints how long the purge took and the appends' latency meanwhile.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRIES: u64 = 40_000;
const PURGED: u64 = 20_000;

fn fresh_log() -> (tempfile::TempDir, sled::Db, sled::Tree) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    let log = db.open_tree("log").expect("tree");
    let value = vec![7u8; 600];
    for chunk in 0..ENTRIES / 100 {
        let mut b = sled::Batch::default();
        for i in 0..100 {
            b.insert(&(chunk * 100 + i).to_be_bytes(), value.clone());
        }
        log.apply_batch(b).expect("fill");
    }
    db.flush().expect("flush");
    (dir, db, log)
}

fn run(name: &str, purge: impl FnOnce(&sled::Tree)) {
    let (_dir, db, log) = fresh_log();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (db, log, stop) = (db.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut index = ENTRIES;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut b = sled::Batch::default();
                b.insert(&index.to_be_bytes(), vec![1u8; 200]);
                log.apply_batch(b).expect("append");
                db.flush().expect("flush");
                lat.push(t.elapsed());
                index += 1;
            }
            lat
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    purge(&log);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut lat = appender.join().expect("appender");
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "{name:<24} purge of {PURGED} entries {took:>10.1?}; appends meanwhile: {} (p50 {:.1?}, p99 {:.1?}, max {:.1?})",
        lat.len(),
        at(0.5),
        at(0.99),
        lat[lat.len() - 1]
    );
}

fn main() {
    run("one sled batch", |log| {
        let mut batch = sled::Batch::default();
        for k in log.range(..PURGED.to_be_bytes()).keys() {
            batch.remove(k.expect("key"));
        }
        log.apply_batch(batch).expect("purge");
    });
    run("one key at a time", |log| {
        for k in log.range(..PURGED.to_be_bytes()).keys() {
            log.remove(k.expect("key")).expect("purge");
        }
    });
}
