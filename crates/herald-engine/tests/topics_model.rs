//! Model-based test of the topics engine: random appends (plain and conditional), reads,
//! deletes, retention and restarts (clean and crash) against a reference model, on fjall.
//!
//! The model keeps every acknowledged event of every topic and where its numbering stands.
//! Retention runs in the background, so between `Settle` steps the engine may have trimmed
//! anything up to what the rule allows; reads are checked against that window, and `Settle`
//! waits until the trim has caught up exactly.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Backend, WAIT};
use herald_core::topic::{Retention, RetentionRules};
use herald_core::{Path, PathLimits, PathPattern};
use herald_engine::{NewEvent, Topics, TopicsError, TopicsOptions};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tokio::task::JoinHandle;

/// Topics under `/r` keep at most this many events.
const KEEP: u64 = 4;

const TOPICS: [&str; 3] = ["/u/a", "/u/b", "/r/c"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        topic: usize,
        n: u64,
    },
    AppendIf {
        topic: usize,
        off_by: u64,
        n: u64,
    },
    Read {
        topic: usize,
        from: u64,
        limit: usize,
    },
    ReadLast {
        topic: usize,
        limit: usize,
    },
    Delete {
        topic: usize,
    },
    Settle,
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TOPICS.len();
    prop_oneof![
        6 => (t.clone(), 1..6u64).prop_map(|(topic, n)| Op::Append { topic, n }),
        2 => (t.clone(), 0..2u64, 1..3u64).prop_map(|(topic, off_by, n)| Op::AppendIf { topic, off_by, n }),
        3 => (t.clone(), 0..30u64, 1..10usize).prop_map(|(topic, from, limit)| Op::Read { topic, from, limit }),
        2 => (t.clone(), 0..10usize).prop_map(|(topic, limit)| Op::ReadLast { topic, limit }),
        1 => t.prop_map(|topic| Op::Delete { topic }),
        1 => Just(Op::Settle),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Default, Clone)]
struct ModelTopic {
    /// Every event of the current epoch ever acknowledged: (seq, payload).
    events: Vec<(u64, String)>,
    last: u64,
    epoch: Option<u64>,
}

impl ModelTopic {
    /// The lowest `first` retention may have reached (everything up to it may be gone).
    fn max_first(&self, bounded: bool) -> u64 {
        if bounded {
            (self.last + 1).saturating_sub(KEEP).max(1)
        } else {
            1
        }
    }
}

fn options() -> TopicsOptions {
    let r = Retention {
        max_events: Some(KEEP),
        ..Retention::default()
    };
    TopicsOptions {
        rules: RetentionRules::new(vec![(
            PathPattern::parse("/r/#", &PathLimits::default()).unwrap(),
            r,
        )]),
        retention_interval: Duration::from_millis(5),
        window_events: 3,
        // About two small events' worth with one topic, none with a few: reads come from
        // full, partial and empty windows.
        window_budget_bytes: 400,
        max_batch: 8,
        ..TopicsOptions::default()
    }
}

struct Run {
    backend: Backend,
    /// `None` only while restarting, so the old engine's handle is gone before the reopen.
    topics: Option<Topics>,
    task: JoinHandle<()>,
    model: HashMap<usize, ModelTopic>,
    counter: u64,
}

fn path(i: usize) -> Path {
    Path::parse_url(TOPICS[i], &PathLimits::default()).unwrap()
}

fn bounded(i: usize) -> bool {
    TOPICS[i].starts_with("/r")
}

impl Run {
    fn t(&self) -> &Topics {
        self.topics.as_ref().expect("engine is open")
    }

    async fn reopen(&mut self) {
        self.topics = None;
        self.backend.restart().await;
        let (topics, task) =
            tokio::time::timeout(WAIT, Topics::open(self.backend.store(), options()))
                .await
                .expect("open timed out")
                .expect("open");
        self.topics = Some(topics);
        self.task = task;
    }

