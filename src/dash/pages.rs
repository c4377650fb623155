//! The pages, rendered on the server. Each works without JavaScript; with it, `app.js` swaps
//! in fresh content (a request with `X-Partial: 1` answers the page's `<main>` only) and
//! applies the live stream.
use super::data::{self, AttemptView, ClusterView, LeaseView, TaskRow, VerdictView};
use super::html::{ago, badge, chart_svg, dur, enc, esc, sparkline, task_link};
use super::{read_on, Dash, Filter, LeaseQuery, Refusal, Shared};
use crate::auth::Need;
use crate::store::VerdictKind;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use std::fmt::Write;

/// A whole page, or its `<main>` alone for a partial request.
fn page(d: &Dash, h: &HeaderMap, title: &str, refresh_ms: u32, main: String) -> Response {
    let mut r = if h.contains_key("x-partial") {
        Html(main).into_response()
    } else {
        Html(layout(d, title, refresh_ms, &main)).into_response()
    };
    let hs = r.headers_mut();
    hs.insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    hs.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
            .parse()
            .expect("valid"),
    );
    hs.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().expect("valid"),
    );
    r
}

fn layout(d: &Dash, title: &str, refresh_ms: u32, main: &str) -> String {
    let n = &d.node;
    let m = n.metrics();
    let leader = match m.current_leader {
        Some(l) => format!("leader <b id=\"leader\">node {l}</b>"),
        None => "<b id=\"leader\" class=\"bad\">no leader</b>".into(),
    };
    let auth = if d.auth.is_some() {
        "<details class=\"token\"><summary>token</summary><form method=\"post\" action=\"/login\"><input name=\"token\" type=\"password\" autocomplete=\"off\" placeholder=\"paste a token\"><button>use</button></form><button id=\"logout\" type=\"button\">forget</button></details>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title} · leasekeeper node {id}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"><script src=\"/assets/app.js\" defer></script></head>\
<body data-node=\"{id}\"><header><a class=\"brand\" href=\"/\">leasekeeper</a><nav><a href=\"/\">Overview</a><a href=\"/tasks\">Tasks</a><a href=\"/running\">Running now</a><a href=\"/verdicts\">Verdicts</a></nav>\
<span class=\"where\">node <b>{id}</b> · {leader} · term {term}</span>{auth}</header>\
<div id=\"gone\" class=\"gone\" hidden></div><div id=\"flash\" class=\"flash\" hidden></div>\
<main id=\"main\" data-refresh=\"{refresh_ms}\">{main}</main></body></html>",
        title = esc(title),
        id = n.id,
        term = m.current_term,
    )
}

/// A refusal as a page (with the token form when a token would help).
fn refused(d: &Dash, h: &HeaderMap, r: Refusal) -> Response {
    let hint = match r.code {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "<p>Paste a token with the role it names under <b>token</b> at the top right (or send <code>Authorization: Bearer …</code>).</p>",
        _ => "",
    };
    let main = format!(
        "<h1>{}</h1><p class=\"error\">{}</p>{hint}",
        r.code,
        esc(&r.message)
    );
    let mut resp = page(d, h, "refused", 0, main);
    *resp.status_mut() = r.code;
    resp
}

// ------------------------------------------------------------------ overview

pub async fn overview(State(d): Shared, h: HeaderMap) -> Response {
    if let Err(r) = d.check(&h, Need::Status) {
        return refused(&d, &h, r);
    }
    let status = d.status().await;
    let cluster = data::cluster(&d.node, &status);
    let queues = data::queues(&d.node, &status);
    let mut s = String::new();
    cluster_section(&mut s, &cluster);
    queues_section(&mut s, &queues);
    // Leases and verdicts name tasks: they need a read grant on every queue.
    match d.check(&h, Need::Read(None)) {
        Ok(()) => {
            let l = data::leases(&d.node, "", 10);
            let _ = write!(
                s,
                "<section><h2>Running now <a class=\"more\" href=\"/running\">all {} →</a></h2>",
                l.total
            );
            leases_table(&mut s, &l.leases);
            s.push_str("</section><section><h2>Recent verdicts <a class=\"more\" href=\"/verdicts\">more →</a></h2>");
            verdicts_list(&mut s, &data::verdicts(&d.node, 10), cluster.now_unix_ms);
            s.push_str("</section>");
        }
        Err(r) => {
            let _ = write!(s, "<section><p class=\"muted\">Running leases and verdicts need a read grant on every queue: {}</p></section>", esc(&r.message));
        }
    }
    page(&d, &h, "Overview", 2000, s)
}

