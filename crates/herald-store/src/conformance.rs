//! A conformance suite that every [`Store`] backend must pass.
//!
//! Each check takes a fresh, empty store and panics (like `assert!`) when the backend breaks the
//! [`Store`] contract. [`run_all`] runs every check, each on its own store from the factory, so a
//! backend's test is one line:
//!
//! ```
//! herald_store::conformance::run_all(herald_store::MemoryStore::default);
//! ```
//!
//! The checks only use the trait, so they cover behaviour every backend shares. What needs a
//! backend's own hooks (reopening, crash recovery, size limits) belongs in that backend's tests.
//! Sequence numbers stay far below `u64::MAX`, whose `last + 1` is not representable.

use crate::{Append, Durability, LogBounds, Store, StoreError};

/// One conformance check: it panics if the store (fresh and empty on entry) misbehaves.
pub type Check = fn(&dyn Store);

/// Every check in this module, with its name, in the order [`run_all`] runs them.
pub const CHECKS: &[(&str, Check)] = &[
    ("append_then_read_in_order", append_then_read_in_order),
    ("read_honours_from_and_limit", read_honours_from_and_limit),
    ("empty_append_is_a_no_op", empty_append_is_a_no_op),
    (
        "non_increasing_seq_is_rejected",
        non_increasing_seq_is_rejected,
    ),
    (
        "rejected_batch_writes_nothing",
        rejected_batch_writes_nothing,
    ),
    ("bounds_follow_appends", bounds_follow_appends),
    ("trim_removes_a_prefix", trim_removes_a_prefix),
    (
        "trim_with_gaps_reports_oldest_retained",
        trim_with_gaps_reports_oldest_retained,
    ),
    ("full_trim_keeps_numbering", full_trim_keeps_numbering),
    (
        "trim_of_unknown_log_is_a_no_op",
        trim_of_unknown_log_is_a_no_op,
    ),
    (
        "bytes_follow_appends_trims_and_deletes",
        bytes_follow_appends_trims_and_deletes,
    ),
    ("list_logs_filters_and_sorts", list_logs_filters_and_sorts),
    ("delete_log_forgets_the_log", delete_log_forgets_the_log),
    ("snapshots_replace", snapshots_replace),
    ("large_snapshots_round_trip", large_snapshots_round_trip),
    ("logs_are_isolated", logs_are_isolated),
    ("names_do_not_collide", names_do_not_collide),
    ("large_records_round_trip", large_records_round_trip),
    ("sync_succeeds", sync_succeeds),
];

/// Runs every check in [`CHECKS`], each against a new store from `make`.
///
/// # Panics
/// When a check fails; the message names the check.
pub fn run_all<S: Store>(mut make: impl FnMut() -> S) {
    for (name, check) in CHECKS {
        let store = make();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&store)));
        if let Err(panic) = outcome {
            eprintln!("store conformance check `{name}` failed");
            std::panic::resume_unwind(panic);
        }
    }
}

/// Unwraps a store result, panicking with the operation's description on error.
fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

fn append(store: &dyn Store, log: &str, seq: u64, data: &[u8]) {
    ok(
        store.append(&[Append { log, seq, data }], Durability::Sync),
        &format!("append {log:?}#{seq}"),
    );
}

fn read_all(store: &dyn Store, log: &str) -> Vec<(u64, Vec<u8>)> {
    ok(store.read(log, 0, usize::MAX), &format!("read {log:?}"))
}

fn bounds(store: &dyn Store, log: &str) -> Option<LogBounds> {
    ok(store.bounds(log), &format!("bounds {log:?}"))
}

fn seqs(entries: &[(u64, Vec<u8>)]) -> Vec<u64> {
    entries.iter().map(|(s, _)| *s).collect()
}

fn payload(seq: u64) -> Vec<u8> {
    format!("record-{seq}").into_bytes()
}

/// The total length of [`payload`]s of `seqs`: the `bytes` of a log holding them.
fn payload_bytes(seqs: impl IntoIterator<Item = u64>) -> u64 {
    seqs.into_iter().map(|seq| payload(seq).len() as u64).sum()
}

