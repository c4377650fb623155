//! Real `leasekeeper worker` / `leasekeeper run` processes for tests, and the task command they
//! run: it reads "<seconds> [term]" from its payload, notes that it ran, sleeps, prints "ok" and
//! exits 0 (after sending SIGTERM to its worker when asked to).
#![allow(dead_code)]
use leasekeeper::proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// The task command: `$MARKS/<task id>` gets one line per run.
pub fn task_command(marks: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            r#"read d sig; echo run >> "{}/$LEASEKEEPER_TASK_ID"; sleep "$d"; echo "ok $LEASEKEEPER_TASK_ID"; if [ "$sig" = term ]; then kill -TERM $PPID; fi; exit 0"#,
            marks.display()
        ),
    ]
}

/// How many times the task command ran for `id`.
pub fn runs(marks: &Path, id: &str) -> usize {
    std::fs::read_to_string(marks.join(id))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

pub struct WorkerProc {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProc {
    /// `leasekeeper worker` against `endpoints`, logging to `log`.
    pub fn spawn(
        endpoints: &[String],
        queue: &str,
        journal: &Path,
        extra: &[&str],
        command: &[String],
        log: PathBuf,
    ) -> WorkerProc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_leasekeeper"))
            .arg("worker")
            .args(["--queue", queue, "--endpoints", &endpoints.join(",")])
            .arg("--journal-dir")
            .arg(journal)
            .args(extra)
            .arg("--")
            .args(command)
            .env("LEASEKEEPER_LOG", "info,leasekeeper=debug,openraft=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("leasekeeper worker starts");
        WorkerProc { child, log }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) for `needle` in the worker's log; panics with the log otherwise.
    pub async fn wait_log(&self, needle: &str) {
        for _ in 0..500 {
            if self.log_text().contains(needle) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!(
            "{needle:?} not in the worker's log within 10 s:\n{}",
            self.log_text()
        );
    }
}

/// `dir/marks`, created: where the task command notes its runs.
/// What every worker test starts from: a real three-node cluster, a client of it, and a
/// temporary directory holding the `marks` folder the test commands write to.
pub async fn worker_bed() -> (
    super::Cluster,
    leasekeeper::client::Client,
    tempfile::TempDir,
    PathBuf,
) {
    let cluster = super::Cluster::start(3).await;
    let c = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let marks = marks_dir(dir.path());
    (cluster, c, dir, marks)
}

pub fn marks_dir(dir: &Path) -> PathBuf {
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    marks
}

pub fn succeeded_records(t: &pb::Task) -> usize {
    t.history
        .iter()
        .filter(|r| r.outcome == pb::AttemptOutcome::Succeeded as i32)
        .count()
}

/// The scenarios of docs/SCENARIOS.md, seconds scaled to `ms_per_s` milliseconds: (id, runs for,
/// lease TTL), both in ms. The old heartbeat interval does not matter: renewals go out at the
/// interval the cluster advises.
pub fn scenario_rows(ms_per_s: u64) -> Vec<(&'static str, u64, u64)> {
    [
        ("S001", 180, 120),
        ("S002", 650, 600),
        ("S003", 90, 100),
        ("S004", 200, 180),
        ("S005", 75, 60),
    ]
    .into_iter()
    .map(|(id, runs, ttl)| (id, runs * ms_per_s, ttl * ms_per_s))
    .collect()
}

pub fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}