    fn payloads(&mut self, n: u64) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.counter += 1;
                format!("\"e{}\"", self.counter)
            })
            .collect()
    }

    async fn append(
        &mut self,
        topic: usize,
        n: u64,
        expect: Option<u64>,
    ) -> Result<(), TestCaseError> {
        let payloads = self.payloads(n);
        let events = payloads
            .iter()
            .map(|s| NewEvent::json(s.clone().into_bytes()))
            .collect();
        let res = self.t().append(path(topic), events, expect).await;
        let m = self.model.entry(topic).or_default();
        match (res, expect) {
            (Ok(a), _) => {
                prop_assert_eq!(a.first, m.last + 1);
                prop_assert_eq!(a.last, m.last + n);
                if let Some(e) = m.epoch {
                    prop_assert_eq!(a.epoch, e, "epoch changed without a delete");
                }
                m.epoch = Some(a.epoch);
                for (i, s) in payloads.into_iter().enumerate() {
                    m.events.push((m.last + 1 + i as u64, s));
                }
                m.last += n;
            }
            (Err(TopicsError::Conflict { expected, got }), Some(e)) => {
                prop_assert_eq!(expected, e);
                prop_assert_eq!(got, m.last);
                prop_assert_ne!(e, m.last);
            }
            (Err(e), _) => return Err(TestCaseError::fail(format!("append: {e}"))),
        }
        Ok(())
    }

    /// Checks that `got` (seqs and payloads) is what a read from `from` of at most `limit`
    /// may return, given that retention may have trimmed up to `max_first`.
    fn check_read(
        &self,
        topic: usize,
        from: u64,
        limit: usize,
        got: &[(u64, String)],
    ) -> Result<(), TestCaseError> {
        let m = self.model.get(&topic).cloned().unwrap_or_default();
        let from = from.max(1);
        let start = got.first().map_or(from, |e| e.0);
        prop_assert!(start >= from, "read started at {} before {}", start, from);
        prop_assert!(
            start <= from.max(m.max_first(bounded(topic))) || got.is_empty(),
            "read skipped retained events: started at {} from {}",
            start,
            from
        );
        let expected: Vec<(u64, String)> = m
            .events
            .iter()
            .filter(|(s, _)| *s >= start)
            .take(limit)
            .cloned()
            .collect();
        if got.is_empty() {
            // Only allowed when nothing at or after `from` may still be retained.
            let retained_from = from.max(m.max_first(bounded(topic)));
            prop_assert!(
                limit == 0 || retained_from > m.last,
                "empty read but {} <= {}",
                retained_from,
                m.last
            );
            return Ok(());
        }
        prop_assert_eq!(got, &expected[..]);
        Ok(())
    }

    async fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { topic, n } => self.append(topic, n, None).await?,
            Op::AppendIf { topic, off_by, n } => {
                let last = self.model.get(&topic).map_or(0, |m| m.last);
                self.append(topic, n, Some(last + off_by)).await?;
            }
            Op::Read { topic, from, limit } => {
                let got = self
                    .t()
                    .read(&path(topic), from, limit)
                    .await
                    .map_err(fail)?;
                let got: Vec<_> = got.iter().map(|e| (e.seq, text(&e.data))).collect();
                self.check_read(topic, from, limit, &got)?;
            }
            Op::ReadLast { topic, limit } => {
                let got = self
                    .t()
                    .read_last(&path(topic), limit)
                    .await
                    .map_err(fail)?;
                let got: Vec<_> = got.iter().map(|e| (e.seq, text(&e.data))).collect();
                let m = self.model.get(&topic).cloned().unwrap_or_default();
                let from = (m.last + 1).saturating_sub(limit as u64).max(1);
                // The newest `limit` events, minus what retention may have taken.
                if let Some(first) = got.first() {
                    prop_assert!(first.0 >= from);
                    prop_assert_eq!(got.last().map(|e| e.0), Some(m.last));
                }
                self.check_read(
                    topic,
                    from.max(got.first().map_or(from, |e| e.0)),
                    limit,
                    &got,
                )?;
            }
            Op::Delete { topic } => {
                let existed = self.t().delete(&path(topic)).await.map_err(fail)?;
                let m = self.model.remove(&topic);
                prop_assert_eq!(existed, m.is_some_and(|m| m.epoch.is_some()));
            }
            Op::Settle => {
                for topic in 0..TOPICS.len() {
                    let Some(m) = self.model.get(&topic).filter(|m| m.epoch.is_some()) else {
                        continue;
                    };
                    let want = m.max_first(bounded(topic));
                    let p = path(topic);
                    let settled = tokio::time::timeout(WAIT, async {
                        loop {
                            let info = self.t().info(&p).await.expect("info").expect("exists");
                            if info.first >= want {
                                return info;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    })
                    .await;
                    let info =
                        settled.map_err(|_| TestCaseError::fail("retention did not settle"))?;
                    prop_assert_eq!(info.first, want, "trimmed too far");
                    prop_assert_eq!(info.last, m.last);
                }
            }
            Op::Restart => {
                let res = tokio::time::timeout(WAIT, self.t().shutdown()).await;
                prop_assert!(matches!(res, Ok(Ok(()))), "shutdown: {res:?}");
                let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
                prop_assert!(tokio::time::timeout(WAIT, task).await.is_ok());
                self.reopen().await;
                self.check_all().await?;
            }
            Op::Crash => {
                let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
                let topics = self.topics.take().expect("engine is open");
                crash_topics(topics, task).await;
                self.reopen().await;
                self.check_all().await?;
            }
        }
        Ok(())
    }

    /// After a restart: every topic's numbering and epoch are as acknowledged, and every
    /// retained event reads back.
    async fn check_all(&self) -> Result<(), TestCaseError> {
        for (topic, m) in &self.model {
            let Some(epoch) = m.epoch else { continue };
            let info = self.t().info(&path(*topic)).await.map_err(fail)?;
            let info = info.ok_or_else(|| TestCaseError::fail("topic lost in restart"))?;
            prop_assert_eq!(info.epoch, epoch);
            prop_assert_eq!(info.last, m.last);
            let got = self.t().read(&path(*topic), 1, 1000).await.map_err(fail)?;
            let got: Vec<_> = got.iter().map(|e| (e.seq, text(&e.data))).collect();
            self.check_read(*topic, 1, 1000, &got)?;
        }
        let listed = self.t().list(&Path::root()).len();
        let alive = self.model.values().filter(|m| m.epoch.is_some()).count();
        prop_assert_eq!(listed, alive);
        Ok(())
    }
}

async fn crash_topics(topics: Topics, task: JoinHandle<()>) {
    // The same as the docs crash: abort the actor and drop every handle.
    task.abort();
    let _ = tokio::time::timeout(WAIT, task).await;
    drop(topics);
}

fn text(b: &bytes::Bytes) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 payload")
}

fn fail(e: TopicsError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let backend = Backend::fjall();
    let (topics, task) = Topics::open(backend.store(), options())
        .await
        .expect("open");
    let mut run = Run {
        backend,
        topics: Some(topics),
        task,
        model: HashMap::new(),
        counter: 0,
    };
    for op in ops {
        run.step(op).await?;
    }
    run.step(Op::Settle).await?;
    run.step(Op::Restart).await?;
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn topics_match_reference_model(ops in vec(op(), 1..=40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(60), run(ops)).await {
                Ok(result) => result,
                Err(_) => Err(TestCaseError::fail("model run timed out")),
            }
        })?;
    }
}
