//! TLS on both ports of a real three-node cluster, with certificates this test makes: a task's
//! whole life through the Rust client, the CLI and `leasekeeper run`; plaintext refused on a TLS
//! port; a peer whose certificate comes from another CA, or names a non-member, refused; and a
//! certificate renewed on disk used by the next connections without a restart.
mod common;
use common::certs::{Ca, Issued};
use common::*;
use leasekeeper::node::TEST_CLUSTER_SECRET;
use leasekeeper::proto::raft_v1::{raft_client::RaftClient, RaftMessage};
use leasekeeper::proto::v1 as pb;
use leasekeeper::raft::peer_auth::PeerKey;
use leasekeeper::tls::ClientTlsFiles;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The CA, every node's client-port and peer certificates, in `dir`.
struct Pki {
    ca: Ca,
    client_port: Issued,
    peers: Vec<Issued>,
}

fn pki(dir: &Path) -> Pki {
    let ca = Ca::new(dir, "cluster-ca");
    let client_port = ca.issue(dir, "client-port", &["127.0.0.1", "localhost"]);
    let peers = (1..=3)
        .map(|id| {
            let name = leasekeeper::tls::member_name(id, "leasekeeper");
            ca.issue(dir, &format!("peer-{id}"), &["127.0.0.1", &name])
        })
        .collect();
    Pki {
        ca,
        client_port,
        peers,
    }
}

async fn tls_cluster(dir: &Path) -> (Cluster, Pki) {
    let p = pki(dir);
    let (ca, client_port, peers) = (p.ca.pem.clone(), p.client_port.clone(), p.peers.clone());
    let cluster = Cluster::start_with(3, move |c| {
        c.cert_file = Some(client_port.cert.clone());
        c.key_file = Some(client_port.key.clone());
        let me = &peers[c.id as usize - 1];
        c.peer_cert_file = Some(me.cert.clone());
        c.peer_key_file = Some(me.key.clone());
        c.peer_trusted_ca_file = Some(ca.clone());
        c.peer_client_cert_auth = true;
    })
    .await;
    (cluster, p)
}

fn trusting(ca: &Path) -> ClientTlsFiles {
    ClientTlsFiles {
        ca_file: Some(ca.to_path_buf()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_runs_tasks_for_every_client_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, p) = tls_cluster(dir.path()).await;
    let c =
        leasekeeper::client::Client::with_tls(cluster.addrs.clone(), &trusting(&p.ca.pem)).unwrap();

    // The Rust client: submit, claim, renew, complete.
    c.submit(submit_req("tls-1", "q", 3000)).await.unwrap();
    let claim = c.claim(claim_req("q", "w1")).await.unwrap();
    let lease = claim.lease.expect("a lease");
    c.renew(lease.token, &claim.lease_secret).await.unwrap();
    c.complete(success("tls-1", lease.token, &claim.lease_secret))
        .await
        .unwrap();
    assert_eq!(
        c.get("tls-1").await.unwrap().state,
        pb::TaskState::Succeeded as i32
    );

    // The CLI, over TLS: submit, read back, cluster status.
    let eps = cluster.addrs.join(",");
    let ca = p.ca.pem.to_str().unwrap();
    let base = ["--endpoints", &eps, "--cacert", ca];
    let (code, out) = cli(&[
        &["task", "submit", "--queue", "q", "--id", "tls-cli"][..],
        &base,
    ]
    .concat())
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&[&["task", "get", "tls-cli", "--json"][..], &base].concat()).await;
    assert!(code == 0 && out.contains("tls-cli"), "{out}");
    let (code, out) = cli(&[&["status"][..], &base].concat()).await;
    assert!(code == 0 && out.contains("leader"), "{out}");

    // `leasekeeper run`, over TLS: the job runs and is recorded SUCCEEDED.
    let journal = dir.path().join("journal");
    let (code, out) = cli(&[
        &[
            "run",
            "--queue",
            "cron",
            "--task-id",
            "tls-run",
            "--ttl-ms",
            "2000",
        ][..],
        &base,
        &[
            "--journal-dir",
            journal.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo done",
        ],
    ]
    .concat())
    .await;
    assert_eq!(code, 0, "{out}");
    let t = c.get("tls-run").await.unwrap();
    assert_eq!(t.state, pb::TaskState::Succeeded as i32, "{t:#?}");

    // Plaintext on a TLS port: refused, and nothing is served.
    let plain = leasekeeper::client::Client::new([cluster.addrs[0].clone()])
        .unwrap()
        .with_retry_for(Duration::from_millis(300));
    assert!(plain.get("tls-1").await.is_err());
    // A client that does not trust the cluster's CA: refused.
    let stranger_ca = Ca::new(dir.path(), "stranger-ca");
    let wrong = leasekeeper::client::Client::with_tls(
        [cluster.addrs[0].clone()],
        &trusting(&stranger_ca.pem),
    )
    .unwrap()
    .with_retry_for(Duration::from_millis(300));
    assert!(wrong.get("tls-1").await.is_err());
    cluster.shutdown().await;
}