fn list(store: &dyn Store, prefix: &str) -> Vec<(String, LogBounds)> {
    ok(store.list_logs(prefix), &format!("list_logs {prefix:?}"))
}

fn log_names(listed: &[(String, LogBounds)]) -> Vec<&str> {
    listed.iter().map(|(name, _)| name.as_str()).collect()
}

/// Records come back in ascending order with their bytes unchanged, across several batches.
pub fn append_then_read_in_order(store: &dyn Store) {
    assert!(read_all(store, "log").is_empty(), "a new log reads empty");
    let first: Vec<Vec<u8>> = (0..5).map(payload).collect();
    let batch: Vec<Append<'_>> = first
        .iter()
        .zip(0u64..)
        .map(|(data, seq)| Append {
            log: "log",
            seq,
            data,
        })
        .collect();
    ok(store.append(&batch, Durability::Sync), "append batch");
    append(store, "log", 5, &payload(5));
    ok(
        store.append(
            &[Append {
                log: "log",
                seq: 6,
                data: &payload(6),
            }],
            Durability::Buffered,
        ),
        "buffered append",
    );
    let expected: Vec<(u64, Vec<u8>)> = (0..7).map(|s| (s, payload(s))).collect();
    assert_eq!(read_all(store, "log"), expected);
    // Empty records are records too.
    append(store, "log", 7, b"");
    assert_eq!(ok(store.read("log", 7, 10), "read"), vec![(7, Vec::new())]);
}

/// `read` starts at the first record with `seq >= from` and returns at most `limit` records.
pub fn read_honours_from_and_limit(store: &dyn Store) {
    // Gaps between sequence numbers are allowed.
    for seq in (10..=100).step_by(10) {
        append(store, "log", seq, &payload(seq));
    }
    let read = |from, limit| seqs(&ok(store.read("log", from, limit), "read"));
    assert_eq!(read(0, 3), vec![10, 20, 30]);
    assert_eq!(read(10, 2), vec![10, 20]);
    assert_eq!(read(11, 2), vec![20, 30]);
    assert_eq!(read(95, 10), vec![100]);
    assert_eq!(read(100, 10), vec![100]);
    assert_eq!(read(101, 10), Vec::<u64>::new());
    assert_eq!(read(u64::MAX, 10), Vec::<u64>::new());
    assert_eq!(read(0, 0), Vec::<u64>::new());
    assert_eq!(read(0, usize::MAX).len(), 10);
    // Paging through a longer log with small pages sees every record once.
    // One batch of 1000: batches may be large.
    let data: Vec<Vec<u8>> = (101..1_101).map(payload).collect();
    let batch: Vec<Append<'_>> = (101..)
        .zip(&data)
        .map(|(seq, data)| Append {
            log: "long",
            seq,
            data,
        })
        .collect();
    ok(store.append(&batch, Durability::Sync), "append 1000");
    let mut from = 0;
    let mut seen = Vec::new();
    loop {
        let page = ok(store.read("long", from, 64), "page");
        let Some((last, _)) = page.last() else { break };
        from = last + 1;
        seen.extend(seqs(&page));
    }
    assert_eq!(seen, (101..1_101).collect::<Vec<_>>());
}

/// Appending nothing succeeds and creates nothing.
pub fn empty_append_is_a_no_op(store: &dyn Store) {
    ok(store.append(&[], Durability::Sync), "empty append");
    ok(store.append(&[], Durability::Buffered), "empty append");
    assert_eq!(bounds(store, "log"), None);
}

fn assert_invalid(result: Result<(), StoreError>, what: &str) {
    match result {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("{what}: expected StoreError::Invalid, got {other:?}"),
    }
}

