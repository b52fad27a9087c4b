//! The shared `herald_store::conformance` suite, run against `FjallStore`.

use herald_store_fjall::FjallStore;

#[test]
fn fjall_store_conforms() {
    // Each check gets a fresh directory; the directories outlive the stores opened in them.
    let mut dirs = Vec::new();
    herald_store::conformance::run_all(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FjallStore::open(dir.path()).expect("open store");
        dirs.push(dir);
        store
    });
}
