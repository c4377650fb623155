//! The numbers of the worker protocol, shared with the Python SDK through docs/WORKER.md's
//! table (a test below reads it and fails when a constant differs from it).
use std::time::Duration;

/// How long a claim long-polls for a task by default (`Config::claim_wait`).
pub const CLAIM_WAIT: Duration = Duration::from_millis(10_000);
/// A claim attempt unanswered this long past its long-poll wait moves to another node.
pub const CLAIM_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one claim call keeps trying nodes before the claim loop sees its error.
pub const CLAIM_RETRY_FOR: Duration = Duration::from_millis(3000);
pub const CLAIM_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
pub const CLAIM_BACKOFF_MAX: Duration = Duration::from_millis(2000);
pub const REPORT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
pub const REPORT_BACKOFF_MAX: Duration = Duration::from_millis(2000);
/// Bounds on how long a heartbeat waits for its answer before trying another node.
pub const HEARTBEAT_SILENCE_MIN: Duration = Duration::from_millis(200);
pub const HEARTBEAT_SILENCE_MAX: Duration = Duration::from_millis(1500);
pub const HEARTBEAT_RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(30_000);
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(300_000);
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
        let ms = |d: Duration| d.as_millis() as i64;
        let ours: &[(&str, i64)] = &[
            ("claim_wait", ms(CLAIM_WAIT)),
            ("claim_attempt_timeout", ms(CLAIM_ATTEMPT_TIMEOUT)),
            ("claim_retry_for", ms(CLAIM_RETRY_FOR)),
            ("claim_backoff_initial", ms(CLAIM_BACKOFF_INITIAL)),
            ("claim_backoff_max", ms(CLAIM_BACKOFF_MAX)),
            ("report_backoff_initial", ms(REPORT_BACKOFF_INITIAL)),
            ("report_backoff_max", ms(REPORT_BACKOFF_MAX)),
            ("heartbeat_silence_min", ms(HEARTBEAT_SILENCE_MIN)),
            ("heartbeat_silence_max", ms(HEARTBEAT_SILENCE_MAX)),
            (
                "heartbeat_reconnect_backoff_max",
                ms(HEARTBEAT_RECONNECT_BACKOFF_MAX),
            ),
            ("shutdown_grace", ms(SHUTDOWN_GRACE)),
            ("drain_timeout", ms(DRAIN_TIMEOUT)),
            ("crash_exit_code", CRASH_EXIT_CODE as i64),
        ];
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
        for (name, value) in ours {
            assert_eq!(table.get(*name), Some(value), "{name}");
        }
    }
}