/// A `seq` that is not greater than the log's last one is rejected, within a batch and across
/// batches, including after the log was fully trimmed.
pub fn non_increasing_seq_is_rejected(store: &dyn Store) {
    append(store, "log", 5, b"five");
    for seq in [0, 4, 5] {
        assert_invalid(
            store.append(
                &[Append {
                    log: "log",
                    seq,
                    data: b"x",
                }],
                Durability::Sync,
            ),
            &format!("seq {seq} after 5"),
        );
    }
    assert_invalid(
        store.append(
            &[
                Append {
                    log: "log",
                    seq: 7,
                    data: b"x",
                },
                Append {
                    log: "log",
                    seq: 7,
                    data: b"y",
                },
            ],
            Durability::Sync,
        ),
        "duplicate seq within a batch",
    );
    assert_invalid(
        store.append(
            &[
                Append {
                    log: "log",
                    seq: 9,
                    data: b"x",
                },
                Append {
                    log: "log",
                    seq: 8,
                    data: b"y",
                },
            ],
            Durability::Buffered,
        ),
        "decreasing seq within a batch",
    );
    assert_invalid(
        store.append(
            &[
                Append {
                    log: "log",
                    seq: 10,
                    data: b"x",
                },
                Append {
                    log: "other",
                    seq: 1,
                    data: b"o",
                },
                Append {
                    log: "log",
                    seq: 10,
                    data: b"y",
                },
            ],
            Durability::Sync,
        ),
        "a seq repeated after another log's records within a batch",
    );
    assert_eq!(read_all(store, "other"), Vec::new());
    assert_eq!(read_all(store, "log"), vec![(5, b"five".to_vec())]);
    ok(store.trim("log", 100, Durability::Sync), "trim");
    assert_invalid(
        store.append(
            &[Append {
                log: "log",
                seq: 5,
                data: b"x",
            }],
            Durability::Sync,
        ),
        "seq 5 after a full trim at last 5",
    );
    append(store, "log", 6, b"six");
    assert_eq!(read_all(store, "log"), vec![(6, b"six".to_vec())]);
}

/// A batch with one bad record writes none of its records, in any log.
pub fn rejected_batch_writes_nothing(store: &dyn Store) {
    append(store, "a", 1, b"a1");
    append(store, "b", 1, b"b1");
    let before_a = bounds(store, "a");
    let before_b = bounds(store, "b");
    assert_invalid(
        store.append(
            &[
                Append {
                    log: "a",
                    seq: 2,
                    data: b"a2",
                },
                Append {
                    log: "new",
                    seq: 1,
                    data: b"n1",
                },
                Append {
                    log: "b",
                    seq: 1,
                    data: b"dup",
                },
            ],
            Durability::Sync,
        ),
        "batch whose last record repeats a seq",
    );
    assert_eq!(read_all(store, "a"), vec![(1, b"a1".to_vec())]);
    assert_eq!(read_all(store, "b"), vec![(1, b"b1".to_vec())]);
    assert!(read_all(store, "new").is_empty());
    assert_eq!(bounds(store, "a"), before_a);
    assert_eq!(bounds(store, "b"), before_b);
    assert_eq!(
        bounds(store, "new"),
        None,
        "a rejected batch must not create logs"
    );
    // The same records are accepted once the bad one is dropped.
    ok(
        store.append(
            &[
                Append {
                    log: "a",
                    seq: 2,
                    data: b"a2",
                },
                Append {
                    log: "new",
                    seq: 1,
                    data: b"n1",
                },
            ],
            Durability::Sync,
        ),
        "fixed batch",
    );
    assert_eq!(seqs(&read_all(store, "a")), vec![1, 2]);
    assert_eq!(seqs(&read_all(store, "new")), vec![1]);
}

/// `bounds` is `None` for an unknown log and otherwise spans the first and last records.
pub fn bounds_follow_appends(store: &dyn Store) {
    assert_eq!(bounds(store, "log"), None);
    append(store, "log", 0, b"zero");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 0,
            last: 0,
            bytes: 4
        })
    );
    append(store, "log", 3, b"three");
    let log = Some(LogBounds {
        first: 0,
        last: 3,
        bytes: 9,
    });
    assert_eq!(bounds(store, "log"), log);
    append(store, "other", 42, b"x");
    assert_eq!(
        bounds(store, "other"),
        Some(LogBounds {
            first: 42,
            last: 42,
            bytes: 1
        })
    );
    assert_eq!(bounds(store, "log"), log);
}

