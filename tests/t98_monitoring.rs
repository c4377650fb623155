//! The ready-made monitoring in `deploy/` and its documentation stay true to what a node
//! exports: every metric the alert rules, the Grafana dashboard and docs/OPERATIONS.md name is a
//! family a real node (or worker) serves, every family served is documented, and the alert
//! rules pass `promtool check rules` and their own unit tests (`promtool test rules`).
mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The families declared in an OpenMetrics text (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `leasekeeper_...` name in `text`, as the family it belongs to.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("leasekeeper_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_docs_name_only_what_nodes_and_workers_export() {
    let cluster = Cluster::start(1).await;
    let (code, text) = http_get(&cluster.metrics_addrs[0], "/metrics").await;
    assert_eq!(code, 200);
    let mut exported = families(&text);
    let worker = families(&leasekeeper::metrics::WorkerMetrics::default().encode());
    assert!(worker.len() >= 7, "{worker:?}");
    exported.extend(worker);
    assert!(exported.len() >= 40, "{exported:?}");

    let docs = read("docs/OPERATIONS.md");
    for (file, text) in [
        (
            "deploy/prometheus/alerts.yml",
            read("deploy/prometheus/alerts.yml"),
        ),
        (
            "deploy/grafana/leasekeeper.json",
            read("deploy/grafana/leasekeeper.json"),
        ),
        ("docs/OPERATIONS.md", docs.clone()),
    ] {
        let unknown: Vec<_> = names_in(&text)
            .into_iter()
            .filter(|n| !exported.contains(n) && n != "leasekeeper")
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no node exports: {unknown:?}"
        );
    }
    let documented = names_in(&docs);
    let missing: Vec<_> = exported
        .iter()
        .filter(|f| !documented.contains(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/OPERATIONS.md does not list {missing:?}"
    );

    // The dashboard is valid JSON with a query in every panel that is not a row.
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/leasekeeper.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() > 20);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].is_string()),
            "{p}"
        );
    }
    cluster.shutdown().await;
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["check", "config", "prometheus.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool: {e}: apt-get install prometheus (it ships promtool)")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The alerts operators watch for are all there, each with a unit test.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for alert in [
        "LeasekeeperNoLeader",
        "LeasekeeperLeaderChurn",
        "LeasekeeperReportLatencyHigh",
        "LeasekeeperFsyncSlow",
        "LeasekeeperClockOff",
        "LeasekeeperLateSuccessesRising",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
        let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}
