//! Running a claimed task as a child process (`leasekeeper worker` and `leasekeeper run`).
//!
//! The child gets the task in its environment (`LEASEKEEPER_TASK_ID`, `LEASEKEEPER_QUEUE`,
//! `LEASEKEEPER_ATTEMPT`, `LEASEKEEPER_LEASE_TOKEN`) and the payload on stdin. Its output is
//! passed through to ours and the tail of each stream is kept: exit 0 reports success with the
//! tail of stdout as the result; a non-zero exit reports failure with the exit code and the tail
//! of stderr; death by a signal reports failure naming the signal. When the lease is lost the
//! child's process group gets SIGTERM, then SIGKILL after `kill_grace`.
use super::{Outcome, TaskContext};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Bytes of stdout/stderr kept for the report.
pub const TAIL_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct ExecConfig {
    pub argv: Vec<String>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// How the child ended, before it becomes a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

fn kill_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a process-group id we created; no memory is involved.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > 2 * TAIL_BYTES {
            let cut = self.0.len() - TAIL_BYTES;
            self.0.drain(..cut);
        }
    }
    fn take(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        if v.len() > TAIL_BYTES {
            v.drain(..v.len() - TAIL_BYTES);
        }
        v
    }
}

async fn pump<R: AsyncRead + Unpin>(mut from: R, tail: Arc<Mutex<Tail>>, to_stderr: bool) {
    let mut buf = vec![0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tail.lock().expect("lock").push(&buf[..n]);
                let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stderr {
                    Box::new(tokio::io::stderr())
                } else {
                    Box::new(tokio::io::stdout())
                };
                let _ = out.write_all(&buf[..n]).await;
            }
        }
    }
}

/// Runs the command for `ctx` and turns its end into an outcome.
pub async fn run(ctx: &TaskContext, cfg: &ExecConfig) -> Outcome {
    let Some((prog, args)) = cfg.argv.split_first() else {
        return Outcome::Failure {
            exit_code: 127,
            error: "no command given".into(),
            result: Vec::new(),
        };
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("LEASEKEEPER_TASK_ID", &ctx.task.id)
        .env("LEASEKEEPER_QUEUE", &ctx.task.queue)
        .env("LEASEKEEPER_ATTEMPT", ctx.lease.attempt.to_string())
        .env("LEASEKEEPER_LEASE_TOKEN", ctx.lease.token.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: signals meant for the worker (a terminal's Ctrl-C, a service
        // manager's SIGTERM) do not reach the task; the worker decides what the task gets.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failure {
                exit_code: 127,
                error: format!("cannot start {prog:?}: {e}"),
                result: Vec::new(),
            }
        }
    };
    let pid = child.id().expect("a running child has a pid");
    tracing::info!(task = %ctx.task.id, pid, "started");
    if let Some(mut stdin) = child.stdin.take() {
        let payload = ctx.task.payload.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
        });
    }
    let out_tail = Arc::new(Mutex::new(Tail::default()));
    let err_tail = Arc::new(Mutex::new(Tail::default()));
    let pumps = [
        tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            out_tail.clone(),
            false,
        )),
        tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            err_tail.clone(),
            true,
        )),
    ];

    // Wait for the child; on a lost lease or the end of the grace period, stop it.
    let mut why_stopped: Option<String> = None;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = ctx.lost().cancelled(), if why_stopped.is_none() => {
                let why = ctx.lost_reason().unwrap_or_else(|| "lease lost".into());
                why_stopped = Some(format!("lease lost ({why})"));
            }
            _ = ctx.stopping().cancelled(), if why_stopped.is_none() => {
                why_stopped = Some("worker stopping".into());
            }
        }
        if why_stopped.is_some() {
            tracing::warn!(task = %ctx.task.id, pid, reason = why_stopped.as_deref(), "sending SIGTERM to the task");
            kill_group(pid, libc::SIGTERM);
            match tokio::time::timeout(cfg.kill_grace, child.wait()).await {
                Ok(s) => break s,
                Err(_) => {
                    tracing::warn!(task = %ctx.task.id, pid, "still running after the grace period: SIGKILL");
                    kill_group(pid, libc::SIGKILL);
                    break child.wait().await;
                }
            }
        }
    };
    // Output may still be in the pipes (a grandchild can hold them open: bound the wait).
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    let stdout = out_tail.lock().expect("lock").take();
    let stderr = err_tail.lock().expect("lock").take();
    let exit = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                (None, None) => Exit::Code(-1),
            }
        }
        Err(e) => {
            return Outcome::Failure {
                exit_code: -1,
                error: format!("cannot wait for the task's process: {e}"),
                result: stdout,
            }
        }
    };
    tracing::info!(task = %ctx.task.id, pid, ?exit, "exited");
    outcome_of(exit, stdout, stderr, why_stopped)
}