/// `trim` removes records below `before`; reads and `bounds` start at the first retained one.
pub fn trim_removes_a_prefix(store: &dyn Store) {
    for seq in 1..=100 {
        append(store, "log", seq, &payload(seq));
    }
    ok(store.trim("log", 41, Durability::Sync), "trim");
    let trimmed = Some(LogBounds {
        first: 41,
        last: 100,
        bytes: payload_bytes(41..=100),
    });
    assert_eq!(bounds(store, "log"), trimmed);
    assert_eq!(seqs(&ok(store.read("log", 0, 3), "read")), vec![41, 42, 43]);
    assert_eq!(
        ok(store.read("log", 41, 1), "read"),
        vec![(41, payload(41))]
    );
    // Trimming at or below the first retained record changes nothing.
    ok(store.trim("log", 41, Durability::Buffered), "trim again");
    ok(store.trim("log", 0, Durability::Buffered), "trim below");
    assert_eq!(bounds(store, "log"), trimmed);
    assert_eq!(read_all(store, "log").len(), 60);
    // Appends after a trim go on from the last seq.
    append(store, "log", 101, &payload(101));
    ok(store.trim("log", 100, Durability::Sync), "trim");
    assert_eq!(
        read_all(store, "log"),
        vec![(100, payload(100)), (101, payload(101))]
    );
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 100,
            last: 101,
            bytes: payload_bytes(100..=101)
        })
    );
}

/// After a trim, `bounds().first` is the oldest *retained* record even when `before` falls in a
/// gap between sequence numbers.
pub fn trim_with_gaps_reports_oldest_retained(store: &dyn Store) {
    for seq in [10, 20, 30, 40] {
        append(store, "log", seq, &payload(seq));
    }
    ok(store.trim("log", 15, Durability::Sync), "trim");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 20,
            last: 40,
            bytes: payload_bytes([20, 30, 40])
        })
    );
    ok(store.trim("log", 31, Durability::Sync), "trim");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 40,
            last: 40,
            bytes: payload_bytes([40])
        })
    );
    assert_eq!(read_all(store, "log"), vec![(40, payload(40))]);
}

/// Trimming everything leaves an empty log with `first == last + 1`, and numbering continues.
pub fn full_trim_keeps_numbering(store: &dyn Store) {
    for seq in 1..=10 {
        append(store, "log", seq, &payload(seq));
    }
    ok(store.trim("log", 11, Durability::Sync), "trim all");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 11,
            last: 10,
            bytes: 0
        })
    );
    assert!(read_all(store, "log").is_empty());
    // Trimming far beyond the end is the same.
    ok(store.trim("log", 1_000, Durability::Sync), "trim beyond");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 11,
            last: 10,
            bytes: 0
        })
    );
    // The next append may leave a gap; first is then that record.
    append(store, "log", 15, b"fifteen");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 15,
            last: 15,
            bytes: 7
        })
    );
    assert_eq!(read_all(store, "log"), vec![(15, b"fifteen".to_vec())]);
    append(store, "log", 16, b"sixteen");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 15,
            last: 16,
            bytes: 14
        })
    );
}

/// Trimming a log that was never appended to does nothing and does not create it.
pub fn trim_of_unknown_log_is_a_no_op(store: &dyn Store) {
    ok(store.trim("ghost", 10, Durability::Sync), "trim unknown");
    assert_eq!(bounds(store, "ghost"), None);
    append(store, "ghost", 1, b"one");
    assert_eq!(
        bounds(store, "ghost"),
        Some(LogBounds {
            first: 1,
            last: 1,
            bytes: 3
        })
    );
}

