//! Model-based test: random operation sequences applied to `FjallStore` and to the reference
//! `MemoryStore` must give the same answers (records, bounds with `bytes`, listings, snapshots),
//! including across reopens.

use herald_store::{Append, Durability, MemoryStore, Store, StoreError};
use herald_store_fjall::{FjallStore, SNAPSHOT_CHUNK_BYTES};
use proptest::prelude::*;
use std::path::Path;

/// Names chosen to collide if keys were not length-prefixed.
const LOGS: [&str; 3] = ["a", "a\0", "ab"];
const SNAPSHOTS: [&str; 2] = ["a", "a\0"];

#[derive(Debug, Clone)]
enum Op {
    /// Records as (log index, seq step over the log's running last, data); a step of 0 repeats
    /// a seq and must make the whole batch fail.
    Append {
        records: Vec<(usize, u64, Vec<u8>)>,
        sync: bool,
    },
    /// Trim at the log's current `first` plus `offset` (negative means below it).
    Trim {
        log: usize,
        offset: i64,
        sync: bool,
    },
    /// Delete the log; the next append to it starts again from a small seq.
    Delete {
        log: usize,
        sync: bool,
    },
    PutSnapshot {
        name: usize,
        seq: u64,
        data: Blob,
        sync: bool,
    },
    Reopen,
    Sync,
}

#[derive(Debug, Clone)]
enum Blob {
    Small(Vec<u8>),
    /// `chunks` whole chunks plus `extra` bytes of a pattern starting at `salt`.
    Big {
        chunks: usize,
        extra: usize,
        salt: u8,
    },
}

impl Blob {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Blob::Small(b) => b.clone(),
            Blob::Big {
                chunks,
                extra,
                salt,
            } => (0..chunks * SNAPSHOT_CHUNK_BYTES + extra)
                .map(|i| (i % 253) as u8 ^ salt)
                .collect(),
        }
    }
}

fn durability(sync: bool) -> Durability {
    if sync {
        Durability::Sync
    } else {
        Durability::Buffered
    }
}

fn op() -> impl Strategy<Value = Op> {
    let step = prop_oneof![1 => Just(0u64), 12 => 1u64..=3];
    // Mostly small records; now and then one large enough that its block goes to fjall's
    // blob files (key-value separation, for values of 1 KiB or more).
    let data = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..24),
        1 => prop::collection::vec(any::<u8>(), 600..1_500),
    ];
    let record = (0..LOGS.len(), step, data);
    let blob = prop_oneof![
        10 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Blob::Small),
        1 => (0usize..=2, 0usize..100, any::<u8>())
            .prop_map(|(chunks, extra, salt)| Blob::Big { chunks, extra, salt }),
    ];
    prop_oneof![
        10 => (prop::collection::vec(record, 1..8), any::<bool>())
            .prop_map(|(records, sync)| Op::Append { records, sync }),
        4 => (0..LOGS.len(), -2i64..12, any::<bool>())
            .prop_map(|(log, offset, sync)| Op::Trim { log, offset, sync }),
        1 => (0..LOGS.len(), any::<bool>())
            .prop_map(|(log, sync)| Op::Delete { log, sync }),
        2 => (0..SNAPSHOTS.len(), 0u64..1_000, blob, any::<bool>())
            .prop_map(|(name, seq, data, sync)| Op::PutSnapshot { name, seq, data, sync }),
        2 => Just(Op::Reopen),
        1 => Just(Op::Sync),
    ]
}

/// The outcome of an operation, comparable across stores.
fn outcome(result: Result<(), StoreError>) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(StoreError::Invalid(_)) => Err("invalid".into()),
        Err(e) => panic!("unexpected store error: {e}"),
    }
}

fn open(dir: &Path) -> FjallStore {
    FjallStore::open(dir).expect("open fjall store")
}

fn apply(op: &Op, fjall: &mut Option<FjallStore>, model: &MemoryStore, dir: &Path) {
    let store = fjall.as_ref().expect("store is open");
    match op {
        Op::Append { records, sync } => {
            let mut last: Vec<Option<u64>> = LOGS
                .iter()
                .map(|log| model.bounds(log).expect("model bounds").map(|b| b.last))
                .collect();
            let batch: Vec<Append<'_>> = records
                .iter()
                .map(|(log, step, data)| {
                    let seq = match last[*log] {
                        Some(l) => l + step,
                        None => *step,
                    };
                    last[*log] = Some(seq);
                    Append {
                        log: LOGS[*log],
                        seq,
                        data,
                    }
                })
                .collect();
            let got = outcome(store.append(&batch, durability(*sync)));
            let want = outcome(model.append(&batch, durability(*sync)));
            assert_eq!(got, want, "append {batch:?}");
        }
        Op::Trim { log, offset, sync } => {
            let first = model
                .bounds(LOGS[*log])
                .expect("bounds")
                .map_or(0, |b| b.first);
            let before = first.saturating_add_signed(*offset);
            outcome(store.trim(LOGS[*log], before, durability(*sync))).expect("trim");
            outcome(model.trim(LOGS[*log], before, durability(*sync))).expect("model trim");
        }
        Op::Delete { log, sync } => {
            outcome(store.delete_log(LOGS[*log], durability(*sync))).expect("delete");
            outcome(model.delete_log(LOGS[*log], durability(*sync))).expect("model delete");
        }
        Op::PutSnapshot {
            name,
            seq,
            data,
            sync,
        } => {
            let data = data.bytes();
            outcome(store.put_snapshot(SNAPSHOTS[*name], *seq, &data, durability(*sync)))
                .expect("put");
            outcome(model.put_snapshot(SNAPSHOTS[*name], *seq, &data, durability(*sync)))
                .expect("model put");
        }
        Op::Reopen => {
            drop(fjall.take());
            *fjall = Some(open(dir));
        }
        Op::Sync => store.sync().expect("sync"),
    }
}

fn compare(fjall: &FjallStore, model: &MemoryStore) {
    for log in LOGS {
        let bounds = model.bounds(log).expect("model bounds");
        assert_eq!(
            fjall.bounds(log).expect("bounds"),
            bounds,
            "bounds of {log:?}"
        );
        assert_eq!(
            fjall.read(log, 0, usize::MAX).expect("read"),
            model.read(log, 0, usize::MAX).expect("model read"),
            "records of {log:?}"
        );
        if let Some(b) = bounds {
            let from = b.first + 1;
            assert_eq!(
                fjall.read(log, from, 2).expect("read"),
                model.read(log, from, 2).expect("model read"),
                "read({log:?}, {from}, 2)"
            );
        }
    }
    // Bounds (with `bytes`) of every listed log, under prefixes that are names of other logs.
    for prefix in ["", "a", "a\0", "ab", "b"] {
        assert_eq!(
            fjall.list_logs(prefix).expect("list"),
            model.list_logs(prefix).expect("model list"),
            "list_logs({prefix:?})"
        );
    }
    for name in SNAPSHOTS {
        assert_eq!(
            fjall.snapshot(name).expect("snapshot"),
            model.snapshot(name).expect("model snapshot"),
            "snapshot {name:?}"
        );
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    // 32 cases take a couple of seconds on a quiet 2-core box (fsync-bound); set
    // PROPTEST_CASES for a longer soak.
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn fjall_store_matches_the_memory_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut fjall = Some(open(dir.path()));
        let model = MemoryStore::default();
        for op in &ops {
            apply(op, &mut fjall, &model, dir.path());
            compare(fjall.as_ref().expect("store is open"), &model);
        }
        // Whatever happened, a final reopen shows the same state.
        drop(fjall.take());
        compare(&open(dir.path()), &model);
    }
}