/// The report for a child's end. Exit 0 is a success whatever happened around it.
pub fn outcome_of(
    exit: Exit,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stopped: Option<String>,
) -> Outcome {
    let err_text = String::from_utf8_lossy(&stderr).into_owned();
    match exit {
        Exit::Code(0) => Outcome::Success { result: stdout },
        // Stopped by us for a shutdown: give the task back rather than count a failure.
        _ if stopped.as_deref() == Some("worker stopping") => Outcome::Release {
            reason: "the worker was stopped before the task finished".into(),
        },
        Exit::Code(c) => Outcome::Failure {
            exit_code: c,
            error: match stopped {
                Some(why) => format!("exited with code {c} after being stopped: {why}\n{err_text}"),
                None => format!("exited with code {c}\n{err_text}"),
            },
            result: stdout,
        },
        Exit::Signal(sig) => Outcome::Failure {
            exit_code: 128 + sig,
            error: match stopped {
                Some(why) => format!("killed by {} ({why})\n{err_text}", signal_name(sig)),
                None => format!("killed by {}\n{err_text}", signal_name(sig)),
            },
            result: stdout,
        },
    }
}

/// The exit code a wrapper (`leasekeeper run`) should exit with for `outcome`.
pub fn exit_code_of(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Success { .. } => 0,
        Outcome::Failure { exit_code, .. } => {
            if (0..=255).contains(exit_code) && *exit_code != 0 {
                *exit_code
            } else {
                1
            }
        }
        Outcome::Release { .. } => 75,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome_of(
                Exit::Code(0),
                b"out".to_vec(),
                vec![],
                Some("lease lost (x)".into())
            ),
            Outcome::Success {
                result: b"out".to_vec()
            },
            "exit 0 is success even after a lost lease (a late success)"
        );
        let Outcome::Failure {
            exit_code, error, ..
        } = outcome_of(Exit::Code(3), vec![], b"boom".to_vec(), None)
        else {
            panic!()
        };
        assert_eq!(exit_code, 3);
        assert!(error.contains("code 3") && error.contains("boom"));
        let Outcome::Failure {
            exit_code, error, ..
        } = outcome_of(Exit::Signal(9), vec![], vec![], None)
        else {
            panic!()
        };
        assert_eq!(exit_code, 137);
        assert!(error.contains("SIGKILL"), "{error}");
        assert!(matches!(
            outcome_of(
                Exit::Signal(15),
                vec![],
                vec![],
                Some("worker stopping".into())
            ),
            Outcome::Release { .. }
        ));
        assert_eq!(
            exit_code_of(&Outcome::Failure {
                exit_code: 137,
                error: String::new(),
                result: vec![]
            }),
            137
        );
        assert_eq!(
            exit_code_of(&Outcome::Failure {
                exit_code: -1,
                error: String::new(),
                result: vec![]
            }),
            1
        );
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::default();
        for i in 0..200u32 {
            t.push(&vec![(i % 251) as u8; 1000]);
        }
        let v = t.take();
        assert_eq!(v.len(), TAIL_BYTES);
        assert_eq!(*v.last().unwrap(), 199u8);
    }
}
