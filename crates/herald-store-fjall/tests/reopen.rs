//! Everything a store acknowledged survives closing and reopening the directory.

use herald_store::{Append, Durability, LogBounds, Store, StoreError};
use herald_store_fjall::{FjallStore, SNAPSHOT_CHUNK_BYTES};
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
            last: 100,
            bytes: 50
        })
    );
    assert_eq!(
        store.bounds("b")?,
        Some(LogBounds {
            first: 10,
            last: 19,
            bytes: 10
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
                last: 10,
                bytes: 0
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
            last: 12,
            bytes: 1
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
            last: 1_009,
            bytes: 1_010 * 8
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
                last: 60_000,
                bytes: 10_000 * 32
            })
        );
        assert_eq!(store.read("s", 0, 1)?, vec![(50_001, value.to_vec())]);
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("s")?,
        Some(LogBounds {
            first: 50_001,
            last: 60_000,
            bytes: 10_000 * 32
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
                last: cycle * 100 + 99,
                // One byte per record, and the retained records are contiguous.
                bytes: cycle * 50 + 100
            })
        );
    }
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("log")?,
        Some(LogBounds {
            first: 200,
            last: 499,
            bytes: 300
        })
    );
    assert_eq!(store.read("log", 0, usize::MAX)?.len(), 300);
    Ok(())
}

#[test]
fn listings_bytes_and_deletes_survive_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let listed = {
        let store = FjallStore::open(dir.path())?;
        store.append(&records("t:2:/b", 1..6, b"12345"), Durability::Sync)?;
        store.append(&records("t:1:/a", 1..4, b"12"), Durability::Buffered)?;
        store.append(&records("docs", 1..3, b"{}"), Durability::Sync)?;
        store.append(&records("t:3:/gone", 1..100, b"x"), Durability::Sync)?;
        store.append(&records("t:4:/trimmed", 7..9, b"x"), Durability::Sync)?;
        store.trim("t:2:/b", 3, Durability::Sync)?;
        store.trim("t:4:/trimmed", 100, Durability::Buffered)?;
        store.delete_log("t:3:/gone", Durability::Sync)?;
        let listed = store.list_logs("t:")?;
        assert_eq!(
            listed,
            vec![
                (
                    "t:1:/a".to_owned(),
                    LogBounds {
                        first: 1,
                        last: 3,
                        bytes: 6
                    }
                ),
                (
                    "t:2:/b".to_owned(),
                    LogBounds {
                        first: 3,
                        last: 5,
                        bytes: 15
                    }
                ),
                (
                    "t:4:/trimmed".to_owned(),
                    LogBounds {
                        first: 9,
                        last: 8,
                        bytes: 0
                    }
                ),
            ]
        );
        listed
    };
    let store = reopen(dir.path())?;
    assert_eq!(store.list_logs("t:")?, listed);
    assert_eq!(store.list_logs("")?.len(), 4);
    assert_eq!(store.bounds("t:3:/gone")?, None);
    assert!(store.read("t:3:/gone", 0, 10)?.is_empty());
    // The deleted log starts over at 1.
    store.append(&records("t:3:/gone", 1..3, b"new"), Durability::Sync)?;
    drop(store);
    let store = reopen(dir.path())?;
    assert_eq!(
        store.bounds("t:3:/gone")?,
        Some(LogBounds {
            first: 1,
            last: 2,
            bytes: 6
        })
    );
    assert_eq!(store.read("t:3:/gone", 0, 10)?.len(), 2);
    Ok(())
}

#[test]
fn second_open_of_the_same_directory_fails_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let _store = FjallStore::open(dir.path())?;
    let second = FjallStore::open(dir.path());
    assert!(matches!(second, Err(StoreError::Engine(_))), "{second:?}");
    let message = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("in use by another process"), "{message}");
    Ok(())
}
