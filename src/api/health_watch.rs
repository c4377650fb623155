//! `grpc.health.v1` follows the Raft core: a node whose core has stopped (a storage error, a
//! fatal bug) answers NOT_SERVING for every service, and says why in its log, instead of
//! accepting calls that can only time out.
use crate::node::Node;
use crate::proto::v1;
use std::sync::Arc;
use tonic_health::server::HealthReporter;

pub async fn watch_raft(node: Arc<Node>, mut health: HealthReporter) {
    let mut rx = node.raft.metrics();
    let mut stop = node.shutdown_signal();
    loop {
        let stopped = {
            let m = rx.borrow();
            m.running_state.as_ref().err().map(|e| e.to_string())
        };
        if let Some(why) = stopped {
            let stopping = *stop.borrow();
            if stopping {
                return;
            }
            tracing::error!(
                id = node.id,
                reason = %why,
                "the Raft core has stopped: this node answers NOT_SERVING until it is restarted"
            );
            set_not_serving(&mut health).await;
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                let stopping = *node.shutdown_signal().borrow();
                if !stopping {
                    tracing::error!(id = node.id, "the Raft core has gone: this node answers NOT_SERVING until it is restarted");
                    set_not_serving(&mut health).await;
                }
                return;
            },
            _ = stop.changed() => return,
        }
    }
}

async fn set_not_serving(health: &mut HealthReporter) {
    use tonic_health::ServingStatus::NotServing;
    health.set_service_status("", NotServing).await;
    health
        .set_not_serving::<v1::scheduler_server::SchedulerServer<super::scheduler::SchedulerSvc>>()
        .await;
    health
        .set_not_serving::<v1::worker_server::WorkerServer<super::worker::WorkerSvc>>()
        .await;
    health
        .set_not_serving::<v1::admin_server::AdminServer<super::admin::AdminSvc>>()
        .await;
}