/// `bytes` is the sum of the retained records' lengths: appends add, trims and deletes take off
/// exactly what they remove, empty records count nothing and a rejected batch changes nothing.
pub fn bytes_follow_appends_trims_and_deletes(store: &dyn Store) {
    let bytes = |log| bounds(store, log).map(|b| b.bytes);
    append(store, "log", 1, b"");
    assert_eq!(bytes("log"), Some(0));
    append(store, "log", 2, b"12345");
    let big = pattern(300_000, 4);
    // One batch over two logs counts each record in its own log.
    ok(
        store.append(
            &[
                Append {
                    log: "log",
                    seq: 3,
                    data: b"abc",
                },
                Append {
                    log: "other",
                    seq: 1,
                    data: b"1234567",
                },
                Append {
                    log: "log",
                    seq: 5,
                    data: &big,
                },
            ],
            Durability::Buffered,
        ),
        "mixed batch",
    );
    assert_eq!(bytes("log"), Some(300_008));
    assert_eq!(bytes("other"), Some(7));
    assert_invalid(
        store.append(
            &[
                Append {
                    log: "log",
                    seq: 6,
                    data: b"xx",
                },
                Append {
                    log: "other",
                    seq: 1,
                    data: b"dup",
                },
            ],
            Durability::Sync,
        ),
        "batch repeating a seq",
    );
    assert_eq!(bytes("log"), Some(300_008));
    assert_eq!(bytes("other"), Some(7));
    // Trims take off the removed records only, also when `before` is in a gap or below `first`.
    ok(store.trim("log", 3, Durability::Sync), "trim");
    assert_eq!(bytes("log"), Some(300_003));
    ok(store.trim("log", 1, Durability::Sync), "trim below first");
    assert_eq!(bytes("log"), Some(300_003));
    ok(
        store.trim("log", 5, Durability::Buffered),
        "trim into the gap",
    );
    assert_eq!(bytes("log"), Some(300_000));
    ok(
        store.trim("log", 1_000, Durability::Sync),
        "trim everything",
    );
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 6,
            last: 5,
            bytes: 0
        })
    );
    append(store, "log", 10, b"again");
    assert_eq!(bytes("log"), Some(5));
    // Many records: the count stays exact through appends and trims of all sizes.
    let data: Vec<Vec<u8>> = (11..2_011).map(payload).collect();
    let batch: Vec<Append<'_>> = (11..)
        .zip(&data)
        .map(|(seq, data)| Append {
            log: "log",
            seq,
            data,
        })
        .collect();
    ok(store.append(&batch, Durability::Buffered), "append 2000");
    assert_eq!(bytes("log"), Some(5 + payload_bytes(11..2_011)));
    ok(store.trim("log", 1_500, Durability::Sync), "trim");
    assert_eq!(bytes("log"), Some(payload_bytes(1_500..2_011)));
    // A delete forgets the count; the next incarnation counts from zero.
    ok(store.delete_log("other", Durability::Sync), "delete");
    assert_eq!(bytes("other"), None);
    append(store, "other", 1, b"x");
    assert_eq!(bytes("other"), Some(1));
    assert_eq!(bytes("log"), Some(payload_bytes(1_500..2_011)));
}

