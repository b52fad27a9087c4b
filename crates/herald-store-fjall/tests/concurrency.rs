//! Concurrent writers through one shared `FjallStore`.

use herald_store::{Append, Durability, Store, StoreError};
use herald_store_fjall::FjallStore;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn concurrent_writers_lose_nothing_and_never_accept_a_duplicate_seq() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = FjallStore::open(dir.path())?;
    let accepted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let (store, accepted) = (&store, &accepted);
            scope.spawn(move || {
                let own = format!("own-{thread}");
                for seq in 0..200u64 {
                    let data = thread.to_be_bytes();
                    store
                        .append(
                            &[Append {
                                log: &own,
                                seq,
                                data: &data,
                            }],
                            Durability::Buffered,
                        )
                        .expect("append to own log");
                    // All threads race for the same seqs in the shared log; a seq at or below the
                    // log's last one (another thread got there first) must be refused.
                    let shared = store.append(
                        &[Append {
                            log: "shared",
                            seq,
                            data: &data,
                        }],
                        Durability::Buffered,
                    );
                    match shared {
                        Ok(()) => {
                            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(StoreError::Invalid(_)) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            });
        }
    });
    for thread in 0..4 {
        assert_eq!(
            store.read(&format!("own-{thread}"), 0, usize::MAX)?.len(),
            200
        );
    }
    let shared = store.read("shared", 0, usize::MAX)?;
    let seqs: Vec<u64> = shared.iter().map(|r| r.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        shared.len() as u64,
        accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