fn cluster_section(s: &mut String, c: &ClusterView) {
    let _ = write!(
        s,
        "<section><h2>Cluster</h2><table id=\"members\"><thead><tr><th>node</th><th>role</th><th>term</th><th>last log</th><th>committed</th><th>applied</th><th>snapshot</th><th>reachable</th><th>clock</th><th>live leases</th><th>tasks</th><th>dashboard</th></tr></thead><tbody>"
    );
    for m in &c.members {
        let clock = if !m.reachable {
            "–".to_string()
        } else if m.clock_off {
            "<b class=\"bad\">OFF</b>".to_string()
        } else {
            let rates: Vec<String> = m
                .peer_clock_rates
                .iter()
                .map(|(p, r)| format!("{p}: {r:.3}"))
                .collect();
            format!("ok <span class=\"muted\">{}</span>", esc(&rates.join(", ")))
        };
        let dash = if m.http_addr.is_empty() {
            "–".to_string()
        } else {
            format!("<a href=\"http://{0}/\">{0}</a>", esc(&m.http_addr))
        };
        let role = if m.role == "leader" {
            "<b>leader</b>".to_string()
        } else {
            esc(&m.role)
        };
        let _ = write!(
            s,
            "<tr class=\"{}\" data-http=\"{}\"><td>{}{}</td><td>{role}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{clock}</td><td>{}</td><td>{}</td><td>{dash}</td></tr>",
            if m.reachable { "" } else { "down" },
            esc(&m.http_addr),
            m.node_id,
            if m.voter { "" } else { " <span class=\"muted\">(learner)</span>" },
            m.term,
            m.last_log_index,
            if m.commit_index > 0 { m.commit_index.to_string() } else { "–".into() },
            m.applied_index,
            m.snapshot_index,
            if m.reachable { "yes" } else { "<b class=\"bad\">no</b>" },
            m.live_leases,
            m.tasks,
        );
    }
    s.push_str("</tbody></table>");
    let changes = &c.leader_changes;
    let _ = write!(
        s,
        "<p>Leader changes in the last hour, as node {} saw them: <b id=\"leader-changes\">{}</b></p>",
        c.node_id,
        changes.len()
    );
    if !changes.is_empty() {
        s.push_str("<ul class=\"changes\">");
        for ch in changes.iter().take(20) {
            let who = ch
                .leader
                .map(|l| format!("node {l}"))
                .unwrap_or_else(|| "no leader".into());
            let _ = write!(
                s,
                "<li>{} · term {} · {who}</li>",
                ago(ch.at_unix_ms, c.now_unix_ms),
                ch.term
            );
        }
        s.push_str("</ul>");
    }
    s.push_str("</section>");
}

fn queues_section(s: &mut String, q: &data::QueuesView) {
    s.push_str("<section><h2>Queues</h2>");
    if q.queues.is_empty() {
        s.push_str("<p class=\"muted\">No tasks yet.</p></section>");
        return;
    }
    s.push_str("<table id=\"queues\"><thead><tr><th>queue</th><th>pending</th><th>running</th><th>succeeded</th><th>failed</th><th>cancelled</th><th>live leases</th><th>submitted/s</th><th>finished/s</th><th>last minute</th></tr></thead><tbody>");
    for v in &q.queues {
        let c = |k: &str| v.counts.get(k).copied().unwrap_or(0);
        let link = |state: &str, n: u64| {
            format!(
                "<a href=\"/tasks?queue={}&amp;state={state}\">{n}</a>",
                enc(&v.queue)
            )
        };
        let _ = write!(
            s,
            "<tr><td><a href=\"/tasks?queue={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            enc(&v.queue),
            esc(&v.queue),
            link("pending", c("pending")),
            link("running", c("running")),
            link("succeeded", c("succeeded")),
            link("failed", c("failed")),
            link("cancelled", c("cancelled")),
            v.live_leases,
            v.throughput.submitted_per_s,
            v.throughput.finished_per_s,
            sparkline(&v.throughput.finished_each_s),
        );
    }
    s.push_str("</tbody></table>");
    if q.more > 0 {
        let _ = write!(
            s,
            "<p class=\"muted\">{} more queues are not shown.</p>",
            q.more
        );
    }
    s.push_str("<div class=\"charts\">");
    for v in q.queues.iter().take(12) {
        let _ = write!(
            s,
            "<figure><figcaption>{}</figcaption>{}{}</figure>",
            esc(&v.queue),
            chart_svg(&v.heartbeat_interval, "heartbeat intervals"),
            chart_svg(&v.report_latency, "report latency (exit → committed)")
        );
    }
    s.push_str("</div></section>");
}

