//! Authenticated clients with roles on a real three-node cluster sharing one auth file: every
//! role (and no credentials, and an unknown token) tried against every service, with the codes
//! expected; a worker limited to `etl/` cannot claim from `ml/`; a token revoked with
//! `leasekeeper auth revoke` stops working on every node within a second; health stays open.
mod common;
use common::*;
use leasekeeper::auth::{hash_token, AuthFile, Principal};
use leasekeeper::client::Client;
use leasekeeper::proto::v1 as pb;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

/// Every call of the public API but health, by name.
const CALLS: [&str; 13] = [
    "submit", "get", "list", "list-all", "cancel", "watch", "claim", "claim-ml", "renew",
    "progress", "complete", "release", "status",
];
const ADMIN_CALLS: [&str; 2] = ["add-node", "remove-node"];

/// The code of an answer (OK for any success).
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// Makes call `name` (on queue etl/ unless it says otherwise); returns its code.
async fn try_call(c: &Client, name: &str) -> Code {
    let bogus = [7u8; 16];
    let on = |queue: &str| (queue.to_string(), "w".to_string());
    let claim = |(queue, worker_id)| pb::ClaimTaskRequest {
        queue,
        worker_id,
        ..Default::default()
    };
    let list = pb::ListTasksRequest {
        queue: "etl/daily".into(),
        ..Default::default()
    };
    let watch = pb::WatchTasksRequest {
        queue: "etl/daily".into(),
        ..Default::default()
    };
    match name {
        "submit" => code(c.submit(submit_req("", "etl/daily", 3000)).await),
        "get" => code(c.get("seed").await),
        "list" => code(c.list(list).await),
        "list-all" => code(c.list(pb::ListTasksRequest::default()).await),
        "cancel" => code(c.cancel("no-such-task", "r").await),
        "watch" => code(c.watch(watch).await),
        "claim" => code(c.claim(claim(on("etl/none"))).await),
        "claim-ml" => code(c.claim(claim(on("ml/train"))).await),
        "renew" => code(c.renew(999_999, &bogus).await),
        "progress" => code(c.progress(999_999, &bogus, b"p".to_vec()).await),
        "complete" => code(c.complete(success("seed", 999_999, &bogus)).await),
        "release" => code(c.release(999_999, &bogus, "r").await),
        "status" => code(c.cluster_status().await),
        // Node id 0 is refused after the role check: reaching INVALID_ARGUMENT means allowed.
        "add-node" => code(c.add_node(0, "127.0.0.1:1", true).await),
        "remove-node" => code(c.remove_node(0).await),
        _ => unreachable!(),
    }
}

/// Whether role set `who` may make call `name`.
fn allowed(who: &str, name: &str) -> bool {
    match who {
        "admin" => true,
        // scheduler:etl/ — submit, get, list, cancel, watch on etl/; list of every queue is
        // beyond its grant; status.
        "scheduler" => matches!(
            name,
            "submit" | "get" | "list" | "cancel" | "watch" | "status"
        ),
        // worker:etl/ — claims on etl/, every lease call, status.
        "worker" => matches!(
            name,
            "claim" | "renew" | "progress" | "complete" | "release" | "status"
        ),
        // reader (every queue) — get, list, watch, status.
        "reader" => matches!(name, "get" | "list" | "list-all" | "watch" | "status"),
        _ => false,
    }
}

fn principal(name: &str, grants: &[&str], token: &str) -> Principal {
    Principal {
        name: name.into(),
        grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
        token_sha256: vec![hash_token(token)],
        cert_names: vec![],
    }
}