/// A Raft client on a peer port with `identity` as its client certificate.
async fn peer_client(
    addr: &str,
    ca: &Path,
    identity: &Issued,
) -> Result<RaftClient<Channel>, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(&identity.cert).unwrap(),
            std::fs::read(&identity.key).unwrap(),
        ));
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(RaftClient::new(ch))
}

/// A status call signed as `member` with the cluster's secret.
async fn status_as(c: &mut RaftClient<Channel>, member: u64) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(RaftMessage {
        data: Vec::new().into(),
    });
    PeerKey::new("leasekeeper", TEST_CLUSTER_SECRET.as_bytes()).sign(member, req.metadata_mut());
    c.status(req).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_must_show_a_certificate_of_the_cluster_ca_naming_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, p) = tls_cluster(dir.path()).await;
    let peer_port = cluster.peer_addrs[0].clone();

    // Member 2's own certificate, and the secret: answered.
    let mut ok = peer_client(&peer_port, &p.ca.pem, &p.peers[1])
        .await
        .unwrap();
    status_as(&mut ok, 2).await.expect("a member is answered");

    // The right secret, but a certificate of the same CA naming a node that is no member
    // (node-9), or naming another member than the one the call claims to be: refused.
    let outsider =
        p.ca.issue(dir.path(), "peer-9", &["127.0.0.1", "node-9.leasekeeper"]);
    let mut c = peer_client(&peer_port, &p.ca.pem, &outsider).await.unwrap();
    let e = status_as(&mut c, 2).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("does not name member 2"), "{e:?}");
    let mut c = peer_client(&peer_port, &p.ca.pem, &p.peers[2])
        .await
        .unwrap();
    let e = status_as(&mut c, 2).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // A certificate from another CA naming a member: the handshake fails, nothing is served.
    let other_ca = Ca::new(dir.path(), "other-ca");
    let forged = other_ca.issue(dir.path(), "forged-2", &["127.0.0.1", "node-2.leasekeeper"]);
    match peer_client(&peer_port, &p.ca.pem, &forged).await {
        Err(_) => {}
        Ok(mut c) => assert!(
            status_as(&mut c, 2).await.is_err(),
            "a foreign CA's certificate was accepted"
        ),
    }
    // No certificate at all: refused as well.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&p.ca.pem).unwrap()));
    if let Ok(ch) = Channel::from_shared(format!("https://{peer_port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        assert!(status_as(&mut RaftClient::new(ch), 2).await.is_err());
    }
    // The refusals were counted, and the cluster still commits.
    assert!(cluster.servers[0].as_ref().unwrap().node().refusals.total() >= 2);
    let c =
        leasekeeper::client::Client::with_tls(cluster.addrs.clone(), &trusting(&p.ca.pem)).unwrap();
    c.submit(submit_req("after", "q", 3000)).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_renewed_on_disk_is_used_by_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(dir.path(), "old-ca");
    let port = old_ca.issue(dir.path(), "client-port", &["127.0.0.1"]);
    let files = port.clone();
    let cluster = Cluster::start_with(1, move |c| {
        c.cert_file = Some(files.cert.clone());
        c.key_file = Some(files.key.clone());
    })
    .await;
    let connect = |ca: &Path| {
        leasekeeper::client::Client::with_tls(cluster.addrs.clone(), &trusting(ca))
            .unwrap()
            .with_retry_for(Duration::from_millis(300))
    };
    connect(&old_ca.pem)
        .submit(submit_req("before", "q", 3000))
        .await
        .unwrap();

    // The certificate is renewed by a new CA, in place (same paths); the node is not told.
    let new_ca = Ca::new(dir.path(), "new-ca");
    new_ca.issue(dir.path(), "client-port", &["127.0.0.1"]);
    eventually(
        Duration::from_secs(10),
        "a new connection gets the renewed certificate",
        || {
            let c = connect(&new_ca.pem);
            async move { c.get("before").await.ok() }
        },
    )
    .await;
    assert!(
        connect(&old_ca.pem).get("before").await.is_err(),
        "new connections no longer get the old certificate"
    );
    // A renewal that does not load (a truncated key) keeps the last good one.
    std::fs::write(&port.key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
    tokio::time::sleep(leasekeeper::tls::RELOAD_CHECK * 2).await;
    connect(&new_ca.pem)
        .get("before")
        .await
        .expect("the last good certificate is kept");
    cluster.shutdown().await;
}

/// A base port with `n` free consecutive ports after it on 127.0.0.1.
fn free_run(n: u16) -> u16 {
    for _ in 0..100 {
        let base = 20_000 + rand::random::<u16>() % 40_000;
        let held: Vec<_> = (0..n)
            .map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no {n} free consecutive ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_secure_starts_a_secure_cluster_and_prints_what_a_client_needs() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let base = free_run(6);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_leasekeeper"))
        .args(["dev", "--secure", "--base-port", &base.to_string()])
        .args(["--peer-base-port", &(base + 3).to_string(), "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ca, mut token) = (String::new(), String::new());
    let mut endpoints = String::new();
    let read = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(e) = l.strip_prefix("endpoints: ") {
                endpoints = e.to_string();
            }
            if let Some(rest) = l.trim().strip_prefix("export ") {
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("LEASEKEEPER_CACERT", v)) => ca = v.to_string(),
                        Some(("LEASEKEEPER_TOKEN", v)) => token = v.to_string(),
                        _ => {}
                    }
                }
            }
            if l.starts_with("try:") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("dev prints its settings");
    assert!(
        !ca.is_empty() && token.starts_with("lk_"),
        "ca={ca} token={token}"
    );
    let c = leasekeeper::client::Client::with_tls(endpoints.split(','), &trusting(Path::new(&ca)))
        .unwrap()
        .with_token(&token)
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the secure dev cluster answers",
        || {
            let c = c.clone();
            async move { c.submit(submit_req("dev-1", "demo", 3000)).await.ok() }
        },
    )
    .await;
    // Without the token, or in plaintext: refused.
    let anonymous =
        leasekeeper::client::Client::with_tls(endpoints.split(','), &trusting(Path::new(&ca)))
            .unwrap()
            .with_retry_for(Duration::from_millis(300));
    assert_eq!(
        anonymous.get("dev-1").await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let plain = leasekeeper::client::Client::new(endpoints.split(','))
        .unwrap()
        .with_retry_for(Duration::from_millis(300));
    assert!(plain.get("dev-1").await.is_err());
    // The CLI with the printed settings.
    let (code, out) = cli(&[
        "status",
        "--endpoints",
        &endpoints,
        "--cacert",
        &ca,
        "--token",
        &token,
    ])
    .await;
    assert!(code == 0 && out.contains("leader"), "{out}");
    child.kill().await.unwrap();
}
