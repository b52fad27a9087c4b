//! Per-connection coalescing mailboxes for document updates.
//!
//! A document subscriber only ever needs the newest value of each path it watches. The engine
//! pushes `(path, value)` into the subscriber's [`Inbox`]; if the connection has not taken the
//! previous value for that path yet, the new one replaces it (Icepeak's "skipped update"). So a
//! slow connection costs at most one pending value per subscribed path, and never slows the
//! writer or other subscribers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use herald_core::Path;
use tokio::sync::Notify;

/// A pending update: the subscribed path and its full current value as JSON.
pub type Update = (Path, Bytes);

/// A coalescing mailbox; see the module documentation.
///
/// # Invariants
/// `pending` holds at most one entry per path.
#[derive(Debug)]
pub struct Inbox {
    id: u64,
    /// Updates not yet taken by the connection task. Locked briefly by the engine (push) and by
    /// the connection task (take); never held across an `.await`.
    pending: Mutex<Vec<Update>>,
    /// Wakes the connection task after a push. The permit model of `notify_one` means a push
    /// that happens before the task waits is not lost.
    notify: Notify,
    skipped: metrics::Counter,
    /// Set when its `Subscriber` is dropped: the engine must not register it any more.
    closed: AtomicBool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Inbox {
    pub(crate) fn new(skipped: metrics::Counter) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pending: Mutex::new(Vec::new()),
            notify: Notify::new(),
            skipped,
            closed: AtomicBool::new(false),
        }
    }

    /// A process-unique identifier of this inbox.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Marks the inbox as abandoned by its subscriber.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether [`Inbox::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues `value` for `path`, replacing an update for the same path that was not taken yet.
    pub(crate) fn push(&self, path: &Path, value: Bytes) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = pending.iter_mut().find(|(p, _)| p == path) {
                slot.1 = value;
                self.skipped.increment(1);
            } else {
                pending.push((path.clone(), value));
            }
        }
        self.notify.notify_one();
    }

    /// Takes every pending update without waiting (possibly none).
    pub fn take(&self) -> Vec<Update> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until at least one update is pending, then takes them all, in the order their
    /// paths were first queued.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, no update is lost; the next
    /// call returns them.
    pub async fn recv(&self) -> Vec<Update> {
        loop {
            let updates = self.take();
            if !updates.is_empty() {
                return updates;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::PathLimits;

    fn p(s: &str) -> Path {
        Path::parse_url(s, &PathLimits::default()).unwrap()
    }

    #[tokio::test]
    async fn coalesces_per_path_and_keeps_order() {
        let inbox = Inbox::new(metrics::Counter::noop());
        inbox.push(&p("/a"), Bytes::from_static(b"1"));
        inbox.push(&p("/b"), Bytes::from_static(b"2"));
        inbox.push(&p("/a"), Bytes::from_static(b"3"));
        let got = inbox.recv().await;
        assert_eq!(
            got,
            vec![
                (p("/a"), Bytes::from_static(b"3")),
                (p("/b"), Bytes::from_static(b"2"))
            ]
        );
        assert!(inbox.take().is_empty());
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver() {
        let inbox = std::sync::Arc::new(Inbox::new(metrics::Counter::noop()));
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.recv().await }
        });
        tokio::task::yield_now().await;
        inbox.push(&p("/x"), Bytes::from_static(b"null"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
    }
}
