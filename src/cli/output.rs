//! Human-readable and JSON renderings of API answers.
use crate::proto::v1 as pb;
use serde_json::{json, Value};

fn state_name(s: i32) -> String {
    pb::TaskState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn task_json(t: &pb::Task) -> Value {
    json!({
        "id": t.id, "queue": t.queue, "state": state_name(t.state), "attempt": t.attempt,
        "max_attempts": t.max_attempts, "lease_ttl_ms": t.lease_ttl_ms,
        "payload": text(&t.payload), "progress": text(&t.progress), "result": text(&t.result),
        "exit_code": t.exit_code, "error": t.error,
        "created_rev": t.created_rev, "updated_rev": t.updated_rev,
        "created_at_unix_ms": t.created_at_unix_ms, "updated_at_unix_ms": t.updated_at_unix_ms,
        "lease": t.lease.as_ref().map(|l| json!({"token": l.token, "worker_id": l.worker_id, "ttl_ms": l.ttl_ms, "renewals": l.renewals})),
        "history": t.history.iter().map(|h| json!({
            "attempt": h.attempt, "worker_id": h.worker_id, "lease_token": h.lease_token,
            "outcome": pb::AttemptOutcome::try_from(h.outcome).map(|o| o.as_str_name().trim_start_matches("ATTEMPT_OUTCOME_").to_string()).unwrap_or_default(),
            "exit_code": h.exit_code, "error": h.error, "late": h.late, "expiry_voters": h.expiry_voters,
            "expiry_evidence": h.expiry_evidence.iter().map(|e| json!({"node_id": e.node_id, "silence_ms": e.silence_ms})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// What one line about a task says: id, queue, state, attempt of attempts, revision.
fn summary(t: &pb::Task) -> (&str, &str, String, u32, u32, u64) {
    (
        &t.id,
        &t.queue,
        state_name(t.state),
        t.attempt,
        t.max_attempts,
        t.updated_rev,
    )
}

pub fn task(t: &pb::Task, as_json: bool) {
    if as_json {
        println!("{}", task_json(t));
        return;
    }
    let (id, queue, state, attempt, max, rev) = summary(t);
    println!("task {id}  queue {queue}  {state}  attempt {attempt}/{max}  rev {rev}");
    if let Some(l) = &t.lease {
        println!(
            "  lease {} held by {} (ttl {} ms, {} renewals)",
            l.token, l.worker_id, l.ttl_ms, l.renewals
        );
    }
    if !t.result.is_empty() {
        println!("  result: {}", text(&t.result));
    }
    if !t.error.is_empty() {
        println!("  error: {}", t.error);
    }
    for h in &t.history {
        let o = pb::AttemptOutcome::try_from(h.outcome)
            .map(|o| o.as_str_name().trim_start_matches("ATTEMPT_OUTCOME_"))
            .unwrap_or("?");
        println!(
            "  attempt {} by {} (lease {}): {}{}{}",
            h.attempt,
            h.worker_id,
            h.lease_token,
            o,
            if h.late { " (late report)" } else { "" },
            if h.error.is_empty() {
                String::new()
            } else {
                format!(": {}", h.error)
            }
        );
        if !h.expiry_evidence.is_empty() {
            let votes: Vec<String> = h
                .expiry_evidence
                .iter()
                .map(|e| format!("node {} after {} ms of silence", e.node_id, e.silence_ms))
                .collect();
            println!("    expiry votes: {}", votes.join(", "));
        }
    }
}

/// How a node sees its peers' clocks: "2:1.00 3:2.01".
fn clocks(st: &pb::NodeStatusResponse) -> String {
    let rates: Vec<String> = st
        .peer_clocks
        .iter()
        .filter(|p| p.rate > 0.0)
        .map(|p| format!("{}:{:.2}", p.node_id, p.rate))
        .collect();
    let mut s = if st.clock_off { "OFF " } else { "ok " }.to_string();
    s.push_str(&rates.join(" "));
    s
}

pub fn tasks(ts: &[pb::Task], as_json: bool) {
    if as_json {
        println!("{}", Value::Array(ts.iter().map(task_json).collect()));
        return;
    }
    for t in ts {
        let (id, queue, state, attempt, max, rev) = summary(t);
        println!("{id:<34} {queue:<16} {state:<10} attempt {attempt}/{max}  rev {rev}");
    }
    println!("({} tasks)", ts.len());
}

pub fn event(e: &pb::TaskEvent, as_json: bool) {
    let kind = pb::EventKind::try_from(e.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_string()
        })
        .unwrap_or_default();
    let t = e.task.clone().unwrap_or_default();
    if as_json {
        println!(
            "{}",
            json!({"revision": e.revision, "kind": kind, "task": task_json(&t)})
        );
    } else {
        println!(
            "rev {:<8} {:<16} {} ({}, {})",
            e.revision,
            kind,
            t.id,
            t.queue,
            state_name(t.state)
        );
    }
}

pub fn status(s: &pb::ClusterStatusResponse, as_json: bool) {
    if as_json {
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| {
                let st = m.status.clone().unwrap_or_default();
                json!({"node_id": m.node_id, "addr": m.addr, "peer_addr": m.peer_addr, "voter": m.voter, "reachable": m.reachable,
                       "role": st.role, "term": st.term, "last_log_index": st.last_log_index,
                       "applied_index": st.applied_index, "snapshot_index": st.snapshot_index,
                       "live_leases": st.live_leases, "tasks": st.tasks,
                       "refused_peer_calls": st.refused_peer_calls, "clock_off": st.clock_off,
                       "peer_clocks": st.peer_clocks.iter().map(|p| json!({"node_id": p.node_id, "rate": p.rate, "round_trip_us": p.round_trip_us})).collect::<Vec<_>>()})
            })
            .collect();
        println!(
            "{}",
            json!({"leader_id": s.leader_id, "leader_addr": s.leader_addr, "term": s.term, "members": members})
        );
        return;
    }
    println!(
        "leader: node {} ({})  term {}",
        s.leader_id, s.leader_addr, s.term
    );
    println!(
        "{:<6} {:<22} {:<22} {:<10} {:>10} {:>10} {:>10} {:>8} {:>8}  clock (peer rates)",
        "node", "addr", "peer addr", "role", "last_log", "applied", "snapshot", "leases", "refused"
    );
    for m in &s.members {
        match &m.status {
            Some(st) => println!(
                "{:<6} {:<22} {:<22} {:<10} {:>10} {:>10} {:>10} {:>8} {:>8}  {}",
                m.node_id,
                m.addr,
                m.peer_addr,
                st.role,
                st.last_log_index,
                st.applied_index,
                st.snapshot_index,
                st.live_leases,
                st.refused_peer_calls,
                clocks(st)
            ),
            None => println!(
                "{:<6} {:<22} {:<22} {:<10}",
                m.node_id, "-", m.peer_addr, "unreachable"
            ),
        }
    }
}
