//! Our sled-backed log store and state machine pass openraft's storage conformance suite.

use custos_raft::store::{self, LogStore, StateMachineStore};
use custos_raft::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (log, sm, _reader) =
            store::open(dir.path(), custos_raft::store::StoreOptions::default()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledBuilder).expect("storage conformance suite");
}
