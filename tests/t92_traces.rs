//! Traces end to end: an OTLP receiver in this test process gets the spans of a scheduler's
//! `task submit` (CLI), of the nodes (the follower that forwarded it and the leader that
//! committed it), and of the `leasekeeper worker` process that claimed, ran and reported the
//! task; all of them share the submit's trace id.
mod common;
use common::procs::Procs;
use common::*;
use leasekeeper::proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span: (service.name, span name, trace id in hex).
type Got = (String, String, String);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let id: String = s.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    got.push((service.clone(), s.name, id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_covers_submit_claim_run_and_report_across_processes() {
    let listener = bind_loopback().await;
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let r = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    // Spans are sent every 100 ms instead of every 5 s.
    let env = vec![("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string())];
    let p = Procs::start_with_env(3, &["--otlp-endpoint", &endpoint], vec![env.clone(); 3]);
    let leader = p.wait_leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;

    // The scheduler submits through a follower: it forwards to the leader.
    let (code, out) = cli(&[
        "task",
        "submit",
        "--queue",
        "traced",
        "--id",
        "tr-1",
        "--endpoints",
        &p.addrs[follower],
        "--otlp-endpoint",
        &endpoint,
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let c = p.client();
    let t = c.get("tr-1").await.unwrap();
    assert_eq!(
        t.trace_parent.len(),
        55,
        "the task keeps its submit's trace: {t:?}"
    );
    let trace_id = t.trace_parent[3..35].to_string();

    // A worker process claims it, runs `true`, reports.
    let dir = tempfile::tempdir().unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_leasekeeper"))
        .args(["worker", "--queue", "traced", "--worker-id", "w-tr"])
        .arg("--journal-dir")
        .arg(dir.path())
        .args([
            "--endpoints",
            &p.addrs.join(","),
            "--otlp-endpoint",
            &endpoint,
        ])
        .args(["--", "true"])
        .envs(env.iter().cloned())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the task succeeded", || async {
        let t = c.get("tr-1").await.ok()?;
        (t.state == pb::TaskState::Succeeded as i32).then_some(())
    })
    .await;
    // SIGTERM: the worker drains and exports its last spans before it exits.
    unsafe { libc::kill(worker.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker exits")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let leader_svc = format!("leasekeeper-node-{}", leader + 1);
    let follower_svc = format!("leasekeeper-node-{}", follower + 1);
    let wanted = [
        ("leasekeeper-cli", "task submit"),
        (
            follower_svc.as_str(),
            "/leasekeeper.v1.Scheduler/SubmitTask",
        ),
        (follower_svc.as_str(), "raft.forward"),
        (leader_svc.as_str(), "raft.propose"),
        ("leasekeeper-worker", "task.run"),
        ("", "/leasekeeper.v1.Worker/CompleteTask"),
        ("", "task.claimed"),
    ];
    let got = eventually(Duration::from_secs(20), "every span arrived", || async {
        let got = receiver.0.lock().unwrap().clone();
        let ours: Vec<&Got> = got.iter().filter(|g| g.2 == trace_id).collect();
        wanted
            .iter()
            .all(|(svc, name)| {
                ours.iter()
                    .any(|(s, n, _)| n == name && (svc.is_empty() || s == svc))
            })
            .then_some(got)
    })
    .await;
    let ours: Vec<&Got> = got.iter().filter(|g| g.2 == trace_id).collect();
    let services: std::collections::BTreeSet<&str> =
        ours.iter().map(|(s, _, _)| s.as_str()).collect();
    let nodes = services
        .iter()
        .filter(|s| s.starts_with("leasekeeper-node-"))
        .count();
    eprintln!("{} spans in trace {trace_id}: {ours:?}", ours.len());
    assert!(nodes >= 2, "spans from two nodes in one trace: {ours:#?}");
    assert!(services.contains("leasekeeper-worker"), "{ours:#?}");
    assert!(services.contains("leasekeeper-cli"), "{ours:#?}");
    drop(p);
}
