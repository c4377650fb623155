//! openraft's own storage test suite against the segment log store and the state machine store.
use leasekeeper::clock::SystemClock;
use leasekeeper::raft::{StorageError, TypeConfig};
use leasekeeper::store::{self, LogStore, Shared, StateMachineStore};
use openraft::testing::{StoreBuilder, Suite};
use std::sync::Arc;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = Arc::new(Shared::new(
            Arc::new(SystemClock::default()),
            1000,
            1 << 20,
            64,
        ));
        let (log, sm) = store::open(dir.path(), shared)?;
        // The suite purges logs that no snapshot covers, to test the log store alone; a node's
        // log waits for the snapshot (tests of that gate: `store::tests`, t43_kill_anywhere).
        Ok((dir, log.purge_any_time(), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
