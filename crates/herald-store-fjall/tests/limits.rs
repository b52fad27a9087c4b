//! Backend limits: name length, reserved seq, and options fjall would reject.

use herald_store::{Append, Durability, LogBounds, Store, StoreError};
use herald_store_fjall::{FjallOptions, FjallStore, MAX_NAME_LEN};

type TestResult = Result<(), Box<dyn std::error::Error>>;

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
    let store = FjallStore::open(dir.path())?;
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
            last: u64::MAX - 1,
            bytes: 0
        })
    );
    Ok(())
}
