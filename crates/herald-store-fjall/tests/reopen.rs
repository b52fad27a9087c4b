//! Everything a store acknowledged survives closing and reopening the directory.

use herald_store::{Append, Durability, LogBounds, Store, StoreError};
use herald_store_fjall::{FjallOptions, FjallStore, MAX_NAME_LEN, SNAPSHOT_CHUNK_BYTES};
use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn records<'a>(log: &'a str, seqs: std::ops::Range<u64>, data: &'a [u8]) -> Vec<Append<'a>> {
    seqs.map(|seq| Append { log, seq, data }).collect()
}

fn reopen(dir: &Path) -> Result<FjallStore, StoreError> {
    FjallStore::open(dir)
}

#[test]
fn synced_records_bounds_and_snapshots_survive_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let snapshot: Vec<u8> = (0..2 * SNAPSHOT_CHUNK_BYTES + 17)
        .map(|i| i as u8)
        .collect();
    {
        let store = FjallStore::open(dir.path())?;
        store.append(&records("a", 1..101, b"a"), Durability::Sync)?;
        store.append(&records("b", 10..20, b"b"), Durability::Sync)?;
        store.trim("a", 51, Durability::Sync)?;
        store.put_snapshot("tree", 50, &snapshot, Durability::Sync)?;
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("a")?,
        Some(LogBounds {
            first: 51,
            last: 100
        })
    );
    assert_eq!(
        store.bounds("b")?,
        Some(LogBounds {
            first: 10,
            last: 19
        })
    );
    let a = store.read("a", 0, usize::MAX)?;
    assert_eq!(a.len(), 50);
    assert_eq!(a.first(), Some(&(51, b"a".to_vec())));
    assert_eq!(store.snapshot("tree")?, Some((50, snapshot)));
    // The last seq survived: numbering goes on from it.
    let stale = store.append(
        &[Append {
            log: "a",
            seq: 100,
            data: b"x",
        }],
        Durability::Sync,
    );
    assert!(matches!(stale, Err(StoreError::Invalid(_))), "{stale:?}");
    store.append(
        &[Append {
            log: "a",
            seq: 101,
            data: b"x",
        }],
        Durability::Sync,
    )?;
    Ok(())
}

#[test]
fn full_trim_survives_reopen_and_numbering_continues() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = FjallStore::open(dir.path())?;
        store.append(&records("log", 1..11, b"x"), Durability::Sync)?;
        store.trim("log", 11, Durability::Sync)?;
    }
    {
        let store = reopen(dir.path())?;
        assert_eq!(
            store.bounds("log")?,
            Some(LogBounds {
                first: 11,
                last: 10
            })
        );
        assert!(store.read("log", 0, 100)?.is_empty());
        let stale = store.append(
            &[Append {
                log: "log",
                seq: 10,
                data: b"y",
            }],
            Durability::Sync,
        );
        assert!(matches!(stale, Err(StoreError::Invalid(_))), "{stale:?}");
        store.append(
            &[Append {
                log: "log",
                seq: 12,
                data: b"y",
            }],
            Durability::Sync,
        )?;
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("log")?,
        Some(LogBounds {
            first: 12,
            last: 12
        })
    );
    assert_eq!(store.read("log", 0, 100)?, vec![(12, b"y".to_vec())]);
    Ok(())
}

#[test]
fn buffered_writes_survive_a_clean_close() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = FjallStore::open(dir.path())?;
        store.append(&records("log", 0..1_000, b"buffered"), Durability::Buffered)?;
        store.put_snapshot("s", 999, b"snap", Durability::Buffered)?;
        store.sync()?;
        store.append(
            &records("log", 1_000..1_010, b"unsynced"),
            Durability::Buffered,
        )?;
        // Dropping the store persists fjall's journal.
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("log")?,
        Some(LogBounds {
            first: 0,
            last: 1_009
        })
    );
    assert_eq!(store.read("log", 0, usize::MAX)?.len(), 1_010);
    assert_eq!(store.snapshot("s")?, Some((999, b"snap".to_vec())));
    Ok(())
}

