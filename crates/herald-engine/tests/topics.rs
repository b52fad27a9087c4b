//! Behaviour of the topics engine: numbering, reads, conditional appends, deletes, retention,
//! memory-only topics, storage failure, and listeners (replay, live, gaps, resets, resume).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use herald_core::topic::{Retention, RetentionRules};
use herald_core::{Path, PathLimits, PathPattern};
use herald_engine::{Delivery, Listener, NewEvent, Topics, TopicsError, TopicsOptions};
use herald_store::{MemoryStore, Store};

fn p(s: &str) -> Path {
    Path::parse_url(s, &PathLimits::default()).unwrap()
}

fn ev(s: &str) -> NewEvent {
    NewEvent::json(s.as_bytes().to_vec())
}

fn evs(range: std::ops::RangeInclusive<u64>) -> Vec<NewEvent> {
    range.map(|i| ev(&i.to_string())).collect()
}

async fn open(store: Arc<dyn Store>, options: TopicsOptions) -> Topics {
    Topics::open(store, options).await.unwrap().0
}

fn data(events: &[herald_engine::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.data.to_vec()).unwrap())
        .collect()
}

fn seqs(events: &[herald_engine::Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Collects deliveries until `n` events arrived (gaps and resets are kept too).
async fn collect(listener: &mut Listener, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    let mut events = 0;
    tokio::time::timeout(WAIT, async {
        while events < n {
            let batch = listener.next().await.unwrap();
            events += batch
                .iter()
                .filter(|d| matches!(d, Delivery::Event { .. }))
                .count();
            out.extend(batch);
        }
    })
    .await
    .expect("listener did not deliver in time");
    out
}

fn event_seqs(ds: &[Delivery], topic: &Path) -> Vec<u64> {
    ds.iter()
        .filter_map(|d| match d {
            Delivery::Event {
                topic: t, event, ..
            } if t == topic => Some(event.seq),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn appends_are_numbered_from_one_and_read_back() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let a = p("/b/s");
    let first = topics.append(a.clone(), evs(1..=3), None).await.unwrap();
    assert_eq!((first.first, first.last), (1, 3));
    let second = topics.append(a.clone(), evs(4..=4), None).await.unwrap();
    assert_eq!((second.first, second.last), (4, 4));
    assert_eq!(first.epoch, second.epoch);
    assert!(second.t_ms >= first.t_ms);

    assert_eq!(
        data(&topics.read(&a, 1, 10).await.unwrap()),
        ["1", "2", "3", "4"]
    );
    assert_eq!(seqs(&topics.read(&a, 3, 10).await.unwrap()), [3, 4]);
    assert_eq!(seqs(&topics.read(&a, 2, 2).await.unwrap()), [2, 3]);
    assert_eq!(seqs(&topics.read_last(&a, 2).await.unwrap()), [3, 4]);
    assert_eq!(
        seqs(&topics.read_last(&a, 100).await.unwrap()),
        [1, 2, 3, 4]
    );
    assert_eq!(seqs(&topics.read_before(&a, 3, 10).await.unwrap()), [1, 2]);
    assert!(topics.read(&p("/b/none"), 1, 10).await.unwrap().is_empty());
    assert!(topics.read_last(&a, 0).await.unwrap().is_empty());

    let info = topics.info(&a).await.unwrap().unwrap();
    assert_eq!((info.first, info.last), (1, 4));
    assert!(info.bytes > 4);
    assert_eq!(topics.list(&p("/b")), vec![a.clone()]);
    assert_eq!(topics.list(&Path::root()), vec![a.clone()]);
    assert!(topics.list(&p("/c")).is_empty());
}

#[tokio::test]
async fn content_type_is_kept_and_validated() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let e = NewEvent::new(
        Arc::from("text/plain"),
        bytes::Bytes::from_static(b"\xff\x00raw"),
    )
    .with_origin(Arc::from("sensor-1"))
    .with_attrs(bytes::Bytes::from_static(b"\x01\x02"));
    topics
        .append(p("/x/y"), vec![e.clone()], None)
        .await
        .unwrap();
    let got = topics.read(&p("/x/y"), 1, 1).await.unwrap();
    assert_eq!(&*got[0].content_type, "text/plain");
    assert_eq!(&*got[0].origin, "sensor-1");
    assert_eq!(&got[0].attrs[..], b"\x01\x02");
    assert_eq!(got[0].data, e.data);
    let long_attrs = NewEvent::json("1").with_attrs(bytes::Bytes::from(vec![0; 65_536]));
    assert!(matches!(
        topics.append(p("/x/y"), vec![long_attrs], None).await,
        Err(TopicsError::Invalid(_))
    ));

    let long = NewEvent::new(Arc::from("x".repeat(256)), bytes::Bytes::new());
    assert!(matches!(
        topics.append(p("/x/y"), vec![long], None).await,
        Err(TopicsError::Invalid(_))
    ));
    let long_origin = NewEvent::json("1").with_origin(Arc::from("o".repeat(256)));
    assert!(matches!(
        topics.append(p("/x/y"), vec![long_origin], None).await,
        Err(TopicsError::Invalid(_))
    ));
    assert!(matches!(
        topics.append(p("/x/y"), vec![], None).await,
        Err(TopicsError::Invalid(_))
    ));
    assert!(matches!(
        topics.append(Path::root(), vec![ev("1")], None).await,
        Err(TopicsError::Invalid(_))
    ));
}

#[tokio::test]
async fn conditional_append_detects_conflicts() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let a = p("/b/s");
    topics.append(a.clone(), evs(1..=1), Some(0)).await.unwrap();
    let err = topics
        .append(a.clone(), evs(2..=2), Some(0))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        TopicsError::Conflict {
            expected: 0,
            got: 1
        }
    ));
    topics.append(a.clone(), evs(2..=2), Some(1)).await.unwrap();

    // Many racing conditional appends on the same expected seq: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (topics, a) = (topics.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            topics.append(a, evs(i..=i), Some(2)).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    assert_eq!(topics.info(&a).await.unwrap().unwrap().last, 3);
}

#[tokio::test]
async fn history_and_numbering_survive_restart() {
    let mut backend = Backend::fjall();
    let a = p("/b/s");
    let epoch = {
        let (topics, task) = Topics::open(backend.store(), TopicsOptions::default())
            .await
            .unwrap();
        let e = topics
            .append(a.clone(), evs(1..=5), None)
            .await
            .unwrap()
            .epoch;
        topics.shutdown().await.unwrap();
        task.await.unwrap();
        e
    };
    backend.restart().await;
    let topics = open(backend.store(), TopicsOptions::default()).await;
    let info = topics.info(&a).await.unwrap().unwrap();
    assert_eq!((info.epoch, info.first, info.last), (epoch, 1, 5));
    assert_eq!(
        data(&topics.read(&a, 1, 10).await.unwrap()),
        ["1", "2", "3", "4", "5"]
    );
    let next = topics.append(a.clone(), evs(6..=6), None).await.unwrap();
    assert_eq!((next.epoch, next.first), (epoch, 6));
}

#[tokio::test]
async fn delete_starts_a_new_epoch_from_one() {
    let mut backend = Backend::fjall();
    let a = p("/b/s");
    let (topics, task) = Topics::open(backend.store(), TopicsOptions::default())
        .await
        .unwrap();
    let old = topics.append(a.clone(), evs(1..=3), None).await.unwrap();
    assert!(topics.delete(&a).await.unwrap());
    assert!(!topics.delete(&a).await.unwrap());
    assert!(topics.info(&a).await.unwrap().is_none());
    assert!(topics.read(&a, 1, 10).await.unwrap().is_empty());
    assert!(topics.list(&Path::root()).is_empty());
    let new = topics.append(a.clone(), evs(7..=7), None).await.unwrap();
    assert_eq!(new.first, 1);
    assert!(new.epoch > old.epoch);
    topics.shutdown().await.unwrap();
    task.await.unwrap();
    drop(topics);

    backend.restart().await;
    let topics = open(backend.store(), TopicsOptions::default()).await;
    let info = topics.info(&a).await.unwrap().unwrap();
    assert_eq!((info.epoch, info.first, info.last), (new.epoch, 1, 1));
    assert_eq!(data(&topics.read(&a, 1, 10).await.unwrap()), ["7"]);
}

/// Options with the topics under `/mem/` memory-only (and a fast retention pass).
fn memory_only_under_mem() -> TopicsOptions {
    fast_retention(vec![(
        "/mem/#",
        Retention {
            memory_only: true,
            ..Retention::default()
        },
    )])
}