// ------------------------------------------------------------------ tasks

/// One line of the task list (also sent by the live stream).
pub fn task_line(r: &TaskRow) -> String {
    let late = if r.late_success {
        " <span class=\"badge late\">late success</span>"
    } else {
        ""
    };
    format!(
        "<tr data-id=\"{}\"><td>{}</td><td>{}</td><td>{}{late}</td><td>{}/{}</td><td>{}</td><td class=\"muted\">{}</td><td class=\"err\">{}</td></tr>",
        esc(&r.id),
        task_link(&r.id),
        esc(&r.queue),
        badge(r.state),
        r.attempt,
        r.max_attempts,
        esc(r.worker_id.as_deref().unwrap_or("")),
        r.updated_rev,
        esc(&r.error),
    )
}

pub async fn task_list(State(d): Shared, h: HeaderMap, Query(f): Query<Filter>) -> Response {
    if let Err(r) = d.check(&h, read_on(&f.queue)) {
        return refused(&d, &h, r);
    }
    let page_data = match data::tasks(&d.node, &f) {
        Ok(p) => p,
        Err(m) => return refused(&d, &h, Refusal::bad(m)),
    };
    let mut s =
        String::from("<h1>Tasks</h1><form class=\"filter\" method=\"get\" action=\"/tasks\">");
    let _ = write!(
        s,
        "<label>queue <input name=\"queue\" value=\"{}\"></label><label>state <select name=\"state\">",
        esc(&f.queue)
    );
    for st in ["", "pending", "running", "succeeded", "failed", "cancelled"] {
        let sel = if f.state.eq_ignore_ascii_case(st) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            s,
            "<option value=\"{st}\"{sel}>{}</option>",
            if st.is_empty() { "any" } else { st }
        );
    }
    let _ = write!(
        s,
        "</select></label><label>id prefix <input name=\"prefix\" value=\"{}\"></label><button>show</button></form>",
        esc(&f.prefix)
    );
    // Only the first page takes in new tasks live; later pages update the lines they show.
    // From the revision after the page's: nothing applied in between is missed.
    let live = format!(
        "/api/v1/watch?queue={}&state={}&prefix={}&from_revision={}",
        enc(&f.queue),
        enc(&f.state),
        enc(&f.prefix),
        page_data.revision + 1
    );
    let _ = write!(
        s,
        "<table id=\"tasks\" data-live=\"{}\" data-first=\"{}\"><thead><tr><th>id</th><th>queue</th><th>state</th><th>attempt</th><th>worker</th><th>revision</th><th>error</th></tr></thead><tbody>",
        esc(&live),
        f.after.is_empty()
    );
    for r in &page_data.tasks {
        s.push_str(&task_line(r));
    }
    s.push_str("</tbody></table>");
    if page_data.tasks.is_empty() {
        s.push_str("<p class=\"muted\" id=\"empty\">No task matches.</p>");
    }
    if let Some(next) = &page_data.next {
        let _ = write!(
            s,
            "<p><a id=\"next\" href=\"/tasks?queue={}&amp;state={}&amp;prefix={}&amp;after={}\">next page →</a></p>",
            enc(&f.queue),
            enc(&f.state),
            enc(&f.prefix),
            enc(next)
        );
    }
    let _ = write!(
        s,
        "<p class=\"muted\">As of revision {} on node {}.</p>",
        page_data.revision, d.node.id
    );
    page(&d, &h, "Tasks", 0, s)
}