/// `list_logs` returns the logs whose names start with the prefix, sorted by name, with the same
/// bounds as `bounds`; fully trimmed logs are listed, deleted logs and snapshots are not.
pub fn list_logs_filters_and_sorts(store: &dyn Store) {
    assert!(list(store, "").is_empty(), "a new store lists nothing");
    let logs = ["t:b", "t:a/x", "t:a", "u", "t:", "t", "t:a\0", "", "é"];
    for (i, log) in (1u64..).zip(logs) {
        append(store, log, i, &payload(i));
        append(store, log, i + 100, &payload(i + 100));
    }
    ok(
        store.put_snapshot("t:snapshot", 1, b"s", Durability::Sync),
        "put",
    );
    let all = list(store, "");
    let mut sorted = logs.to_vec();
    sorted.sort_unstable();
    assert_eq!(log_names(&all), sorted);
    for (name, listed) in &all {
        assert_eq!(Some(*listed), bounds(store, name), "bounds of {name:?}");
    }
    // "\0" sorts before "/": byte order, not a path order.
    assert_eq!(
        log_names(&list(store, "t:")),
        ["t:", "t:a", "t:a\0", "t:a/x", "t:b"]
    );
    assert_eq!(log_names(&list(store, "t:a")), ["t:a", "t:a\0", "t:a/x"]);
    assert_eq!(log_names(&list(store, "t:a/")), ["t:a/x"]);
    assert_eq!(log_names(&list(store, "t:a/x")), ["t:a/x"]);
    assert_eq!(log_names(&list(store, "\u{e9}")), ["é"]);
    for nothing in ["t:a/xy", "t:c", "v", "\0", "T"] {
        assert!(list(store, nothing).is_empty(), "prefix {nothing:?}");
    }
    // A fully trimmed log stays listed, with its numbering.
    ok(store.trim("t:b", 1_000, Durability::Sync), "trim all");
    assert_eq!(
        list(store, "t:b"),
        vec![(
            "t:b".to_owned(),
            LogBounds {
                first: 102,
                last: 101,
                bytes: 0
            }
        )]
    );
    // A deleted log is gone from every listing.
    ok(store.delete_log("t:a", Durability::Sync), "delete");
    assert_eq!(log_names(&list(store, "t:a")), ["t:a\0", "t:a/x"]);
    sorted.retain(|name| *name != "t:a");
    assert_eq!(log_names(&list(store, "")), sorted);
    // Appending again lists it again.
    append(store, "t:a", 1, b"back");
    let listed = list(store, "t:a");
    assert_eq!(log_names(&listed), ["t:a", "t:a\0", "t:a/x"]);
    assert_eq!(
        listed.first().map(|(_, b)| *b),
        Some(LogBounds {
            first: 1,
            last: 1,
            bytes: 4
        })
    );
}

/// `delete_log` removes a log's records and bounds, leaves other logs (including ones whose
/// names extend it) and snapshots alone, and lets numbering start over.
pub fn delete_log_forgets_the_log(store: &dyn Store) {
    for seq in 1..=100 {
        append(store, "log", seq, &payload(seq));
    }
    let neighbours = ["lo", "log2", "log\0", "logs"];
    for log in neighbours {
        for seq in 1..=10 {
            append(store, log, seq, &payload(seq));
        }
    }
    ok(
        store.put_snapshot("log", 7, b"snap", Durability::Sync),
        "put",
    );
    ok(store.trim("log", 51, Durability::Sync), "trim");
    ok(store.delete_log("log", Durability::Sync), "delete");
    assert_eq!(bounds(store, "log"), None);
    assert!(read_all(store, "log").is_empty());
    assert!(ok(store.read("log", 60, 10), "read").is_empty());
    assert_eq!(log_names(&list(store, "log")), ["log\0", "log2", "logs"]);
    let ten = Some(LogBounds {
        first: 1,
        last: 10,
        bytes: payload_bytes(1..=10),
    });
    for log in neighbours {
        assert_eq!(bounds(store, log), ten, "bounds of {log:?}");
        assert_eq!(seqs(&read_all(store, log)), (1..=10).collect::<Vec<_>>());
    }
    assert_eq!(
        ok(store.snapshot("log"), "snapshot"),
        Some((7, b"snap".to_vec()))
    );
    // Deleting again, or deleting a log that never existed, does nothing.
    ok(
        store.delete_log("log", Durability::Buffered),
        "delete again",
    );
    ok(
        store.delete_log("ghost", Durability::Sync),
        "delete unknown",
    );
    assert_eq!(bounds(store, "ghost"), None);
    assert!(list(store, "ghost").is_empty());
    // Numbering starts over, below the old `first` and `last`; no old record shows through.
    append(store, "log", 1, b"new one");
    assert_eq!(
        bounds(store, "log"),
        Some(LogBounds {
            first: 1,
            last: 1,
            bytes: 7
        })
    );
    append(store, "log", 60, b"sixty");
    assert_eq!(
        read_all(store, "log"),
        vec![(1, b"new one".to_vec()), (60, b"sixty".to_vec())]
    );
    assert_eq!(
        ok(store.read("log", 2, 10), "read"),
        vec![(60, b"sixty".to_vec())]
    );
    // A fully trimmed log can be deleted too, and so can one deleted and recreated.
    ok(store.trim("log2", 1_000, Durability::Sync), "trim all");
    ok(store.delete_log("log2", Durability::Sync), "delete trimmed");
    ok(
        store.delete_log("log", Durability::Buffered),
        "delete recreated",
    );
    assert_eq!(bounds(store, "log2"), None);
    assert_eq!(bounds(store, "log"), None);
    assert_eq!(log_names(&list(store, "log")), ["log\0", "logs"]);
    append(store, "log2", 1, b"x");
    assert_eq!(seqs(&read_all(store, "log2")), vec![1]);
}