fn fast_retention(rules: Vec<(&str, Retention)>) -> TopicsOptions {
    TopicsOptions {
        rules: RetentionRules::new(
            rules
                .into_iter()
                .map(|(pat, r)| (PathPattern::parse(pat, &PathLimits::default()).unwrap(), r))
                .collect(),
        ),
        retention_interval: Duration::from_millis(20),
        window_events: 4,
        memory_window_events: 4,
        ..TopicsOptions::default()
    }
}

async fn wait_first(topics: &Topics, topic: &Path, first: u64) {
    tokio::time::timeout(WAIT, async {
        loop {
            if topics.info(topic).await.unwrap().unwrap().first >= first {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{topic} not trimmed to {first}"));
}

#[tokio::test]
async fn retention_by_count_bytes_and_age() {
    let options = fast_retention(vec![
        (
            "/count/#",
            Retention {
                max_events: Some(3),
                ..Retention::default()
            },
        ),
        (
            "/bytes/#",
            Retention {
                // Each record is 10 bytes of header, 16 of content type, 3 of data.
                max_bytes: Some(29 * 2),
                ..Retention::default()
            },
        ),
        (
            "/age/#",
            Retention {
                max_age_ms: Some(200),
                ..Retention::default()
            },
        ),
    ]);
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let (c, b, a) = (p("/count/s"), p("/bytes/s"), p("/age/s"));
    topics
        .append(c.clone(), evs(100..=109), None)
        .await
        .unwrap();
    topics
        .append(b.clone(), evs(100..=109), None)
        .await
        .unwrap();
    topics
        .append(a.clone(), evs(100..=104), None)
        .await
        .unwrap();

    wait_first(&topics, &c, 8).await;
    assert_eq!(seqs(&topics.read(&c, 1, 100).await.unwrap()), [8, 9, 10]);
    wait_first(&topics, &b, 9).await;
    assert_eq!(seqs(&topics.read(&b, 1, 100).await.unwrap()), [9, 10]);
    let info = topics.info(&b).await.unwrap().unwrap();
    assert!(info.bytes <= 58, "bytes {}", info.bytes);

    // Age: nothing expires at first, everything after the max age.
    assert_eq!(topics.info(&a).await.unwrap().unwrap().first, 1);
    wait_first(&topics, &a, 6).await;
    let info = topics.info(&a).await.unwrap().unwrap();
    assert_eq!((info.first, info.last), (6, 5));
    // Numbering goes on after a topic was trimmed empty.
    assert_eq!(
        topics
            .append(a.clone(), evs(1..=1), None)
            .await
            .unwrap()
            .first,
        6
    );
}

#[tokio::test]
async fn retention_override_is_durable_and_applied() {
    let mut backend = Backend::fjall();
    let a = p("/b/s");
    {
        let (topics, task) = Topics::open(backend.store(), fast_retention(vec![]))
            .await
            .unwrap();
        topics.append(a.clone(), evs(1..=10), None).await.unwrap();
        let r = Retention {
            max_events: Some(2),
            ..Retention::default()
        };
        topics.set_retention(&a, Some(r)).await.unwrap();
        assert_eq!(topics.retention(&a), (r, true));
        wait_first(&topics, &a, 9).await;
        topics.shutdown().await.unwrap();
        task.await.unwrap();
    }
    backend.restart().await;
    let topics = open(backend.store(), fast_retention(vec![])).await;
    assert_eq!(topics.retention(&a).0.max_events, Some(2));
    topics.append(a.clone(), evs(11..=14), None).await.unwrap();
    wait_first(&topics, &a, 13).await;
    topics.set_retention(&a, None).await.unwrap();
    assert_eq!(topics.retention(&a), (Retention::default(), false));
}

#[tokio::test]
async fn memory_only_topics_never_touch_the_store() {
    let store = Arc::new(MemoryStore::default());
    let options = memory_only_under_mem();
    let topics = open(store.clone(), options).await;
    let m = p("/mem/x");
    let mut listener = topics.listener();
    listener.subscribe(m.clone(), None);
    topics.append(m.clone(), evs(1..=10), None).await.unwrap();
    assert!(store.list_logs("").unwrap().is_empty());
    // Only the in-memory window (4 events here) is readable.
    assert_eq!(seqs(&topics.read(&m, 1, 100).await.unwrap()), [7, 8, 9, 10]);
    // The listener subscribed before the append saw the window only, after a gap marker.
    let got = collect(&mut listener, 4).await;
    assert_eq!(
        got.first(),
        Some(&Delivery::Gap {
            topic: m.clone(),
            from: 1,
            to: 6
        })
    );
    assert_eq!(event_seqs(&got, &m), [7, 8, 9, 10]);
}

fn memory_rules(window: usize) -> TopicsOptions {
    TopicsOptions {
        memory_window_events: window,
        ..memory_only_under_mem()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_only_appends_from_many_tasks_get_every_number_once_in_each_writers_order() {
    let topics = open(Arc::new(MemoryStore::default()), memory_rules(100_000)).await;
    let m = p("/mem/race");
    let mut listener = topics.listener();
    listener.subscribe(m.clone(), Some(1));
    const WRITERS: u64 = 8;
    const EACH: u64 = 500;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (topics, m) = (topics.clone(), m.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let event = vec![ev(&format!("{w}:{i}"))];
                    // Both entry points: the synchronous one and the awaited one.
                    let appended = if i % 2 == 0 {
                        topics.try_enqueue(m.clone(), event).unwrap().await
                    } else {
                        topics.append(m.clone(), event, None).await
                    };
                    let appended = appended.unwrap();
                    assert_eq!(appended.first, appended.last);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let got = collect(&mut listener, (WRITERS * EACH) as usize).await;
    assert_eq!(
        event_seqs(&got, &m),
        (1..=WRITERS * EACH).collect::<Vec<_>>(),
        "every number once, in order"
    );
    let mut next = [0u64; WRITERS as usize];
    for d in &got {
        let Delivery::Event { event, .. } = d else {
            panic!("unexpected {d:?}");
        };
        let text = String::from_utf8(event.data.to_vec()).unwrap();
        let (w, i) = text.split_once(':').unwrap();
        let (w, i): (usize, u64) = (w.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[w], "writer {w}'s events out of order");
        next[w] += 1;
    }
}

#[tokio::test]
async fn memory_only_appends_do_not_wait_behind_a_stuck_commit_and_try_enqueue_reports_full() {
    let store = Arc::new(GatedStore::new_closed());
    let _release_on_exit = GateGuard(store.clone());
    let options = TopicsOptions {
        queue_capacity: 1,
        ..memory_rules(16)
    };
    let topics = open(store.clone(), options).await;
    let durable = p("/b/s");
    // The first durable append is taken off the queue and blocks in the store; the second
    // fills the queue.
    let first = topics.try_enqueue(durable.clone(), evs(1..=1)).unwrap();
    tokio::time::timeout(WAIT, store.entered.notified())
        .await
        .unwrap();
    let second = topics.try_enqueue(durable.clone(), evs(2..=2)).unwrap();
    match topics.try_enqueue(durable.clone(), evs(3..=3)) {
        Err(herald_engine::TryEnqueueError::Full { topic, events }) => {
            assert_eq!(topic, durable);
            assert_eq!(events, evs(3..=3), "the append is handed back whole");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // A memory-only topic has nothing to commit: done at once, queue full or not.
    let m = p("/mem/x");
    let mut listener = topics.listener();
    listener.subscribe(m.clone(), Some(1));
    let done = tokio::time::timeout(WAIT, topics.append(m.clone(), evs(1..=2), None))
        .await
        .expect("a memory-only append waited for the stuck commit")
        .unwrap();
    assert_eq!((done.first, done.last), (1, 2));
    let sync = topics.try_enqueue(m.clone(), evs(3..=3)).unwrap();
    assert_eq!(sync.await.unwrap().first, 3);
    assert_eq!(event_seqs(&collect(&mut listener, 3).await, &m), [1, 2, 3]);
    // Conditional appends are checked against the topic's number.
    assert!(matches!(
        topics.append(m.clone(), evs(4..=4), Some(2)).await,
        Err(TopicsError::Conflict {
            expected: 2,
            got: 3
        })
    ));
    assert_eq!(
        topics
            .append(m.clone(), evs(4..=4), Some(3))
            .await
            .unwrap()
            .last,
        4
    );
    store.open_gate();
    assert_eq!(first.await.unwrap().last, 1);
    assert_eq!(second.await.unwrap().last, 2);
    assert!(
        store.list_logs("t:").unwrap().len() == 1,
        "only the durable topic is stored"
    );
}

#[tokio::test]
async fn memory_only_topics_share_the_memory_budget() {
    let options = TopicsOptions {
        memory_budget_bytes: 4 * herald_engine::MIN_MEMORY_SHARE,
        ..memory_rules(100_000)
    };
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let kib = |i: u64| NewEvent::json(format!("{i:>1024}").into_bytes());
    let retained = |events: &[herald_engine::Event]| -> usize {
        events.iter().map(herald_engine::footprint).sum()
    };
    // Alone, a topic has the whole budget.
    let alone = p("/mem/alone");
    for i in 0..1000 {
        topics
            .append(alone.clone(), vec![kib(i)], None)
            .await
            .unwrap();
    }
    let kept = topics.read(&alone, 1, usize::MAX).await.unwrap();
    let bytes = retained(&kept);
    assert!(
        bytes <= 4 * herald_engine::MIN_MEMORY_SHARE && bytes > 3 * herald_engine::MIN_MEMORY_SHARE,
        "{bytes} bytes kept by the only memory-only topic"
    );
    assert_eq!(kept.last().map(|e| e.seq), Some(1000));
    assert_eq!(
        topics.info(&alone).await.unwrap().unwrap().first,
        kept[0].seq,
        "what the window dropped is gone"
    );
    // Eight topics share it, each down to the least share.
    let many: Vec<Path> = (0..7).map(|i| p(&format!("/mem/t{i}"))).collect();
    for i in 0..1000 {
        for t in many.iter().chain([&alone]) {
            topics.append(t.clone(), vec![kib(i)], None).await.unwrap();
        }
    }
    for t in many.iter().chain([&alone]) {
        let bytes = retained(&topics.read(t, 1, usize::MAX).await.unwrap());
        assert!(
            bytes <= herald_engine::MIN_MEMORY_SHARE && bytes > herald_engine::MIN_MEMORY_SHARE / 2,
            "{t}: {bytes} bytes kept"
        );
    }
}

/// A topic marks itself in a listener's signal only when the listener has taken the last
/// mark: whatever the interleaving of appends and reads, every append is seen.
#[tokio::test]
async fn a_listener_is_woken_again_after_each_read_however_appends_interleave() {
    for options in [TopicsOptions::default(), memory_rules(1_000)] {
        let topics = open(Arc::new(MemoryStore::default()), options).await;
        let (a, b) = (p("/mem/wa"), p("/mem/wb"));
        let mut listener = topics.listener();
        listener.subscribe(a.clone(), Some(1));
        listener.subscribe(b.clone(), Some(1));
        let mut seen = 0;
        for round in 1..=50u64 {
            // 1, 2 or 3 appends (to one topic or both) before the listener looks.
            for k in 0..(round % 3 + 1) {
                let topic = if (round + k) % 2 == 0 { &a } else { &b };
                topics
                    .append(topic.clone(), evs(1..=1), None)
                    .await
                    .unwrap();
                seen += 1;
            }
            let mut have = 0;
            tokio::time::timeout(WAIT, async {
                while have < seen {
                    have += listener
                        .next()
                        .await
                        .unwrap()
                        .iter()
                        .filter(|d| matches!(d, Delivery::Event { .. }))
                        .count();
                }
            })
            .await
            .unwrap_or_else(|_| panic!("round {round}: {have} of {seen} events"));
            seen = 0;
        }
    }
}

#[tokio::test]
async fn a_memory_only_topic_deleted_and_appended_again_starts_a_new_epoch() {
    let topics = open(Arc::new(MemoryStore::default()), memory_rules(16)).await;
    let m = p("/mem/d");
    let before = topics.append(m.clone(), evs(1..=3), None).await.unwrap();
    let mut listener = topics.listener();
    listener.subscribe(m.clone(), Some(1));
    assert_eq!(event_seqs(&collect(&mut listener, 3).await, &m), [1, 2, 3]);
    assert!(topics.delete(&m).await.unwrap());
    assert!(topics.info(&m).await.unwrap().is_none());
    let after = topics.append(m.clone(), evs(9..=9), None).await.unwrap();
    assert!(after.epoch > before.epoch, "{after:?} after {before:?}");
    assert_eq!((after.first, after.last), (1, 1));
    let got = collect(&mut listener, 1).await;
    assert!(
        got.iter().any(|d| matches!(d, Delivery::Reset { .. })),
        "the listener is told of the new incarnation: {got:?}"
    );
    assert_eq!(data(&topics.read(&m, 1, 10).await.unwrap()), ["9"]);
}

#[tokio::test]
async fn a_failed_commit_stops_appends_and_nothing_is_visible() {
    let store = Arc::new(GatedStore::new_open());
    let topics = open(store.clone(), TopicsOptions::default()).await;
    let a = p("/b/s");
    topics.append(a.clone(), evs(1..=1), None).await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        topics.append(a.clone(), evs(2..=2), None).await,
        Err(TopicsError::Store(_))
    ));
    store.fail.store(false, Ordering::SeqCst);
    assert!(matches!(
        topics.append(a.clone(), evs(3..=3), None).await,
        Err(TopicsError::Store(_))
    ));
    assert_eq!(seqs(&topics.read(&a, 1, 10).await.unwrap()), [1]);
    assert_eq!(topics.info(&a).await.unwrap().unwrap().last, 1);
}

/// Once a commit has failed, memory-only topics refuse appends too, and the calls whose
/// outcome nobody awaits (detached, remembered) still report the refusal.
#[tokio::test]
async fn after_a_failed_commit_memory_only_appends_report_the_refusal() {
    let store = Arc::new(GatedStore::new_open());
    let topics = open(store.clone(), memory_only_under_mem()).await;
    let (mem, durable) = (p("/mem/a"), p("/durable/x"));
    let mut last = herald_engine::LastTopic::default();
    topics
        .try_enqueue_to(&mut last, mem.clone(), evs(1..=1))
        .unwrap()
        .await
        .unwrap();
    store.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        topics.append(durable.clone(), evs(1..=1), None).await,
        Err(TopicsError::Store(_))
    ));
    let remembered = topics.try_append_remembered(&mut last, mem.clone(), evs(2..=2));
    assert!(
        matches!(
            remembered,
            Err(herald_engine::RememberedAppend::Failed(TopicsError::Store(
                _
            )))
        ),
        "{remembered:?}"
    );
    let detached = topics.try_enqueue_detached_to(&mut last, mem.clone(), evs(3..=3));
    assert!(
        matches!(
            detached,
            Err(herald_engine::TryEnqueueError::Failed(TopicsError::Store(
                _
            )))
        ),
        "{detached:?}"
    );
    assert_eq!(data(&topics.read(&mem, 1, 10).await.unwrap()), ["1"]);
}

#[tokio::test]
async fn listener_replays_from_disk_then_goes_live_without_gap_or_duplicate() {
    let options = TopicsOptions {
        window_events: 8,
        listener_batch: 50,
        ..TopicsOptions::default()
    };
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let a = p("/b/s");
    topics.append(a.clone(), evs(1..=500), None).await.unwrap();

    let mut listener = topics.listener();
    assert!(listener.subscribe(a.clone(), Some(3)));
    assert!(!listener.subscribe(a.clone(), Some(1)));
    let writer = {
        let (topics, a) = (topics.clone(), a.clone());
        tokio::spawn(async move {
            for i in 501..=700 {
                topics.append(a.clone(), evs(i..=i), None).await.unwrap();
            }
        })
    };
    let got = collect(&mut listener, 698).await;
    writer.await.unwrap();
    assert_eq!(event_seqs(&got, &a), (3..=700).collect::<Vec<_>>());
    assert!(got.iter().all(|d| matches!(d, Delivery::Event { .. })));
    assert_eq!(listener.position(&a).unwrap().next, 701);
}

#[tokio::test]
async fn subscribe_without_from_gets_only_new_events_and_waits_for_new_topics() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let (a, later) = (p("/b/a"), p("/b/later"));
    topics.append(a.clone(), evs(1..=3), None).await.unwrap();
    let mut listener = topics.listener();
    listener.subscribe(a.clone(), None);
    listener.subscribe(later.clone(), None);
    topics
        .append(later.clone(), evs(1..=2), None)
        .await
        .unwrap();
    topics.append(a.clone(), evs(4..=4), None).await.unwrap();
    let got = collect(&mut listener, 3).await;
    assert_eq!(event_seqs(&got, &a), [4]);
    assert_eq!(event_seqs(&got, &later), [1, 2]);
    assert!(got.iter().all(|d| matches!(d, Delivery::Event { .. })));
}

#[tokio::test]
async fn a_from_beyond_the_end_is_a_recreated_topic_and_gets_a_reset() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let (a, gone) = (p("/b/a"), p("/b/gone"));
    let epoch = topics
        .append(a.clone(), evs(1..=2), None)
        .await
        .unwrap()
        .epoch;
    let mut listener = topics.listener();
    // A client that saw seq 4 of an earlier incarnation (this one has only 2 events).
    listener.subscribe(a.clone(), Some(5));
    // A client that saw events of a topic deleted since, not yet recreated.
    listener.subscribe(gone.clone(), Some(3));
    // The next event is not "beyond": no reset.
    let mut exact = topics.listener();
    exact.subscribe(a.clone(), Some(3));

    let got = collect(&mut listener, 2).await;
    assert_eq!(
        got.first(),
        Some(&Delivery::Reset {
            topic: a.clone(),
            epoch
        })
    );
    assert_eq!(event_seqs(&got, &a), [1, 2]);
    let new = topics.append(gone.clone(), evs(1..=1), None).await.unwrap();
    let got = collect(&mut listener, 1).await;
    assert_eq!(
        got.first(),
        Some(&Delivery::Reset {
            topic: gone.clone(),
            epoch: new.epoch
        })
    );
    assert_eq!(event_seqs(&got, &gone), [1]);

    topics.append(a.clone(), evs(3..=3), None).await.unwrap();
    let got = collect(&mut exact, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_seqs(&got, &a), [3]);
}

#[tokio::test]
async fn listener_reports_trimmed_history_as_a_gap() {
    let options = fast_retention(vec![(
        "/r/#",
        Retention {
            max_events: Some(5),
            ..Retention::default()
        },
    )]);
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let a = p("/r/s");
    topics.append(a.clone(), evs(1..=20), None).await.unwrap();
    wait_first(&topics, &a, 16).await;
    let mut listener = topics.listener();
    listener.subscribe(a.clone(), Some(2));
    let got = collect(&mut listener, 5).await;
    assert_eq!(
        got.first(),
        Some(&Delivery::Gap {
            topic: a.clone(),
            from: 2,
            to: 15
        })
    );
    assert_eq!(event_seqs(&got, &a), [16, 17, 18, 19, 20]);
}

#[tokio::test]
async fn listener_sees_a_reset_when_the_topic_is_recreated() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let a = p("/b/s");
    let old = topics.append(a.clone(), evs(1..=2), None).await.unwrap();
    let mut listener = topics.listener();
    listener.subscribe(a.clone(), Some(1));
    assert_eq!(event_seqs(&collect(&mut listener, 2).await, &a), [1, 2]);
    topics.delete(&a).await.unwrap();
    let new = topics.append(a.clone(), evs(9..=10), None).await.unwrap();
    let got = collect(&mut listener, 2).await;
    assert_eq!(
        got.first(),
        Some(&Delivery::Reset {
            topic: a.clone(),
            epoch: new.epoch
        })
    );
    assert_eq!(event_seqs(&got, &a), [1, 2]);
    assert_ne!(old.epoch, new.epoch);

    // Resuming with the old epoch also says so.
    let mut resumed = topics.listener();
    resumed.resume(a.clone(), old.epoch, 3);
    let got = collect(&mut resumed, 2).await;
    assert!(matches!(got.first(), Some(Delivery::Reset { .. })));
    assert_eq!(event_seqs(&got, &a), [1, 2]);
}

#[tokio::test]
async fn reconnecting_listeners_miss_nothing_and_repeat_nothing() {
    let options = TopicsOptions {
        window_events: 16,
        listener_batch: 7,
        ..TopicsOptions::default()
    };
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let a = p("/b/s");
    let total = 2000u64;
    let writer = {
        let (topics, a) = (topics.clone(), a.clone());
        tokio::spawn(async move {
            for i in 1..=total / 4 {
                topics
                    .append(a.clone(), evs(i * 4 - 3..=i * 4), None)
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let (mut epoch, mut next) = (None, 1u64);
    tokio::time::timeout(WAIT, async {
        while (seen.len() as u64) < total {
            // A new "connection" each round, resuming where the last one stopped.
            let mut listener = topics.listener();
            match epoch {
                Some(e) => listener.resume(a.clone(), e, next),
                None => listener.subscribe(a.clone(), Some(next)),
            };
            for _ in 0..3 {
                if seen.len() as u64 == total {
                    break;
                }
                for d in listener.next().await.unwrap() {
                    if let Delivery::Event {
                        epoch: e, event, ..
                    } = d
                    {
                        epoch = Some(e);
                        next = event.seq + 1;
                        seen.push(event.seq);
                    }
                }
            }
        }
    })
    .await
    .expect("listeners did not catch up");
    writer.await.unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

#[tokio::test]
async fn cancelling_next_loses_nothing() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let a = p("/b/s");
    let mut listener = topics.listener();
    listener.subscribe(a.clone(), None);
    let mut seen = Vec::new();
    for i in 1..=50u64 {
        topics.append(a.clone(), evs(i..=i), None).await.unwrap();
        // A zero timeout cancels `next` at its first await point, sometimes mid-read.
        if let Ok(Ok(batch)) = tokio::time::timeout(Duration::ZERO, listener.next()).await {
            seen.extend(event_seqs(&batch, &a));
        }
    }
    seen.extend(event_seqs(
        &collect(&mut listener, 50 - seen.len()).await,
        &a,
    ));
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn cancelling_next_during_reads_from_the_store_loses_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let names: Vec<Path> = (0..5).map(|i| p(&format!("/c/{i}"))).collect();
    {
        let topics = open(store.clone(), TopicsOptions::default()).await;
        for t in &names {
            topics.append(t.clone(), evs(1..=3), None).await.unwrap();
        }
        topics.shutdown().await.unwrap();
    }
    // Reopened: the windows are empty, so every read goes to the store (an await point).
    let topics = open(store, TopicsOptions::default()).await;
    let mut listener = topics.listener();
    for t in &names {
        listener.subscribe(t.clone(), Some(1));
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        // Polled once, then dropped: cancelled at its first await (a read from the store).
        if let Some(Ok(batch)) = futures_util::FutureExt::now_or_never(listener.next()) {
            seen.extend(batch);
        }
        tokio::task::yield_now().await;
    }
    let events = |ds: &[Delivery]| {
        ds.iter()
            .filter(|d| matches!(d, Delivery::Event { .. }))
            .count()
    };
    let missing = 15 - events(&seen);
    if missing > 0 {
        seen.extend(collect(&mut listener, missing).await);
    }
    for t in &names {
        assert_eq!(event_seqs(&seen, t), [1, 2, 3], "{t}");
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let (a, b) = (p("/b/a"), p("/b/b"));
    let mut listener = topics.listener();
    listener.subscribe(a.clone(), None);
    listener.subscribe(b.clone(), None);
    assert!(listener.unsubscribe(&a));
    assert!(!listener.unsubscribe(&a));
    assert!(!listener.is_subscribed(&a));
    topics.append(a.clone(), evs(1..=1), None).await.unwrap();
    topics.append(b.clone(), evs(1..=1), None).await.unwrap();
    let got = collect(&mut listener, 1).await;
    assert_eq!(event_seqs(&got, &a), Vec::<u64>::new());
    assert_eq!(event_seqs(&got, &b), [1]);
}

fn pattern(s: &str) -> PathPattern {
    PathPattern::parse(s, &PathLimits::default()).unwrap()
}

#[tokio::test]
async fn wildcard_subscriptions_follow_existing_and_new_topics() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let (old, new, deep, other) = (p("/s/old/t"), p("/s/new/t"), p("/s/new/t/x"), p("/x/a/t"));
    topics.append(old.clone(), evs(1..=2), None).await.unwrap();
    topics
        .append(other.clone(), evs(1..=1), None)
        .await
        .unwrap();

    let mut listener = topics.listener();
    assert!(listener.subscribe_pattern(pattern("/s/+/t"), Some(1)));
    assert!(!listener.subscribe_pattern(pattern("/s/+/t"), None));
    // Existing matches replay from `from`; topics created later from their first event.
    topics.append(new.clone(), evs(1..=3), None).await.unwrap();
    topics.append(deep.clone(), evs(1..=1), None).await.unwrap();
    topics
        .append(other.clone(), evs(2..=2), None)
        .await
        .unwrap();
    let got = collect(&mut listener, 5).await;
    assert_eq!(event_seqs(&got, &old), [1, 2]);
    assert_eq!(event_seqs(&got, &new), [1, 2, 3]);
    assert!(event_seqs(&got, &deep).is_empty());
    assert!(event_seqs(&got, &other).is_empty());
    assert!(listener.is_subscribed(&new));

    // `#` matches the prefix itself and everything below.
    let mut all = topics.listener();
    all.subscribe_pattern(pattern("/s/new/#"), None);
    topics.append(new.clone(), evs(4..=4), None).await.unwrap();
    topics.append(deep.clone(), evs(2..=2), None).await.unwrap();
    let got = collect(&mut all, 2).await;
    assert_eq!(event_seqs(&got, &new), [4]);
    assert_eq!(event_seqs(&got, &deep), [2]);

    // Ending the wildcard ends the topics it brought in, and stops new ones.
    assert!(listener.unsubscribe_pattern(&pattern("/s/+/t")));
    assert!(!listener.unsubscribe_pattern(&pattern("/s/+/t")));
    assert!(!listener.is_subscribed(&new) && !listener.is_subscribed(&old));
    listener.subscribe(other.clone(), None);
    topics
        .append(p("/s/later/t"), evs(1..=1), None)
        .await
        .unwrap();
    topics
        .append(other.clone(), evs(3..=3), None)
        .await
        .unwrap();
    let got = collect(&mut listener, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event_seqs(&got, &other), [3]);
}

#[tokio::test]
async fn a_wildcard_racing_topic_creation_misses_nothing() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let n = 200u64;
    let writer = {
        let topics = topics.clone();
        tokio::spawn(async move {
            for i in 0..n {
                topics
                    .append(p(&format!("/race/{i}")), evs(1..=1), None)
                    .await
                    .unwrap();
            }
        })
    };
    tokio::task::yield_now().await;
    let mut listener = topics.listener();
    listener.subscribe_pattern(pattern("/race/+"), Some(1));
    let got = collect(&mut listener, n as usize).await;
    writer.await.unwrap();
    let mut seen: Vec<String> = got
        .iter()
        .filter_map(|d| match d {
            Delivery::Event { topic, event, .. } => {
                assert_eq!(event.seq, 1);
                Some(topic.to_string())
            }
            _ => None,
        })
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("/race/{i}")).collect();
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn enqueued_appends_keep_their_order_and_share_commits() {
    let topics = open(Arc::new(MemoryStore::default()), TopicsOptions::default()).await;
    let a = p("/b/pipelined");
    let mut pending = Vec::new();
    for i in 1..=500u64 {
        pending.push(topics.enqueue(a.clone(), evs(i..=i)).await.unwrap());
    }
    for (i, p) in pending.into_iter().enumerate() {
        let appended = p.await.unwrap();
        assert_eq!(appended.first, i as u64 + 1);
    }
    let got = topics.read(&a, 1, 1000).await.unwrap();
    assert_eq!(
        data(&got),
        (1..=500).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(matches!(
        topics.enqueue(a.clone(), vec![]).await,
        Err(TopicsError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_listener_on_thousands_of_topics_gets_every_event_once() {
    let options = TopicsOptions {
        listener_batch: 64,
        ..TopicsOptions::default()
    };
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    // 1,000 topics exist before the wildcard subscription, 1,000 are created after it.
    for i in 0..1000u64 {
        topics
            .append(p(&format!("/wide/{i}")), evs(1..=1), None)
            .await
            .unwrap();
    }
    let mut listener = topics.listener();
    let pattern = herald_core::PathPattern::parse("/wide/#", &Default::default()).unwrap();
    listener.subscribe_pattern(pattern, None);
    let mut exact = topics.listener();
    exact.subscribe(p("/wide/7"), None);
    let writer = {
        let topics = topics.clone();
        tokio::spawn(async move {
            // Each of the 2,000 topics gets 2 events, interleaved.
            for round in 0..2u64 {
                for i in 0..2000u64 {
                    let seq = if i < 1000 { 2 + round } else { 1 + round };
                    topics
                        .append(p(&format!("/wide/{i}")), evs(seq..=seq), None)
                        .await
                        .unwrap();
                }
            }
        })
    };
    let got = collect(&mut listener, 4000).await;
    writer.await.unwrap();
    let mut per_topic: std::collections::HashMap<Path, Vec<u64>> = Default::default();
    for d in got {
        if let Delivery::Event { topic, event, .. } = d {
            per_topic.entry(topic).or_default().push(event.seq);
        }
    }
    assert_eq!(per_topic.len(), 2000);
    for i in 0..2000u64 {
        let want: Vec<u64> = if i < 1000 { vec![2, 3] } else { vec![1, 2] };
        assert_eq!(per_topic[&p(&format!("/wide/{i}"))], want, "/wide/{i}");
    }
    // The exact subscriber of one of them saw just its two live events.
    assert_eq!(
        event_seqs(&collect(&mut exact, 2).await, &p("/wide/7")),
        [2, 3]
    );
}

/// Events of a topic that several listeners follow are shared by all of them and keep the
/// first rendering a wire format makes; events of a topic with one listener render anew
/// (a kept rendering would only hold memory). Durable and memory-only topics alike.
#[tokio::test]
async fn events_followed_by_several_listeners_are_rendered_once() {
    use std::sync::atomic::AtomicUsize;

    static WIRE: herald_engine::Wire = herald_engine::Wire::new("test");
    let options = memory_only_under_mem();
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    for topic in [p("/mem/x"), p("/durable/x")] {
        let renders = AtomicUsize::new(0);
        let render = |e: &herald_engine::Event| {
            let mut out = Vec::new();
            e.render_into(&WIRE, &mut out, |e, out| {
                renders.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(format!("<{}>", e.seq).as_bytes());
            });
            out
        };
        let first_event = |ds: Vec<Delivery>| match ds.into_iter().next() {
            Some(Delivery::Event { event, .. }) => event,
            other => panic!("{other:?}"),
        };

        // One listener: every call renders.
        let mut one = topics.listener();
        one.subscribe(topic.clone(), None);
        topics
            .append(topic.clone(), evs(1..=1), None)
            .await
            .unwrap();
        let e = first_event(collect(&mut one, 1).await);
        assert_eq!(render(&e), b"<1>");
        assert_eq!(render(&e), b"<1>");
        assert_eq!(renders.load(Ordering::Relaxed), 2, "{topic}");

        // Two listeners: both get the same event, rendered once.
        let mut two = topics.listener();
        two.subscribe(topic.clone(), None);
        topics
            .append(topic.clone(), evs(2..=2), None)
            .await
            .unwrap();
        let a = first_event(collect(&mut one, 1).await);
        let b = first_event(collect(&mut two, 1).await);
        assert!(a.ptr_eq(&b), "{topic}");
        assert_eq!(render(&a), b"<2>");
        assert_eq!(render(&b), b"<2>");
        assert_eq!(renders.load(Ordering::Relaxed), 3, "{topic}");
    }
}

/// A publisher's remembered topic (`try_enqueue_to`) is used only for its own path and only
/// while that incarnation lives: appends to another topic go there, and after a delete the
/// next append starts the new incarnation at 1. Durable topics are not remembered.
#[tokio::test]
async fn a_remembered_topic_is_left_for_other_paths_and_after_a_delete() {
    let options = memory_only_under_mem();
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let mut last = herald_engine::LastTopic::default();
    let (a, b, durable) = (p("/mem/a"), p("/mem/b"), p("/durable/x"));
    let mut append = async |topic: &Path, n: u64| {
        topics
            .try_enqueue_to(&mut last, topic.clone(), evs(n..=n))
            .unwrap()
            .await
            .unwrap()
    };
    let a1 = append(&a, 1).await;
    assert_eq!((a1.first, append(&a, 2).await.last), (1, 2));
    assert_eq!(append(&b, 1).await.first, 1);
    assert_eq!(append(&durable, 1).await.first, 1);
    assert_eq!(append(&a, 3).await.first, 3);
    topics.delete(&a).await.unwrap();
    let again = append(&a, 4).await;
    assert_eq!(again.first, 1);
    assert!(again.epoch > a1.epoch);
    assert_eq!(data(&topics.read(&a, 1, 10).await.unwrap()), ["4"]);
    assert_eq!(data(&topics.read(&b, 1, 10).await.unwrap()), ["1"]);
    assert_eq!(data(&topics.read(&durable, 1, 10).await.unwrap()), ["1"]);
}

/// `try_append_remembered` appends only to the memory-only topic the handle remembers, and
/// hands anything else back as given: another path, a topic not yet remembered, a durable
/// topic, the remembered topic once deleted. Invalid events are refused.
#[tokio::test]
async fn only_the_remembered_topic_is_appended_to_at_once() {
    use herald_engine::RememberedAppend;
    let options = memory_only_under_mem();
    let topics = open(Arc::new(MemoryStore::default()), options).await;
    let mut last = herald_engine::LastTopic::default();
    let (a, b, durable) = (p("/mem/a"), p("/mem/b"), p("/durable/x"));
    let handed_back =
        |result: Result<(), RememberedAppend>, topic: &Path, want: &[&str]| match result {
            Err(RememberedAppend::Elsewhere { topic: t, events }) => {
                assert_eq!(&t, topic);
                let got: Vec<_> = events.iter().map(|e| e.data.as_ref()).collect();
                let want: Vec<_> = want.iter().map(|d| d.as_bytes()).collect();
                assert_eq!(got, want);
            }
            other => panic!("{topic}: not handed back: {other:?}"),
        };
    // Nothing remembered yet.
    handed_back(
        topics.try_append_remembered(&mut last, a.clone(), evs(1..=2)),
        &a,
        &["1", "2"],
    );
    topics
        .try_enqueue_to(&mut last, a.clone(), evs(1..=1))
        .unwrap()
        .await
        .unwrap();
    topics
        .try_append_remembered(&mut last, a.clone(), evs(2..=3))
        .unwrap();
    assert_eq!(
        data(&topics.read(&a, 1, 10).await.unwrap()),
        ["1", "2", "3"]
    );
    // Another memory-only path, and a durable one, go back to the caller untouched.
    handed_back(
        topics.try_append_remembered(&mut last, b.clone(), evs(1..=1)),
        &b,
        &["1"],
    );
    assert!(topics.read(&b, 1, 10).await.unwrap().is_empty());
    topics
        .try_enqueue_to(&mut last, durable.clone(), evs(1..=1))
        .unwrap()
        .await
        .unwrap();
    handed_back(
        topics.try_append_remembered(&mut last, durable.clone(), evs(2..=2)),
        &durable,
        &["2"],
    );
    assert_eq!(data(&topics.read(&durable, 1, 10).await.unwrap()), ["1"]);
    // The durable append did not replace what is remembered.
    topics
        .try_append_remembered(&mut last, a.clone(), evs(4..=4))
        .unwrap();
    assert_eq!(data(&topics.read(&a, 4, 10).await.unwrap()), ["4"]);
    // Deleted: its next incarnation is not remembered.
    topics.delete(&a).await.unwrap();
    handed_back(
        topics.try_append_remembered(&mut last, a.clone(), evs(5..=5)),
        &a,
        &["5"],
    );
    assert!(topics.read(&a, 1, 10).await.unwrap().is_empty());
    // Invalid: refused, whatever is remembered.
    let refused = topics.try_append_remembered(&mut last, a.clone(), Vec::new());
    assert!(
        matches!(
            refused,
            Err(RememberedAppend::Failed(TopicsError::Invalid(_)))
        ),
        "{refused:?}"
    );
}

// The commit pipeline: one commit in flight while the next batch is numbered.

type AppendTask = tokio::task::JoinHandle<Result<herald_engine::Appended, TopicsError>>;

fn spawn_append(
    topics: &Topics,
    topic: &Path,
    range: std::ops::RangeInclusive<u64>,
    expect_last: Option<u64>,
) -> AppendTask {
    let (topics, topic) = (topics.clone(), topic.clone());
    tokio::spawn(async move { topics.append(topic, evs(range), expect_last).await })
}

async fn joined(task: AppendTask) -> herald_engine::Appended {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("append did not finish")
        .unwrap()
        .unwrap()
}

/// The last seq the actor has numbered for `topic` (committed, in flight or staged), as the
/// conflict of an impossible expectation reports it.
async fn numbered_last(topics: &Topics, topic: &Path) -> u64 {
    match topics
        .append(topic.clone(), evs(0..=0), Some(u64::MAX))
        .await
    {
        Err(TopicsError::Conflict { got, .. }) => got,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Waits until the actor has numbered `topic` up to `last`.
async fn wait_numbered(topics: &Topics, topic: &Path, last: u64) {
    tokio::time::timeout(WAIT, async {
        while numbered_last(topics, topic).await != last {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{topic} not numbered up to {last}"));
}

/// One acknowledged append: where its events went, and their payloads.
#[derive(Debug, Clone)]
struct Ack {
    topic: Path,
    appended: herald_engine::Appended,
    payloads: Vec<String>,
}

/// Checks that the acknowledged appends of each topic number it 1, 2, ... without gap or
/// overlap in one epoch; returns each topic's payloads by seq.
fn payloads_by_topic(acks: &[Ack]) -> std::collections::HashMap<Path, Vec<String>> {
    let mut by_topic: std::collections::HashMap<Path, Vec<&Ack>> = Default::default();
    for ack in acks {
        by_topic.entry(ack.topic.clone()).or_default().push(ack);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut acks)| {
            acks.sort_by_key(|a| a.appended.first);
            let mut payloads = Vec::new();
            for a in &acks {
                assert_eq!(
                    a.appended.epoch, acks[0].appended.epoch,
                    "{topic}: one epoch"
                );
                assert_eq!(
                    a.appended.first,
                    payloads.len() as u64 + 1,
                    "{topic}: contiguous"
                );
                assert_eq!(
                    a.appended.last - a.appended.first + 1,
                    a.payloads.len() as u64,
                    "{topic}: one seq per event"
                );
                payloads.extend(a.payloads.iter().cloned());
            }
            (topic, payloads)
        })
        .collect()
}

/// Appends `appends` times to `topic` as writer `w`, 1 to 3 events each, keeping up to 4
/// appends queued (and every 10th awaited alone); returns the acknowledgements in order.
async fn write(
    topics: Topics,
    topic: Path,
    w: usize,
    appends: u64,
    acked: Arc<AtomicU64>,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut queued = std::collections::VecDeque::new();
    let take = async |queued: &mut std::collections::VecDeque<(
        herald_engine::PendingAppend,
        Vec<String>,
    )>| {
        let (pending, payloads) = queued.pop_front().unwrap();
        let appended = pending.await.unwrap();
        acked.fetch_add(1, Ordering::SeqCst);
        Ack {
            topic: topic.clone(),
            appended,
            payloads,
        }
    };
    for i in 0..appends {
        let payloads: Vec<String> = (0..1 + i % 3).map(|k| format!("{w}:{i}:{k}")).collect();
        let events = payloads.iter().map(|s| ev(s)).collect();
        if i % 10 == 9 {
            while !queued.is_empty() {
                acks.push(take(&mut queued).await);
            }
            let appended = topics.append(topic.clone(), events, None).await.unwrap();
            acked.fetch_add(1, Ordering::SeqCst);
            acks.push(Ack {
                topic: topic.clone(),
                appended,
                payloads,
            });
            continue;
        }
        let pending = topics.enqueue(topic.clone(), events).await.unwrap();
        queued.push_back((pending, payloads));
        if queued.len() > 4 {
            acks.push(take(&mut queued).await);
        }
    }
    while !queued.is_empty() {
        acks.push(take(&mut queued).await);
    }
    // One writer's appends to one topic are applied in the order it queued them.
    for pair in acks.windows(2) {
        assert!(
            pair[0].appended.last < pair[1].appended.first,
            "writer {w}: {pair:?}"
        );
    }
    acks
}

/// Many writers on several durable topics, some created while others are being written: with
/// batches of 8 appends, every commit overlaps the numbering of the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_writers_get_contiguous_numbers_seen_once_and_kept_after_reopen() {
    const WRITERS_PER_TOPIC: usize = 3;
    const APPENDS: u64 = 40;
    let mut backend = Backend::fjall();
    let store = Arc::new(GatedStore::new(backend.store(), false));
    let options = TopicsOptions {
        max_batch: 8,
        queue_capacity: 32,
        window_events: 16,
        listener_batch: 50,
        ..TopicsOptions::default()
    };
    let (topics, task) = Topics::open(store.clone(), options).await.unwrap();
    let mut listener = topics.listener();
    listener.subscribe_pattern(pattern("/load/#"), Some(1));
    let acked = Arc::new(AtomicU64::new(0));
    let spawn_wave = |paths: Vec<Path>, first_writer: usize| {
        let mut writers = Vec::new();
        for (i, topic) in paths.into_iter().enumerate() {
            for k in 0..WRITERS_PER_TOPIC {
                let w = first_writer + i * WRITERS_PER_TOPIC + k;
                writers.push(tokio::spawn(write(
                    topics.clone(),
                    topic.clone(),
                    w,
                    APPENDS,
                    acked.clone(),
                )));
            }
        }
        writers
    };
    let old: Vec<Path> = (0..3).map(|i| p(&format!("/load/old/{i}"))).collect();
    let new: Vec<Path> = (0..3).map(|i| p(&format!("/load/new/{i}"))).collect();
    let mut writers = spawn_wave(old.clone(), 0);
    // The second wave creates its topics while the first is half done.
    let half = (old.len() * WRITERS_PER_TOPIC) as u64 * APPENDS / 2;
    tokio::time::timeout(WAIT, async {
        while acked.load(Ordering::SeqCst) < half {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the first wave made no progress");
    writers.extend(spawn_wave(new.clone(), 100));
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(tokio::time::timeout(WAIT, w).await.unwrap().unwrap());
    }
    let expected = payloads_by_topic(&acks);
    assert_eq!(expected.len(), old.len() + new.len());

    // The listener saw every event once, in order, and nothing else.
    let total: usize = expected.values().map(Vec::len).sum();
    let got = collect(&mut listener, total).await;
    assert!(
        got.iter().all(|d| matches!(d, Delivery::Event { .. })),
        "{got:?}"
    );
    for (topic, payloads) in &expected {
        let seen: Vec<String> = got
            .iter()
            .filter_map(|d| match d {
                Delivery::Event {
                    topic: t, event, ..
                } if t == topic => Some(String::from_utf8(event.data.to_vec()).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(
            event_seqs(&got, topic),
            (1..=payloads.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(&seen, payloads, "{topic}");
        assert_eq!(
            data(&topics.read(topic, 1, usize::MAX).await.unwrap()),
            *payloads
        );
    }
    topics.shutdown().await.unwrap();
    task.await.unwrap();
    assert_eq!(store.most_running(), 1, "one commit in flight at a time");
    assert!(
        store.started() < acks.len(),
        "{} commits for {} appends",
        store.started(),
        acks.len()
    );
    drop((topics, listener, store));

    backend.restart().await;
    let topics = open(backend.store(), TopicsOptions::default()).await;
    assert_eq!(topics.list(&p("/load")).len(), expected.len());
    for (topic, payloads) in &expected {
        let info = topics.info(topic).await.unwrap().unwrap();
        assert_eq!(
            (info.first, info.last),
            (1, payloads.len() as u64),
            "{topic}"
        );
        assert_eq!(
            data(&topics.read(topic, 1, usize::MAX).await.unwrap()),
            *payloads
        );
    }
}

#[tokio::test]
async fn conditional_appends_are_checked_against_events_numbered_while_a_commit_is_in_flight() {
    let backend = Backend::fjall();
    let store = Arc::new(GatedStore::new(backend.store(), true));
    let _open_on_exit = GateGuard(store.clone());
    let topics = open(store.clone(), TopicsOptions::default()).await;
    let t = p("/b/cond");
    // Creates the topic; its commit waits at the gate.
    let first = spawn_append(&topics, &t, 1..=2, Some(0));
    store.wait_started(1).await;
    assert!(
        topics.info(&t).await.unwrap().is_none(),
        "not visible before durable"
    );
    assert_eq!(numbered_last(&topics, &t).await, 2);
    // Expects what the first produced, while the first is in flight: numbered after it.
    let second = spawn_append(&topics, &t, 3..=4, Some(2));
    wait_numbered(&topics, &t, 4).await;
    // Expecting the same again conflicts at once, with what is numbered, not committed.
    let third = tokio::time::timeout(WAIT, topics.append(t.clone(), evs(5..=5), Some(2)))
        .await
        .expect("a conflict waited for the commit in flight");
    assert!(
        matches!(
            third,
            Err(TopicsError::Conflict {
                expected: 2,
                got: 4
            })
        ),
        "{third:?}"
    );
    let fourth = spawn_append(&topics, &t, 5..=5, Some(4));
    wait_numbered(&topics, &t, 5).await;
    assert_eq!(
        store.started(),
        1,
        "the staged batch waits for the commit in flight"
    );
    assert!(topics.read(&t, 1, 10).await.unwrap().is_empty());

    store.open_gate();
    let (first, second, fourth) = (
        joined(first).await,
        joined(second).await,
        joined(fourth).await,
    );
    assert_eq!(
        [
            (first.first, first.last),
            (second.first, second.last),
            (fourth.first, fourth.last)
        ],
        [(1, 2), (3, 4), (5, 5)]
    );
    assert!(
        first.epoch == second.epoch && second.epoch == fourth.epoch,
        "one incarnation"
    );
    assert_eq!(
        data(&topics.read(&t, 1, 10).await.unwrap()),
        ["1", "2", "3", "4", "5"]
    );
    assert_eq!(store.most_running(), 1);
}

#[tokio::test]
async fn a_delete_waits_for_the_commit_in_flight_and_the_staged_appends() {
    let mut backend = Backend::fjall();
    let store = Arc::new(GatedStore::new(backend.store(), true));
    let open_on_exit = GateGuard(store.clone());
    let (topics, task) = Topics::open(store.clone(), TopicsOptions::default())
        .await
        .unwrap();
    let t = p("/b/del");
    let first = spawn_append(&topics, &t, 1..=3, None);
    store.wait_started(1).await;
    let second = spawn_append(&topics, &t, 4..=5, None);
    wait_numbered(&topics, &t, 5).await;
    let delete = {
        let (topics, t) = (topics.clone(), t.clone());
        tokio::spawn(async move { topics.delete(&t).await })
    };
    tokio::time::sleep(QUIET).await;
    assert!(
        !delete.is_finished(),
        "the delete went ahead of the commit in flight"
    );

    store.open_gate();
    let (first, second) = (joined(first).await, joined(second).await);
    assert_eq!(
        [(first.first, first.last), (second.first, second.last)],
        [(1, 3), (4, 5)]
    );
    assert_eq!(first.epoch, second.epoch);
    let deleted = tokio::time::timeout(WAIT, delete).await.unwrap().unwrap();
    assert!(
        deleted.unwrap(),
        "the acknowledged appends were committed before the delete"
    );
    assert!(topics.info(&t).await.unwrap().is_none());
    // The next incarnation starts cleanly.
    let again = topics.append(t.clone(), evs(9..=9), None).await.unwrap();
    assert_eq!((again.first, again.last), (1, 1));
    assert!(again.epoch > first.epoch);
    topics.shutdown().await.unwrap();
    task.await.unwrap();
    drop((topics, open_on_exit, store));

    backend.restart().await;
    assert_eq!(
        backend.store().list_logs("t:").unwrap().len(),
        1,
        "the old log is gone"
    );
    let topics = open(backend.store(), TopicsOptions::default()).await;
    let info = topics.info(&t).await.unwrap().unwrap();
    assert_eq!((info.epoch, info.first, info.last), (again.epoch, 1, 1));
    assert_eq!(data(&topics.read(&t, 1, 10).await.unwrap()), ["9"]);
}

#[tokio::test]
async fn a_retention_override_waits_for_the_commit_in_flight() {
    let mut backend = Backend::fjall();
    let store = Arc::new(GatedStore::new(backend.store(), true));
    let open_on_exit = GateGuard(store.clone());
    let (topics, task) = Topics::open(store.clone(), fast_retention(vec![]))
        .await
        .unwrap();
    let t = p("/b/ret");
    let first = spawn_append(&topics, &t, 1..=5, None);
    store.wait_started(1).await;
    let second = spawn_append(&topics, &t, 6..=6, None);
    wait_numbered(&topics, &t, 6).await;
    let keep_two = Retention {
        max_events: Some(2),
        ..Retention::default()
    };
    let set = {
        let (topics, t) = (topics.clone(), t.clone());
        tokio::spawn(async move { topics.set_retention(&t, Some(keep_two)).await })
    };
    tokio::time::sleep(QUIET).await;
    assert!(
        !set.is_finished(),
        "the override went ahead of the commit in flight"
    );

    store.open_gate();
    assert_eq!(joined(first).await.last, 5);
    assert_eq!(joined(second).await.last, 6);
    tokio::time::timeout(WAIT, set)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(topics.retention(&t), (keep_two, true));
    wait_first(&topics, &t, 5).await;
    assert_eq!(data(&topics.read(&t, 1, 10).await.unwrap()), ["5", "6"]);
    topics.shutdown().await.unwrap();
    task.await.unwrap();
    drop((topics, open_on_exit, store));

    backend.restart().await;
    let topics = open(backend.store(), fast_retention(vec![])).await;
    assert_eq!(topics.retention(&t), (keep_two, true));
    assert_eq!(data(&topics.read(&t, 1, 10).await.unwrap()), ["5", "6"]);
}

/// Shutdown answers only once everything queued before it is committed: the commit in flight,
/// the staged batch, and the appends still queued behind them.
#[tokio::test]
async fn shutdown_commits_the_appends_in_flight_staged_and_queued_before_it() {
    let mut backend = Backend::fjall();
    let store = Arc::new(GatedStore::new(backend.store(), true));
    let open_on_exit = GateGuard(store.clone());
    let options = TopicsOptions {
        max_batch: 4,
        ..TopicsOptions::default()
    };
    let (topics, task) = Topics::open(store.clone(), options).await.unwrap();
    let paths: Vec<Path> = (0..3).map(|i| p(&format!("/down/{i}"))).collect();
    let mut queued = Vec::new();
    for i in 0..30u64 {
        let topic = paths[i as usize % paths.len()].clone();
        let payload = i.to_string();
        let pending = topics
            .enqueue(topic.clone(), vec![ev(&payload)])
            .await
            .unwrap();
        queued.push((topic, payload, pending));
        if i == 0 {
            store.wait_started(1).await;
        }
    }
    let shutdown = {
        let topics = topics.clone();
        tokio::spawn(async move { topics.shutdown().await })
    };
    tokio::time::sleep(QUIET).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown answered with a commit in flight"
    );
    assert_eq!(store.started(), 1);

    store.open_gate();
    tokio::time::timeout(WAIT, shutdown)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let mut acks = Vec::new();
    for (topic, payload, pending) in queued {
        let appended = pending
            .await
            .expect("queued before the shutdown: committed");
        acks.push(Ack {
            topic,
            appended,
            payloads: vec![payload],
        });
    }
    let expected = payloads_by_topic(&acks);
    assert!(store.started() >= 30 / 4, "{} commits", store.started());
    assert_eq!(store.most_running(), 1);
    drop((topics, open_on_exit, store));

    backend.restart().await;
    let topics = open(backend.store(), TopicsOptions::default()).await;
    for (topic, payloads) in &expected {
        assert_eq!(payloads.len(), 10);
        assert_eq!(
            data(&topics.read(topic, 1, 100).await.unwrap()),
            *payloads,
            "{topic}"
        );
    }
}

/// Writers keep appending while the engine shuts down: each append is either acknowledged
/// (and then found after a reopen) or refused as closed, never lost or half-done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_a_shutdown_are_kept_if_acknowledged_and_refused_otherwise() {
    let mut backend = Backend::fjall();
    let options = TopicsOptions {
        max_batch: 8,
        ..TopicsOptions::default()
    };
    let (topics, task) = Topics::open(backend.store(), options).await.unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (topics, acked) = (topics.clone(), acked.clone());
            tokio::spawn(async move {
                let topic = p(&format!("/race/{}", w % 3));
                let mut queued = std::collections::VecDeque::new();
                let mut acks = Vec::new();
                for i in 0u64.. {
                    let payload = format!("{w}:{i}");
                    match topics.enqueue(topic.clone(), vec![ev(&payload)]).await {
                        Ok(pending) => queued.push_back((payload, pending)),
                        Err(TopicsError::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                    if queued.len() > 4 || i % 7 == 0 {
                        let (payload, pending) = queued.pop_front().unwrap();
                        match pending.await {
                            Ok(appended) => {
                                acked.fetch_add(1, Ordering::SeqCst);
                                acks.push(Ack {
                                    topic: topic.clone(),
                                    appended,
                                    payloads: vec![payload],
                                });
                            }
                            Err(TopicsError::Closed) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                for (payload, pending) in queued {
                    match pending.await {
                        Ok(appended) => acks.push(Ack {
                            topic: topic.clone(),
                            appended,
                            payloads: vec![payload],
                        }),
                        Err(TopicsError::Closed) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                acks
            })
        })
        .collect();
    tokio::time::timeout(WAIT, async {
        while acked.load(Ordering::SeqCst) < 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the writers made no progress");
    tokio::time::timeout(WAIT, topics.shutdown())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(tokio::time::timeout(WAIT, w).await.unwrap().unwrap());
    }
    let expected = payloads_by_topic(&acks);
    drop(topics);

    backend.restart().await;
    let topics = open(backend.store(), TopicsOptions::default()).await;
    for (topic, payloads) in &expected {
        let info = topics.info(topic).await.unwrap().unwrap();
        assert_eq!(
            info.last,
            payloads.len() as u64,
            "{topic}: exactly what was acknowledged"
        );
        assert_eq!(
            data(&topics.read(topic, 1, usize::MAX).await.unwrap()),
            *payloads
        );
    }
}

#[tokio::test]
async fn a_failed_commit_fails_the_batch_staged_behind_it_and_publishes_neither() {
    let backend = Backend::fjall();
    let store = Arc::new(GatedStore::new(backend.store(), false));
    let _open_on_exit = GateGuard(store.clone());
    let (topics, task) = Topics::open(store.clone(), TopicsOptions::default())
        .await
        .unwrap();
    let (t, new) = (p("/b/fail"), p("/b/fail-new"));
    topics.append(t.clone(), evs(1..=1), None).await.unwrap();
    let mut listener = topics.listener();
    listener.subscribe(t.clone(), Some(1));
    listener.subscribe(new.clone(), Some(1));
    assert_eq!(event_seqs(&collect(&mut listener, 1).await, &t), [1]);

    store.close_gate();
    let in_flight = spawn_append(&topics, &t, 2..=3, None);
    store.wait_started(2).await;
    let staged_new = spawn_append(&topics, &new, 1..=1, None);
    let staged = spawn_append(&topics, &t, 4..=4, Some(3));
    wait_numbered(&topics, &new, 1).await;
    wait_numbered(&topics, &t, 4).await;
    store.fail.store(true, Ordering::SeqCst);
    store.open_gate();
    for task in [in_flight, staged_new, staged] {
        let result = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(matches!(result, Err(TopicsError::Store(_))), "{result:?}");
    }
    assert_eq!(
        store.started(),
        2,
        "the staged batch never reached the store"
    );
    store.fail.store(false, Ordering::SeqCst);
    assert!(matches!(
        topics.append(t.clone(), evs(5..=5), None).await,
        Err(TopicsError::Store(_))
    ));
    assert_eq!(topics.info(&t).await.unwrap().unwrap().last, 1);
    assert!(topics.info(&new).await.unwrap().is_none());
    assert_eq!(seqs(&topics.read(&t, 1, 10).await.unwrap()), [1]);
    if let Ok(batch) = tokio::time::timeout(QUIET, listener.next()).await {
        panic!("published after a failed commit: {batch:?}");
    }
    tokio::time::timeout(WAIT, topics.shutdown())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn detached_appends_are_committed_and_published_and_refusals_still_reported() {
    let mut backend = Backend::fjall();
    let (topics, task) = Topics::open(backend.store(), TopicsOptions::default())
        .await
        .unwrap();
    let (a, b) = (p("/b/detached-a"), p("/b/detached-b"));
    let mut listener = topics.listener();
    listener.subscribe(a.clone(), Some(1));
    let mut last = herald_engine::LastTopic::default();
    for n in 1..=50 {
        for t in [&a, &b] {
            topics
                .try_enqueue_detached_to(&mut last, t.clone(), evs(n..=n))
                .unwrap();
        }
    }
    // Published in order like any append, though nobody was told.
    assert_eq!(
        event_seqs(&collect(&mut listener, 50).await, &a),
        (1..=50).collect::<Vec<_>>()
    );
    wait_numbered(&topics, &b, 50).await;
    let expected: Vec<String> = (1..=50).map(|n| n.to_string()).collect();
    // Refused before queuing: still reported.
    assert!(matches!(
        topics.try_enqueue_detached_to(&mut last, a.clone(), Vec::new()),
        Err(herald_engine::TryEnqueueError::Failed(
            TopicsError::Invalid(_)
        ))
    ));
    topics.shutdown().await.unwrap();
    task.await.unwrap();
    drop((topics, listener));
    backend.restart().await;
    let topics = open(backend.store(), TopicsOptions::default()).await;
    for t in [&a, &b] {
        assert_eq!(
            data(&topics.read(t, 1, usize::MAX).await.unwrap()),
            expected,
            "{t}: committed"
        );
    }
}

#[tokio::test]
async fn a_detached_append_is_handed_back_when_the_queue_is_full() {
    let store = Arc::new(GatedStore::new_closed());
    let _release_on_exit = GateGuard(store.clone());
    let options = TopicsOptions {
        queue_capacity: 1,
        ..TopicsOptions::default()
    };
    let topics = open(store.clone(), options).await;
    let t = p("/b/full");
    let mut last = herald_engine::LastTopic::default();
    topics
        .try_enqueue_detached_to(&mut last, t.clone(), evs(1..=1))
        .unwrap();
    tokio::time::timeout(WAIT, store.entered.notified())
        .await
        .unwrap();
    topics
        .try_enqueue_detached_to(&mut last, t.clone(), evs(2..=2))
        .unwrap();
    match topics.try_enqueue_detached_to(&mut last, t.clone(), evs(3..=3)) {
        Err(herald_engine::TryEnqueueError::Full { topic, events }) => {
            assert_eq!(topic, t);
            assert_eq!(events, evs(3..=3), "the append is handed back whole");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    store.open_gate();
    wait_numbered(&topics, &t, 2).await;
}
