//! The numbers of the worker protocol, shared with the Python SDK through docs/WORKER.md's
//! table (a test below reads it and fails when a constant differs from it).
use std::time::Duration;

/// Declares the protocol's durations (in ms, as docs/WORKER.md's table gives them) and the
/// list of them the table test compares, from one list.
macro_rules! durations {
    ($($name:ident = $ms:literal, $row:literal;)*) => {
        $(#[doc = concat!("docs/WORKER.md's `", $row, "`: ", stringify!($ms), " ms.")]
        pub const $name: Duration = Duration::from_millis($ms);)*
        /// Every duration as (table row, ms).
        #[cfg(test)]
        const DURATION_ROWS: &[(&str, i64)] = &[$(($row, $ms)),*];
    };
}

// Each row: constant = milliseconds, docs/WORKER.md's row name (its meaning is said there).
durations! {
    CLAIM_WAIT = 10_000, "claim_wait"; CLAIM_ATTEMPT_TIMEOUT = 1000, "claim_attempt_timeout";
    CLAIM_RETRY_FOR = 3000, "claim_retry_for"; CLAIM_BACKOFF_INITIAL = 50, "claim_backoff_initial";
    CLAIM_BACKOFF_MAX = 2000, "claim_backoff_max"; REPORT_BACKOFF_INITIAL = 50, "report_backoff_initial";
    REPORT_BACKOFF_MAX = 2000, "report_backoff_max"; HEARTBEAT_SILENCE_MIN = 200, "heartbeat_silence_min";
    HEARTBEAT_SILENCE_MAX = 1500, "heartbeat_silence_max";
    HEARTBEAT_RECONNECT_BACKOFF_MAX = 500, "heartbeat_reconnect_backoff_max";
    SHUTDOWN_GRACE = 30_000, "shutdown_grace"; DRAIN_TIMEOUT = 300_000, "drain_timeout";
}
/// The exit code recorded when a handler crashed instead of returning an outcome.
pub const CRASH_EXIT_CODE: i32 = -1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_docs_worker_md_table() {
        let doc = include_str!("../../docs/WORKER.md");
        let start = doc
            .find("<!-- protocol-table")
            .expect("the table's start marker");
        let end = doc
            .find("<!-- end protocol-table")
            .expect("the table's end marker");
        let mut ours = DURATION_ROWS.to_vec();
        ours.push(("crash_exit_code", CRASH_EXIT_CODE as i64));
        let mut table = std::collections::BTreeMap::new();
        for line in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let value: i64 = cells[2].parse().expect("a number");
            table.insert(name.to_string(), value);
        }
        assert_eq!(
            table.len(),
            ours.len(),
            "the table and the SDK name the same numbers"
        );
        for (name, value) in &ours {
            assert_eq!(table.get(*name), Some(value), "{name}");
        }
    }
}