#[test]
fn watermark_is_used_after_a_big_trim_and_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let value = [0xAB; 32];
    {
        let store = FjallStore::open(dir.path())?;
        for chunk in (1..=60_000u64).collect::<Vec<_>>().chunks(1_000) {
            let batch: Vec<Append<'_>> = chunk
                .iter()
                .map(|&seq| Append {
                    log: "s",
                    seq,
                    data: &value,
                })
                .collect();
            store.append(&batch, Durability::Buffered)?;
        }
        // 50k deletes: several internal trim batches.
        store.trim("s", 50_001, Durability::Sync)?;
        assert_eq!(
            store.bounds("s")?,
            Some(LogBounds {
                first: 50_001,
                last: 60_000
            })
        );
        assert_eq!(store.read("s", 0, 1)?, vec![(50_001, value.to_vec())]);
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("s")?,
        Some(LogBounds {
            first: 50_001,
            last: 60_000
        })
    );
    assert_eq!(
        store
            .read("s", 0, 2)?
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        [50_001, 50_002]
    );
    assert_eq!(store.read("s", 0, usize::MAX)?.len(), 10_000);
    Ok(())
}

#[test]
fn reopen_under_many_cycles_keeps_everything() -> TestResult {
    let dir = tempfile::tempdir()?;
    for cycle in 0..5u64 {
        let store = FjallStore::open(dir.path())?;
        let seqs = cycle * 100..(cycle + 1) * 100;
        store.append(&records("log", seqs, b"c"), Durability::Sync)?;
        store.trim("log", cycle * 50, Durability::Buffered)?;
        assert_eq!(
            store.bounds("log")?,
            Some(LogBounds {
                first: cycle * 50,
                last: cycle * 100 + 99
            })
        );
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("log")?,
        Some(LogBounds {
            first: 200,
            last: 499
        })
    );
    assert_eq!(store.read("log", 0, usize::MAX)?.len(), 300);
    Ok(())
}

#[test]
fn second_open_of_the_same_directory_fails_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _store = FjallStore::open(dir.path())?;
    assert!(matches!(
        FjallStore::open(dir.path()),
        Err(StoreError::Engine(_))
    ));
    Ok(())
}

#[test]
fn invalid_options_are_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = FjallOptions::default().with_max_journal_bytes(1024);
    assert!(matches!(
        FjallStore::open_with(dir.path(), small),
        Err(StoreError::Invalid(_))
    ));
    let no_threads = FjallOptions::default().with_worker_threads(0);
    assert!(matches!(
        FjallStore::open_with(dir.path(), no_threads),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn names_at_the_length_limit_work_and_longer_ones_are_invalid() -> TestResult {
    let dir = tempfile::tempdir()?;
    let longest = "n".repeat(MAX_NAME_LEN);
    let too_long = "n".repeat(MAX_NAME_LEN + 1);
    {
        let store = FjallStore::open(dir.path())?;
        store.append(
            &[Append {
                log: &longest,
                seq: 1,
                data: b"x",
            }],
            Durability::Sync,
        )?;
        store.put_snapshot(&longest, 1, b"s", Durability::Sync)?;
        let append = store.append(
            &[Append {
                log: &too_long,
                seq: 1,
                data: b"x",
            }],
            Durability::Sync,
        );
        assert!(matches!(append, Err(StoreError::Invalid(_))), "{append:?}");
        let put = store.put_snapshot(&too_long, 1, b"s", Durability::Sync);
        assert!(matches!(put, Err(StoreError::Invalid(_))), "{put:?}");
        // Reads of a name that cannot exist find nothing.
        assert!(store.read(&too_long, 0, 10)?.is_empty());
        assert_eq!(store.bounds(&too_long)?, None);
        assert_eq!(store.snapshot(&too_long)?, None);
        store.trim(&too_long, 10, Durability::Sync)?;
    }
    let store = reopen(dir.path())?;
    assert_eq!(store.read(&longest, 0, 10)?, vec![(1, b"x".to_vec())]);
    assert_eq!(store.snapshot(&longest)?, Some((1, b"s".to_vec())));
    Ok(())
}

#[test]
fn seq_u64_max_is_reserved() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = FjallStore::open(dir.path())?;
    let max = store.append(
        &[Append {
            log: "l",
            seq: u64::MAX,
            data: b"x",
        }],
        Durability::Sync,
    );
    assert!(matches!(max, Err(StoreError::Invalid(_))), "{max:?}");
    store.append(
        &[Append {
            log: "l",
            seq: u64::MAX - 1,
            data: b"x",
        }],
        Durability::Sync,
    )?;
    store.trim("l", u64::MAX, Durability::Sync)?;
    assert_eq!(
        store.bounds("l")?,
        Some(LogBounds {
            first: u64::MAX,
            last: u64::MAX - 1
        })
    );
    Ok(())
}

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