async fn auth_cluster(file: &Path) -> Cluster {
    AuthFile {
        principals: vec![
            principal("root", &["admin"], "tok-admin"),
            principal("airflow", &["scheduler:etl/"], "tok-scheduler"),
            principal("etl-workers", &["worker:etl/"], "tok-worker"),
            principal("grafana", &["reader"], "tok-reader"),
        ],
    }
    .write(file)
    .unwrap();
    let f = file.to_path_buf();
    Cluster::start_with(3, move |c| c.auth_file = Some(f.clone())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_against_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = auth_cluster(&dir.path().join("auth.toml")).await;
    let admin = cluster.client().with_token("tok-admin").unwrap();
    admin
        .submit(submit_req("seed", "etl/daily", 3000))
        .await
        .unwrap();

    let mut wrong = Vec::new();
    for who in [
        "admin",
        "scheduler",
        "worker",
        "reader",
        "nobody",
        "unknown",
    ] {
        let c = match who {
            "nobody" => cluster.client(),
            "unknown" => cluster.client().with_token("tok-forged").unwrap(),
            _ => cluster.client().with_token(&format!("tok-{who}")).unwrap(),
        };
        let c = c.with_retry_for(Duration::from_secs(2));
        for name in CALLS.iter().chain(&ADMIN_CALLS) {
            let got = try_call(&c, name).await;
            let want_ok = allowed(who, name);
            let fine = match who {
                "nobody" | "unknown" => got == Code::Unauthenticated,
                _ if want_ok => !matches!(got, Code::Unauthenticated | Code::PermissionDenied),
                _ => got == Code::PermissionDenied,
            };
            if !fine {
                wrong.push(format!("{who} {name}: {got:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");

    // The message names the role and the queue needed, and never the token.
    let worker = cluster.client().with_token("tok-worker").unwrap();
    let e = worker
        .claim(pb::ClaimTaskRequest {
            queue: "ml/train".into(),
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("worker role on queue \"ml/train\""),
        "{e:?}"
    );
    assert!(!e.message().contains("tok-worker"));
    // A worker of etl/ runs an etl/ task to the end.
    let claim = worker
        .claim(pb::ClaimTaskRequest {
            queue: "etl/daily".into(),
            worker_id: "w".into(),
            task_id: "seed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let lease = claim.lease.unwrap();
    worker
        .complete(success("seed", lease.token, &claim.lease_secret))
        .await
        .unwrap();
    assert_eq!(
        admin.get("seed").await.unwrap().state,
        pb::TaskState::Succeeded as i32
    );

    // Health needs no credentials.
    assert_eq!(
        health_of(&cluster.addrs[0]).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_stops_working_on_every_node_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let cluster = auth_cluster(&file).await;
    let on = |i: usize| cluster.client_of(i).with_token("tok-scheduler").unwrap();
    for i in 0..3 {
        on(i)
            .get("missing")
            .await
            .expect_err("not found, but allowed");
        assert_eq!(
            on(i).get("missing").await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leasekeeper"))
        .args(["auth", "revoke", "--name", "airflow", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    for i in 0..3 {
        loop {
            let code = on(i).get("missing").await.unwrap_err().code();
            if code == Code::Unauthenticated {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "node {} still takes the revoked token after {:?}",
                i + 1,
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The others' tokens still work; the file never held a token in the clear.
    cluster
        .client()
        .with_token("tok-reader")
        .unwrap()
        .get("missing")
        .await
        .unwrap_err();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("tok-") && text.contains(&hash_token("tok-reader")));
    cluster.shutdown().await;
}

#[test]
fn auth_add_prints_a_token_once_and_stores_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_leasekeeper"))
            .args(args)
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run(&[
        "auth",
        "add",
        "--name",
        "etl",
        "--grant",
        "worker:etl/",
        "--grant",
        "reader",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("lk_") && token.len() > 60);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&token) && text.contains(&hash_token(&token)));
    let list = run(&["auth", "list"]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("etl\tworker:etl/ reader\ttokens=1"), "{list}");
    let bad = run(&["auth", "add", "--name", "x", "--grant", "root"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_can_name_the_principal() {
    use common::certs::Ca;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let port = ca.issue(dir.path(), "port", &["127.0.0.1"]);
    let workers = ca.issue(dir.path(), "etl-workers", &["etl-workers.clients"]);
    let stranger = ca.issue(dir.path(), "stranger", &["stranger.clients"]);
    let file = dir.path().join("auth.toml");
    let mut p = principal("etl-workers", &["worker:etl/"], "unused-token");
    p.cert_names = vec!["etl-workers.clients".into()];
    AuthFile {
        principals: vec![p],
    }
    .write(&file)
    .unwrap();
    let (f, caf) = (file.clone(), ca.pem.clone());
    let cluster = Cluster::start_with(3, move |c| {
        c.auth_file = Some(f.clone());
        c.cert_file = Some(port.cert.clone());
        c.key_file = Some(port.key.clone());
        c.trusted_ca_file = Some(caf.clone());
        c.client_cert_auth = true;
    })
    .await;
    let with_cert = |who: &common::certs::Issued| {
        Client::with_tls(
            cluster.addrs.clone(),
            &leasekeeper::tls::ClientTlsFiles {
                ca_file: Some(ca.pem.clone()),
                cert_file: Some(who.cert.clone()),
                key_file: Some(who.key.clone()),
            },
        )
        .unwrap()
        .with_retry_for(Duration::from_secs(2))
    };
    // No token: the certificate names the principal, and its grants apply.
    let claim = |c: Client, queue: &'static str| async move {
        c.claim(pb::ClaimTaskRequest {
            queue: queue.into(),
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| s.code())
    };
    assert_eq!(claim(with_cert(&workers), "etl/x").await, Ok(()));
    assert_eq!(
        claim(with_cert(&workers), "ml/x").await,
        Err(Code::PermissionDenied)
    );
    // A certificate of the right CA that names no principal: unauthenticated.
    assert_eq!(
        claim(with_cert(&stranger), "etl/x").await,
        Err(Code::Unauthenticated)
    );
    cluster.shutdown().await;
}