/// One snapshot per name; `put_snapshot` replaces it, including with a smaller or empty blob.
pub fn snapshots_replace(store: &dyn Store) {
    let get = |name| ok(store.snapshot(name), "snapshot");
    assert_eq!(get("tree"), None);
    ok(
        store.put_snapshot("tree", 10, b"first version", Durability::Sync),
        "put",
    );
    assert_eq!(get("tree"), Some((10, b"first version".to_vec())));
    ok(
        store.put_snapshot("tree", 20, b"v2", Durability::Buffered),
        "put",
    );
    assert_eq!(get("tree"), Some((20, b"v2".to_vec())));
    ok(
        store.put_snapshot("tree", 30, b"", Durability::Sync),
        "put empty",
    );
    assert_eq!(get("tree"), Some((30, Vec::new())));
    ok(
        store.put_snapshot("other", 5, b"other", Durability::Sync),
        "put other",
    );
    assert_eq!(get("tree"), Some((30, Vec::new())));
    assert_eq!(get("other"), Some((5, b"other".to_vec())));
    // Snapshots and logs live in separate name spaces.
    assert_eq!(bounds(store, "tree"), None);
    append(store, "tree", 1, b"log record");
    assert_eq!(get("tree"), Some((30, Vec::new())));
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    // Not all-zero and not periodic at any power of two, so misplaced chunks show up.
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(salt))
        .collect()
}

/// Snapshots of several MiB round-trip exactly and can be replaced by smaller ones.
pub fn large_snapshots_round_trip(store: &dyn Store) {
    let big = pattern(5 * 1024 * 1024 + 123, 1);
    ok(
        store.put_snapshot("big", 1, &big, Durability::Sync),
        "put big",
    );
    assert_eq!(ok(store.snapshot("big"), "get"), Some((1, big)));
    let smaller = pattern(1024 * 1024, 2);
    ok(
        store.put_snapshot("big", 2, &smaller, Durability::Sync),
        "put smaller",
    );
    assert_eq!(ok(store.snapshot("big"), "get"), Some((2, smaller)));
    let bigger = pattern(3 * 1024 * 1024 + 1, 3);
    ok(
        store.put_snapshot("big", 3, &bigger, Durability::Buffered),
        "put bigger",
    );
    assert_eq!(ok(store.snapshot("big"), "get"), Some((3, bigger)));
}

/// Records in one batch may target several logs; each log sees only its own records, and a
/// trim touches only its log.
pub fn logs_are_isolated(store: &dyn Store) {
    let mut batch = Vec::new();
    let data: Vec<Vec<u8>> = (0..30).map(payload).collect();
    for (i, d) in (0u64..).zip(&data) {
        let log = ["x", "y", "z"][(i % 3) as usize];
        batch.push(Append {
            log,
            seq: i,
            data: d,
        });
    }
    ok(store.append(&batch, Durability::Sync), "mixed batch");
    for (k, log) in ["x", "y", "z"].into_iter().enumerate() {
        let want: Vec<(u64, Vec<u8>)> = (0..30)
            .filter(|i| i % 3 == k as u64)
            .map(|i| (i, payload(i)))
            .collect();
        assert_eq!(read_all(store, log), want, "log {log}");
    }
    ok(store.trim("y", 20, Durability::Sync), "trim y");
    assert_eq!(seqs(&read_all(store, "x")).len(), 10);
    assert_eq!(seqs(&read_all(store, "y")), vec![22, 25, 28]);
    assert_eq!(
        bounds(store, "x"),
        Some(LogBounds {
            first: 0,
            last: 27,
            bytes: payload_bytes((0..30).step_by(3))
        })
    );
    assert_eq!(
        bounds(store, "y"),
        Some(LogBounds {
            first: 22,
            last: 28,
            bytes: payload_bytes([22, 25, 28])
        })
    );
    assert_eq!(
        bounds(store, "z"),
        Some(LogBounds {
            first: 2,
            last: 29,
            bytes: payload_bytes((2..30).step_by(3))
        })
    );
}