pub async fn task_page(State(d): Shared, h: HeaderMap, Path(id): Path<String>) -> Response {
    let t = match super::task_for(&d, &h, &id) {
        Ok(t) => t,
        Err(r) => return refused(&d, &h, r),
    };
    let now = d.node.clock.unix_ms();
    let mut s = String::new();
    let _ = write!(
        s,
        "<h1 data-live=\"/api/v1/watch?task_id={}&amp;from_revision={}\">Task <code>{}</code> {}</h1>",
        enc(&t.row.id),
        t.revision + 1,
        esc(&t.row.id),
        badge(t.row.state)
    );
    story(&mut s, &t);
    let cancellable = matches!(t.row.state, "pending" | "running");
    let retryable = matches!(t.row.state, "failed" | "cancelled");
    s.push_str("<div class=\"actions\">");
    if cancellable {
        let _ = write!(
            s,
            "<button class=\"act danger\" data-action=\"cancel\" data-id=\"{}\">Cancel</button>",
            esc(&t.row.id)
        );
    }
    if retryable {
        let _ = write!(
            s,
            "<button class=\"act\" data-action=\"retry\" data-id=\"{}\">Retry</button>",
            esc(&t.row.id)
        );
    }
    s.push_str("</div>");
    let trace = match (&t.trace_id, &t.trace_url) {
        (Some(id), Some(u)) => format!("<a href=\"{}\">{}</a>", esc(u), esc(id)),
        (Some(id), None) => format!("<code>{}</code>", esc(id)),
        _ => "–".into(),
    };
    let _ = write!(
        s,
        "<table class=\"kv\"><tr><th>queue</th><td>{}</td></tr><tr><th>attempts</th><td>{} started, {} failed, at most {}</td></tr><tr><th>lease TTL</th><td>{}</td></tr><tr><th>retry back-off</th><td>{} to {}</td></tr><tr><th>created</th><td>{} (revision {})</td></tr><tr><th>updated</th><td>{} (revision {})</td></tr><tr><th>not before</th><td>{}</td></tr><tr><th>exit code</th><td>{}</td></tr><tr><th>trace</th><td>{trace}</td></tr></table>",
        esc(&t.row.queue),
        t.row.attempt,
        t.row.failures,
        t.row.max_attempts,
        dur(t.lease_ttl_ms),
        dur(t.initial_backoff_ms),
        dur(t.max_backoff_ms),
        ago(t.row.created_at_unix_ms, now),
        t.created_rev,
        ago(t.row.updated_at_unix_ms, now),
        t.row.updated_rev,
        ago(t.not_before_unix_ms, now),
        t.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into()),
    );
    if !t.error_full.is_empty() {
        let _ = write!(
            s,
            "<h2>Error</h2><pre class=\"err\">{}</pre>",
            esc(&t.error_full)
        );
    }
    bytes_block(&mut s, "Payload", &t.payload);
    bytes_block(&mut s, "Progress", &t.progress);
    bytes_block(&mut s, "Result (stdout and stderr tails)", &t.result);
    if let Some(l) = &t.lease {
        s.push_str("<h2>Live lease</h2>");
        leases_table(&mut s, std::slice::from_ref(l));
    }
    s.push_str("<h2>Attempts</h2><table id=\"attempts\"><thead><tr><th>#</th><th>worker</th><th>lease</th><th>outcome</th><th>renewals</th><th>exit</th><th>revisions</th><th>evidence</th></tr></thead><tbody>");
    for a in &t.attempts {
        attempt_line(&mut s, a);
    }
    s.push_str("</tbody></table>");
    page(&d, &h, &format!("Task {}", t.row.id), 0, s)
}

