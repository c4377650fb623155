use super::*;

#[test]
fn queues_past_the_cap_share_one_series() {
    let m = NodeMetrics::new(1, 2);
    m.event(EventKind::Submitted, "a");
    m.event(EventKind::Submitted, "b");
    m.event(EventKind::Submitted, "c");
    m.event(EventKind::Submitted, "d");
    m.event(EventKind::Submitted, "a");
    let text = m.encode();
    assert!(
        text.contains(r#"leasekeeper_tasks_submitted_total{node="1",queue="a"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"leasekeeper_tasks_submitted_total{node="1",queue="b"} 1"#));
    assert!(text.contains(r#"leasekeeper_tasks_submitted_total{node="1",queue="(other)"} 2"#));
    assert!(!text.contains(r#"queue="c""#));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn task_counts_replace_the_last_ones() {
    let m = NodeMetrics::new(1, 8);
    let q: Name = "q".into();
    m.set_task_counts([(&q, &[3, 1, 0, 0, 0])].into_iter());
    m.set_task_counts([(&q, &[2, 2, 0, 0, 0])].into_iter());
    let text = m.encode();
    assert!(
        text.contains(r#"leasekeeper_tasks{node="1",queue="q",state="PENDING"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"leasekeeper_tasks{node="1",queue="q",state="RUNNING"} 2"#));
}