/// Names that are prefixes of each other, contain NUL or other odd bytes, or are empty, name
/// distinct logs and snapshots.
pub fn names_do_not_collide(store: &dyn Store) {
    let names = [
        "",
        "a",
        "a\0",
        "a\0\0",
        "a\u{1}",
        "ab",
        "a\0b",
        "\0",
        "\0\0\0\0\0\0\0\u{1}",
        "\u{ff}",
        "é",
        "a/b",
        "a:b",
        "aa",
        "b",
    ];
    for (i, name) in (0u64..).zip(names) {
        // Each log gets a distinct seq range and payload, so a leak into a neighbour shows.
        for seq in i * 10..i * 10 + 3 {
            append(store, name, seq, format!("{name:?}/{seq}").as_bytes());
        }
        ok(
            store.put_snapshot(
                name,
                i,
                format!("snap {name:?}").as_bytes(),
                Durability::Sync,
            ),
            "put",
        );
    }
    let check = |trimmed: Option<usize>| {
        for (i, name) in (0u64..).zip(names) {
            let start = if trimmed == Some(i as usize) {
                i * 10 + 2
            } else {
                i * 10
            };
            let want: Vec<(u64, Vec<u8>)> = (start..i * 10 + 3)
                .map(|seq| (seq, format!("{name:?}/{seq}").into_bytes()))
                .collect();
            assert_eq!(read_all(store, name), want, "log {name:?}");
            let bytes = want.iter().map(|(_, d)| d.len() as u64).sum();
            assert_eq!(
                bounds(store, name),
                Some(LogBounds {
                    first: start,
                    last: i * 10 + 2,
                    bytes
                }),
                "bounds {name:?}"
            );
            assert_eq!(
                ok(store.snapshot(name), "snapshot"),
                Some((i, format!("snap {name:?}").into_bytes())),
                "snapshot {name:?}"
            );
        }
    };
    check(None);
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    assert_eq!(log_names(&list(store, "")), sorted);
    let under_a: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|n| n.starts_with('a'))
        .collect();
    assert_eq!(log_names(&list(store, "a")), under_a);
    assert_eq!(log_names(&list(store, "a\0")), ["a\0", "a\0\0", "a\0b"]);
    // Trimming "a" must not touch "a\0", "ab", ...
    let a = names.iter().position(|n| *n == "a").unwrap_or_default();
    ok(
        store.trim("a", a as u64 * 10 + 2, Durability::Sync),
        "trim a",
    );
    check(Some(a));
}

/// Records of hundreds of KiB round-trip.
pub fn large_records_round_trip(store: &dyn Store) {
    let big = pattern(512 * 1024, 9);
    append(store, "log", 1, &big);
    append(store, "log", 2, b"small");
    assert_eq!(
        read_all(store, "log"),
        vec![(1, big), (2, b"small".to_vec())]
    );
}

/// `sync` succeeds on an idle store and after buffered writes.
pub fn sync_succeeds(store: &dyn Store) {
    ok(store.sync(), "sync idle");
    ok(
        store.append(
            &[Append {
                log: "log",
                seq: 1,
                data: b"x",
            }],
            Durability::Buffered,
        ),
        "append",
    );
    ok(store.sync(), "sync");
    assert_eq!(read_all(store, "log"), vec![(1, b"x".to_vec())]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_conforms() {
        super::run_all(crate::MemoryStore::default);
    }
}