/// What happened, in a sentence, when a verdict decided the task.
fn story(s: &mut String, t: &data::TaskDetail) {
    for a in &t.attempts {
        if a.late && a.outcome == "succeeded" {
            let mut why = format!(
                "Attempt {} (lease {}) reported success after its lease had ended, and the task took it: it is SUCCEEDED, where a scheduler that trusts its heartbeat timeout alone would have recorded a failure.",
                a.attempt, a.lease_token
            );
            if a.expired {
                let _ = write!(why, " Its lease had expired by the votes of {}.", voters(a));
            }
            if let Some(tok) = a.superseded {
                let _ = write!(why, " It stopped the newer attempt holding lease {tok}.");
            }
            let _ = write!(s, "<p class=\"story good\" id=\"story\">{}</p>", esc(&why));
            return;
        }
    }
}

fn voters(a: &AttemptView) -> String {
    if a.expiry_evidence.is_empty() {
        let ids: Vec<String> = a
            .expiry_voters
            .iter()
            .map(|v| format!("node {v}"))
            .collect();
        return ids.join(", ");
    }
    let each: Vec<String> = a
        .expiry_evidence
        .iter()
        .map(|v| format!("node {} after {} of silence", v.node_id, dur(v.silence_ms)))
        .collect();
    each.join(", ")
}

fn attempt_line(s: &mut String, a: &AttemptView) {
    let mut evidence = Vec::new();
    if a.expired {
        evidence.push(format!("expired: {}", voters(a)));
    }
    if a.late && a.outcome == "succeeded" {
        evidence.push("late success, accepted".to_string());
    } else if a.late {
        evidence.push("reported after its lease ended".to_string());
    }
    if let Some(tok) = a.superseded {
        evidence.push(format!("stopped the attempt holding lease {tok}"));
    }
    if let Some(tok) = a.superseded_by {
        evidence.push(format!("stopped by the late success of lease {tok}"));
    }
    if !a.error.is_empty() && a.superseded_by.is_none() {
        evidence.push(a.error.clone());
    }
    let late = if a.late && a.outcome == "succeeded" {
        " <span class=\"badge late\">late</span>"
    } else {
        ""
    };
    let _ = write!(
        s,
        "<tr data-token=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}{late}</td><td>{}</td><td>{}</td><td class=\"muted\">{}–{}</td><td class=\"evidence\">{}</td></tr>",
        a.lease_token,
        a.attempt,
        esc(&a.worker_id),
        a.lease_token,
        badge(a.outcome),
        a.renewals,
        a.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into()),
        a.started_rev,
        if a.ended_rev == 0 { String::new() } else { a.ended_rev.to_string() },
        esc(&evidence.join("; ")),
    );
}

fn bytes_block(s: &mut String, title: &str, b: &data::Bytes) {
    if b.size == 0 {
        return;
    }
    let more = if b.truncated {
        format!(
            " <span class=\"muted\">(the first part of {} bytes)</span>",
            b.size
        )
    } else {
        format!(" <span class=\"muted\">({} bytes)</span>", b.size)
    };
    let body = match (&b.text, &b.hex) {
        (Some(t), _) => esc(t),
        (None, Some(h)) => format!("hex: {}", esc(h)),
        _ => String::new(),
    };
    let _ = write!(s, "<h2>{}{more}</h2><pre>{body}</pre>", esc(title));
}

// ------------------------------------------------------------------ leases and verdicts

fn leases_table(s: &mut String, leases: &[LeaseView]) {
    if leases.is_empty() {
        s.push_str("<p class=\"muted\">No live lease.</p>");
        return;
    }
    s.push_str("<table class=\"leases\"><thead><tr><th>task</th><th>queue</th><th>worker</th><th>attempt</th><th>lease</th><th>renewals</th><th>silent for, of its TTL</th><th>expiry votes</th></tr></thead><tbody>");
    for l in leases {
        let silence = l.silence_ms.unwrap_or(0);
        let frac = silence as f64 / l.ttl_ms.max(1) as f64;
        let votes: Vec<String> = l.votes.iter().map(|v| format!("node {v}")).collect();
        let _ = write!(
            s,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><meter min=\"0\" max=\"1\" low=\"0.5\" high=\"0.8\" optimum=\"0\" value=\"{:.3}\"></meter> {} of {}</td><td>{}</td></tr>",
            if frac >= 0.8 { "lapsing" } else { "" },
            task_link(&l.task_id),
            esc(&l.queue),
            esc(&l.worker_id),
            l.attempt,
            l.token,
            l.renewals,
            frac.min(1.0),
            dur(silence),
            dur(l.ttl_ms),
            esc(&votes.join(", ")),
        );
    }
    s.push_str("</tbody></table>");
}

