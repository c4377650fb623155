//! The dashboard's JSON endpoints on a real three-node cluster with an auth file: the roles
//! each needs (the same as the gRPC call's), the token as a bearer header or as the cookie the
//! token form sets, actions refused without their header, clear refusals for bad input, and
//! paging by id prefix that neither skips nor repeats a task.
mod common;
use common::*;
use leasekeeper::auth::{hash_token, AuthFile, Principal};
use leasekeeper::client::Client;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

fn principal(name: &str, grants: &[&str], token: &str) -> Principal {
    Principal {
        name: name.into(),
        grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
        token_sha256: vec![hash_token(token)],
        cert_names: vec![],
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    action: bool,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = Vec::new();
    if let Some(b) = &bearer {
        h.push(("Authorization", b));
    }
    if action {
        h.push(("X-Leasekeeper-Action", "1"));
        h.push(("Content-Type", "application/json"));
    }
    let (code, body) = http_call(addr, method, path, &h, if action { "{}" } else { "" }).await;
    (code, json(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_check_roles_input_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    AuthFile {
        principals: vec![
            principal("root", &["admin"], "tok-admin"),
            principal("airflow", &["scheduler:etl/"], "tok-etl"),
            principal("grafana", &["reader"], "tok-reader"),
        ],
    }
    .write(&file)
    .unwrap();
    let f = file.clone();
    let cluster = Cluster::start_with(3, move |c| c.auth_file = Some(f.clone())).await;
    let admin = Client::new(cluster.addrs.clone())
        .unwrap()
        .with_token("tok-admin")
        .unwrap();
    for i in 0..25 {
        admin
            .submit(submit_req(&format!("job-{i:02}"), "etl/daily", 5_000))
            .await
            .unwrap();
    }
    admin
        .submit(submit_req("ml-1", "ml/train", 5_000))
        .await
        .unwrap();
    let web = &cluster.metrics_addrs[1];

    // No token: UNAUTHENTICATED, saying what to send. /metrics and /health stay open.
    let (code, body) = call(web, "GET", "/api/v1/tasks", None, false).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    assert_eq!(http_get(web, "/metrics").await.0, 200);
    assert_ne!(http_get(web, "/health").await.0, 401);
    // A page without a token is refused too, with the token form.
    let (code, page) = http_get(web, "/tasks").await;
    assert_eq!(code, 401);
    assert!(page.contains("name=\"token\""), "{page}");

    // A reader reads every queue; the cookie works as the bearer header does.
    let (code, body) = call(
        web,
        "GET",
        "/api/v1/tasks?limit=200",
        Some("tok-reader"),
        false,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["tasks"].as_array().unwrap().len(), 26);
    let (code, page) = http_call(
        web,
        "GET",
        "/tasks/ml-1",
        &[("Cookie", "a=b; leasekeeper_token=tok-reader")],
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert!(page.contains("ml/train"), "{page}");
    let (code, body) = call(web, "GET", "/api/v1/tasks/ml-1", Some("tok-reader"), false).await;
    assert_eq!(
        (code, body["queue"].as_str()),
        (200, Some("ml/train")),
        "{body}"
    );

    // A scheduler on etl/ may not read ml/, nor every queue at once.
    let (code, body) = call(web, "GET", "/api/v1/tasks/ml-1", Some("tok-etl"), false).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("airflow"),
        "{body}"
    );
    let (code, _) = call(web, "GET", "/api/v1/verdicts", Some("tok-etl"), false).await;
    assert_eq!(code, 403);
    let (code, body) = call(
        web,
        "GET",
        "/api/v1/tasks?queue=etl/daily",
        Some("tok-etl"),
        false,
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // Actions: the header is required; the reader may not cancel; the scheduler may, on etl/ only.
    let (code, body) = http_call(
        web,
        "POST",
        "/api/v1/tasks/job-00/cancel",
        &[("Authorization", "Bearer tok-etl")],
        "",
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("X-Leasekeeper-Action") || body.contains("x-leasekeeper-action"),
        "{body}"
    );
    let (code, body) = call(
        web,
        "POST",
        "/api/v1/tasks/job-00/cancel",
        Some("tok-reader"),
        true,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scheduler"),
        "{body}"
    );
    let (code, body) = call(
        web,
        "POST",
        "/api/v1/tasks/ml-1/cancel",
        Some("tok-etl"),
        true,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = call(
        web,
        "POST",
        "/api/v1/tasks/job-00/cancel",
        Some("tok-etl"),
        true,
    )
    .await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    let (code, body) = call(
        web,
        "POST",
        "/api/v1/tasks/job-00/retry",
        Some("tok-etl"),
        true,
    )
    .await;
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("pending")),
        "{body}"
    );
    assert_eq!(
        admin.get("job-00").await.unwrap().state,
        leasekeeper::proto::v1::TaskState::Pending as i32
    );

    // Bad input: clear refusals, nothing changed.
    for (path, code) in [
        ("/api/v1/tasks?state=done", 400),
        ("/api/v1/tasks?queue=bad%20queue", 400),
        ("/api/v1/tasks?after=zz", 400),
        ("/api/v1/tasks/no-such-task", 404),
    ] {
        let (got, body) = call(web, "GET", path, Some("tok-admin"), false).await;
        assert_eq!(got, code, "{path}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let long = "x".repeat(300);
    let (got, _) = call(
        web,
        "GET",
        &format!("/api/v1/tasks?prefix={long}"),
        Some("tok-admin"),
        false,
    )
    .await;
    assert_eq!(got, 400);
    let (got, body) = call(
        web,
        "POST",
        "/api/v1/tasks/no-such-task/retry",
        Some("tok-admin"),
        true,
    )
    .await;
    assert_eq!(got, 404, "{body}");

    // Paging by prefix, three at a time, filtered by state: every match once, in id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..50 {
        let path = format!("/api/v1/tasks?prefix=job-&state=pending&limit=3&after={after}");
        let (code, body) = call(web, "GET", &path, Some("tok-admin"), false).await;
        assert_eq!(code, 200, "{body}");
        seen.extend(
            body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        match body["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("job-{i:02}")).collect();
    assert_eq!(seen, want);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 25);

    // The cluster view names every member, each with its dashboard.
    let (code, body) = call(web, "GET", "/api/v1/cluster", Some("tok-reader"), false).await;
    assert_eq!(code, 200);
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert!(m["reachable"].as_bool().unwrap(), "{m}");
        let i = m["node_id"].as_u64().unwrap() as usize - 1;
        assert_eq!(m["http_addr"].as_str().unwrap(), cluster.metrics_addrs[i]);
    }
    let leader = members
        .iter()
        .find(|m| m["role"] == "leader")
        .expect("a leader");
    assert!(leader["commit_index"].as_u64().unwrap() > 0, "{leader}");
    let (code, body) = call(web, "GET", "/api/v1/queues", Some("tok-reader"), false).await;
    assert_eq!(code, 200);
    let etl = body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "etl/daily")
        .unwrap();
    assert_eq!(etl["counts"]["pending"], 25, "{etl}");

    cluster.shutdown().await;
}

/// Reads the event stream at `path` for up to `wait`, until `done` holds for what has come.
async fn read_events(
    addr: &str,
    path: &str,
    wait: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = String::new();
    let mut buf = vec![0u8; 64 << 10];
    while !done(&got) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    got
}

/// A page's live stream starts from the revision after the page's: what was applied between the
/// render and the stream's start is sent, not missed (a task page rendered just before a cancel
/// applied would otherwise never show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_stream_resumes_from_the_pages_revision() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    c.submit(submit_req("seen-late", "q", 5_000)).await.unwrap();
    c.cancel("seen-late", "test").await.unwrap();
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let web = &cluster.metrics_addrs[leader];
    let wanted = |t: &str| t.contains("event: tasks") && t.contains("\"cancelled\"");
    let from_page = read_events(
        web,
        "/api/v1/watch?task_id=seen-late&from_revision=1",
        Duration::from_secs(5),
        wanted,
    )
    .await;
    assert!(wanted(&from_page), "{from_page}");
    assert!(from_page.contains("seen-late"), "{from_page}");
    // From now on: nothing happened since, so nothing comes.
    let from_now = read_events(
        web,
        "/api/v1/watch?task_id=seen-late",
        Duration::from_millis(700),
        |t| t.contains("event:"),
    )
    .await;
    assert!(!from_now.contains("event: tasks"), "{from_now}");
}
