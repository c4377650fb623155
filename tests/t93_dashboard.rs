//! The dashboard in a real headless Chromium against a real three-node cluster: the page names
//! the leader; a task submitted through the API appears in the list without a reload; a task's
//! page tells its story after a claim, an expiry, a second claim and a late success (voters
//! with their silence, the attempt it stopped); cancel and retry work from the page; killing
//! the node the browser is on shows a banner there while another node's pages keep working.
//! Screenshots of the main views are written under target/screenshots.
mod common;
use common::browser::Browser;
use common::*;
use fantoccini::Locator;
use leasekeeper::proto::v1 as pb;
use std::time::{Duration, Instant};

const TTL_MS: u64 = 1_500;
const SECOND: Duration = Duration::from_secs(1);

fn url(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_in_a_real_browser() {
    let mut cluster = Cluster::start(3).await;
    let c = cluster.client();
    let leader = cluster.wait_leader(Duration::from_secs(10)).await as u64 + 1;
    let b = Browser::start().await;
    let web = cluster.metrics_addrs[0].clone();

    // Some history for the views: finished tasks in two queues, and a lease left running.
    for i in 0..6 {
        let q = if i % 2 == 0 { "etl" } else { "ml" };
        c.submit(submit_req(&format!("done-{i}"), q, 5_000))
            .await
            .unwrap();
        let r = c
            .claim(claim_task_req(q, "worker-a", &format!("done-{i}")))
            .await
            .unwrap();
        let l = r.lease.as_ref().unwrap();
        c.renew(l.token, &r.lease_secret).await.unwrap();
        c.complete(pb::CompleteTaskRequest {
            exit_to_send_us: 2_000,
            report_try: 1,
            ..success(&format!("done-{i}"), l.token, &r.lease_secret)
        })
        .await
        .unwrap();
    }
    c.submit(submit_req("long-running", "etl", 60_000))
        .await
        .unwrap();
    let running = c
        .claim(claim_task_req("etl", "worker-b", "long-running"))
        .await
        .unwrap();

    // 1. The overview names the leader.
    b.c.goto(&url(&web, "/")).await.unwrap();
    let named = b.text_of("#leader", SECOND * 5).await;
    assert_eq!(
        named,
        format!("node {leader}"),
        "the header names the leader"
    );
    let members = b.text_of("#members", SECOND).await;
    assert!(members.contains("leader"), "{members}");
    b.screenshot("overview").await;

    // 2. A task submitted through the API appears in the list without a reload, within a second.
    b.c.goto(&url(&web, "/tasks")).await.unwrap();
    b.text_of("#tasks", SECOND * 5).await;
    // Give the page's live stream a moment to open before the submit.
    b.until(
        "return document.body.dataset.live === 'open'",
        SECOND * 5,
        "the live stream opened",
        |v| v == &serde_json::json!(true),
    )
    .await;
    b.c.execute("window.notReloaded = true", vec![])
        .await
        .unwrap();
    let silent_id = "story-1";
    c.submit(submit_req(silent_id, "etl", TTL_MS))
        .await
        .unwrap();
    let submitted = Instant::now();
    b.until(
        &format!("return !!document.querySelector('tr[data-id=\"{silent_id}\"]')"),
        SECOND,
        "the new task appears in the list",
        |v| v == &serde_json::json!(true),
    )
    .await;
    eprintln!("the new task appeared after {:?}", submitted.elapsed());
    let kept =
        b.c.execute("return window.notReloaded === true", vec![])
            .await
            .unwrap();
    assert_eq!(kept, serde_json::json!(true), "the page was not reloaded");
    b.screenshot("tasks").await;

    // 3. Claim, silence until the voters expire the lease, claim again, then the first
    //    attempt's success arrives late: a late success that stops the second attempt.
    let first = c
        .claim(claim_task_req("etl", "worker-silent", silent_id))
        .await
        .unwrap();
    let first_token = first.lease.as_ref().unwrap().token;
    eventually(
        Duration::from_secs(10),
        "the silent lease expired",
        || async {
            let t = c.get(silent_id).await.unwrap();
            (t.state == pb::TaskState::Pending as i32).then_some(())
        },
    )
    .await;
    let second = c
        .claim(claim_task_req("etl", "worker-next", silent_id))
        .await
        .unwrap();
    let second_token = second.lease.as_ref().unwrap().token;
    let late = c
        .complete(pb::CompleteTaskRequest {
            exit_to_send_us: 1_000,
            report_try: 1,
            ..success(silent_id, first_token, &first.lease_secret)
        })
        .await
        .unwrap();
    assert!(late.late);
    let t = c.get(silent_id).await.unwrap();
    let evidence = &t.history[0].expiry_evidence;
    assert!(evidence.len() >= 2, "a majority of voters decided: {t:#?}");

    b.c.goto(&url(&web, &format!("/tasks/{silent_id}")))
        .await
        .unwrap();
    let story = b.text_of("#story", SECOND * 5).await;
    assert!(
        story.contains("reported success after its lease had ended"),
        "{story}"
    );
    let attempts = b.text_of("#attempts", SECOND).await;
    let first_row = b
        .text_of(
            &format!("#attempts tr[data-token=\"{first_token}\"]"),
            SECOND,
        )
        .await;
    assert!(first_row.contains("worker-silent"), "{first_row}");
    assert!(first_row.contains("late success"), "{first_row}");
    assert!(
        first_row.contains(&format!("stopped the attempt holding lease {second_token}")),
        "{first_row}"
    );
    for v in evidence {
        let said = format!("node {} after ", v.node_id);
        assert!(
            first_row.contains(&said),
            "voter {} is named with its silence: {first_row}",
            v.node_id
        );
    }
    let second_row = b
        .text_of(
            &format!("#attempts tr[data-token=\"{second_token}\"]"),
            SECOND,
        )
        .await;
    assert!(second_row.contains("worker-next"), "{attempts}");
    assert!(
        second_row.contains(&format!(
            "stopped by the late success of lease {first_token}"
        )),
        "{second_row}"
    );
    b.screenshot("task").await;

    // The verdicts page holds the expiry and the late success.
    b.c.goto(&url(&web, "/verdicts")).await.unwrap();
    let verdicts = b.text_of("table.verdicts", SECOND * 5).await;
    assert!(
        verdicts.contains("lease expired") && verdicts.contains("late success accepted"),
        "{verdicts}"
    );
    assert!(verdicts.contains(silent_id), "{verdicts}");
    b.screenshot("verdicts").await;

    // Running now: the long lease, with its worker.
    b.c.goto(&url(&web, "/running")).await.unwrap();
    let leases = b.text_of("table.leases", SECOND * 5).await;
    assert!(
        leases.contains("long-running") && leases.contains("worker-b"),
        "{leases}"
    );
    b.screenshot("running").await;

    // 4. Cancel from the task's page (two clicks: arm, confirm), then retry it.
    c.submit(submit_req("to-cancel", "ml", 5_000))
        .await
        .unwrap();
    b.c.goto(&url(&web, "/tasks/to-cancel")).await.unwrap();
    let button =
        b.c.wait()
            .at_most(SECOND * 5)
            .for_element(Locator::Css("button[data-action=cancel]"))
            .await
            .unwrap();
    button.click().await.unwrap();
    assert_eq!(button.text().await.unwrap(), "Confirm cancel");
    button.click().await.unwrap();
    eventually(Duration::from_secs(5), "the task is cancelled", || async {
        let t = c.get("to-cancel").await.unwrap();
        (t.state == pb::TaskState::Cancelled as i32).then_some(())
    })
    .await;
    let retry =
        b.c.wait()
            .at_most(SECOND * 5)
            .for_element(Locator::Css("button[data-action=retry]"))
            .await
            .unwrap();
    retry.click().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the task is pending again",
        || async {
            let t = c.get("to-cancel").await.unwrap();
            (t.state == pb::TaskState::Pending as i32).then_some(())
        },
    )
    .await;

    // 5. Kill the node the browser is on: its page says so; another node's pages work.
    b.c.goto(&url(&web, "/")).await.unwrap();
    b.text_of("#leader", SECOND * 5).await;
    b.until(
        "return JSON.parse(sessionStorage.getItem('lk-peers') || '[]').length",
        SECOND * 10,
        "the page learned the other members",
        |v| v.as_u64() == Some(2),
    )
    .await;
    cluster.stop(0).await;
    let banner = b
        .until(
            "const g = document.getElementById('gone'); return g.hidden ? '' : g.textContent",
            SECOND * 10,
            "the page shows its node is gone",
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    let banner = banner.as_str().unwrap().to_string();
    assert!(banner.contains("Node 1 is not answering"), "{banner}");
    assert!(
        banner.contains(&cluster.metrics_addrs[1]),
        "it links the others: {banner}"
    );
    b.screenshot("node-gone").await;

    let other = cluster.metrics_addrs[1].clone();
    b.c.goto(&url(&other, "/")).await.unwrap();
    b.until(
        "const l = document.getElementById('leader'); return l ? l.textContent : ''",
        SECOND * 15,
        "the other node's page names a leader",
        |v| {
            v.as_str()
                .is_some_and(|s| s.starts_with("node ") && s != "node 1")
        },
    )
    .await;
    let members = b.text_of("#members", SECOND).await;
    assert!(
        members.contains("no"),
        "node 1 is shown unreachable: {members}"
    );
    b.c.goto(&url(&other, &format!("/tasks/{silent_id}")))
        .await
        .unwrap();
    let story = b.text_of("#story", SECOND * 5).await;
    assert!(
        story.contains("reported success after its lease had ended"),
        "{story}"
    );

    drop(running);
    b.close().await;
    cluster.shutdown().await;
}