pub async fn running(State(d): Shared, h: HeaderMap, Query(q): Query<LeaseQuery>) -> Response {
    if let Err(r) = d.check(&h, read_on(&q.queue)) {
        return refused(&d, &h, r);
    }
    let l = data::leases(&d.node, &q.queue, q.limit.unwrap_or(100));
    let mut s = format!(
        "<h1>Running now</h1><p>{} live leases{}; the ones closest to lapsing first. A bar fills as this node goes without hearing the lease; it expires once a majority of voters have each been silent for its TTL.</p>",
        l.total,
        if q.queue.is_empty() { String::new() } else { format!(" in {}", esc(&q.queue)) }
    );
    leases_table(&mut s, &l.leases);
    if l.total > l.leases.len() {
        let _ = write!(
            s,
            "<p class=\"muted\">{} more not shown.</p>",
            l.total - l.leases.len()
        );
    }
    page(&d, &h, "Running now", 1000, s)
}

fn verdicts_list(s: &mut String, v: &[VerdictView], now: u64) {
    if v.is_empty() {
        s.push_str("<p class=\"muted\">No expiry and no late success since this node started.</p>");
        return;
    }
    s.push_str("<table class=\"verdicts\"><thead><tr><th>when</th><th>verdict</th><th>task</th><th>queue</th><th>attempt</th><th>evidence</th><th>task now</th></tr></thead><tbody>");
    for x in v {
        let a = x.attempt.as_ref();
        let evidence = match (x.verdict.kind, a) {
            (VerdictKind::Expired, Some(a)) => voters(a),
            (VerdictKind::LateSuccess, Some(a)) => {
                let mut e = format!(
                    "lease {} reported exit {} after its lease ended",
                    a.lease_token,
                    a.exit_code.unwrap_or(0)
                );
                if let Some(tok) = x.verdict.superseded {
                    let _ = write!(e, "; stopped lease {tok}");
                }
                e
            }
            (_, None) => "the task is no longer retained".into(),
        };
        let _ = write!(
            s,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"evidence\">{}</td><td>{}</td></tr>",
            if x.verdict.kind == VerdictKind::LateSuccess { "late" } else { "" },
            ago(x.verdict.at_unix_ms, now),
            data::verdict_words(x.verdict.kind),
            task_link(&x.verdict.task_id),
            esc(&x.verdict.queue),
            a.map(|a| a.attempt.to_string()).unwrap_or_else(|| "–".into()),
            esc(&evidence),
            x.task_state.map(badge).unwrap_or_else(|| "–".into()),
        );
    }
    s.push_str("</tbody></table>");
}

pub async fn verdicts(State(d): Shared, h: HeaderMap) -> Response {
    if let Err(r) = d.check(&h, Need::Read(None)) {
        return refused(&d, &h, r);
    }
    let mut s = String::from("<h1>Recent verdicts</h1><p>Leases the voters' clocks expired, and successes reported after their lease had ended that the task took: the cases where a scheduler trusting one timeout would have written \"failed\".</p>");
    verdicts_list(
        &mut s,
        &data::verdicts(&d.node, crate::store::VERDICTS_KEPT),
        d.node.clock.unix_ms(),
    );
    page(&d, &h, "Verdicts", 2000, s)
}

pub async fn login(State(d): Shared, h: HeaderMap) -> Response {
    let s = "<h1>Token</h1><form method=\"post\" action=\"/login\"><label>token <input name=\"token\" type=\"password\" autocomplete=\"off\"></label> <button>use</button></form><p class=\"muted\">Kept in a cookie for this site (HttpOnly, SameSite=Strict).</p>".to_string();
    page(&d, &h, "Token", 0, s)
}
