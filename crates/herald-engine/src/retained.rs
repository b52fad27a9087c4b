//! Retained messages: at most one kept value per topic, handed to every new subscriber of a
//! matching topic before its live events (MQTT's retained messages).
//!
//! A retained message is not an event of the topic's log: retention may trim the log, and a
//! publish that is not retained does not replace it. Each one lives in its own store log
//! `retained:<path>` holding a single record (the topic record format, so content type, origin
//! and protocol attributes come along). Setting one appends the new record with an fsync and
//! then trims the old one; clearing deletes the log. After a crash between the two steps the
//! log holds two records and the newer wins, so a set is never lost once it returned.
//!
//! All of them are kept in memory too (they are read on every subscribe), so their number and
//! size are bounded by [`RetainedOptions`].

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use herald_core::topic::{decode_record, encode_record};
use herald_core::{Path, PathLimits, PathPattern};
use herald_store::{Append, Durability, Store, StoreError};
use tokio::sync::Mutex;

/// The prefix of the store logs of retained messages.
const LOG_PREFIX: &str = "retained:";

/// A retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    /// When it was retained, in ms since the Unix epoch.
    pub t_ms: u64,
    /// Its media type.
    pub content_type: Arc<str>,
    /// Who published it; empty when not recorded.
    pub origin: Arc<str>,
    /// Protocol attributes, as on events.
    pub attrs: Bytes,
    /// Its bytes.
    pub data: Bytes,
}

/// Limits of the retained messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedOptions {
    /// Most retained messages kept at once; setting one more (on a topic that has none) is
    /// refused with [`RetainedError::Full`].
    pub max_messages: usize,
    /// Most bytes of data kept over all retained messages.
    pub max_bytes: u64,
}

impl Default for RetainedOptions {
    fn default() -> Self {
        Self {
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Errors of the retained messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetainedError {
    /// Storage failed.
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("corrupt retained message {0}")]
    Corrupt(String),
    /// The message is too large for a record (its content type, origin or attributes).
    #[error("invalid retained message: {0}")]
    Invalid(String),
    /// [`RetainedOptions`] would be exceeded.
    #[error("too many retained messages (limits: {max_messages} messages, {max_bytes} bytes)")]
    Full {
        /// The message limit.
        max_messages: usize,
        /// The byte limit.
        max_bytes: u64,
    },
    /// The blocking task was lost (the runtime is shutting down).
    #[error("retained message task failed: {0}")]
    Task(String),
}

#[derive(Debug)]
struct Entry {
    message: Arc<RetainedMessage>,
    /// The sequence number of its record in its log.
    seq: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<Path, Entry>,
    bytes: u64,
}

/// The retained messages; cheap to clone (a handle).
#[derive(Clone)]
pub struct Retained {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    options: RetainedOptions,
    state: RwLock<State>,
    /// Serializes writers, so a log's sequence numbers are assigned in order.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Retained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retained")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn log_name(path: &Path) -> String {
    format!("{LOG_PREFIX}{path}")
}

impl Retained {
    /// Loads the retained messages kept in `store`.
    ///
    /// # Errors
    /// [`RetainedError::Store`] or [`RetainedError::Corrupt`].
    pub async fn open(
        store: Arc<dyn Store>,
        options: RetainedOptions,
    ) -> Result<Self, RetainedError> {
        let loader = store.clone();
        let state = tokio::task::spawn_blocking(move || load(&*loader))
            .await
            .map_err(|e| RetainedError::Task(e.to_string()))??;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                options,
                state: RwLock::new(state),
                writer: Mutex::new(()),
            }),
        })
    }

    /// Retains `message` on `topic` (replacing the one there), or with `None` clears it. The
    /// change is durable when this returns, and only then visible.
    ///
    /// # Errors
    /// [`RetainedError::Full`], [`RetainedError::Invalid`], [`RetainedError::Store`].
    pub async fn set(
        &self,
        topic: &Path,
        message: Option<RetainedMessage>,
    ) -> Result<(), RetainedError> {
        let _writer = self.inner.writer.lock().await;
        let old = self.read_state(|s| s.entries.get(topic).map(|e| (e.seq, e.message.clone())));
        let Some(message) = message else {
            if old.is_none() {
                return Ok(());
            }
            let (store, log) = (self.inner.store.clone(), log_name(topic));
            blocking(move || store.delete_log(&log, Durability::Sync)).await?;
            let mut state = self.write_state();
            if let Some(e) = state.entries.remove(topic) {
                state.bytes = state.bytes.saturating_sub(e.message.data.len() as u64);
            }
            return Ok(());
        };
        let old_bytes = old.as_ref().map_or(0, |(_, m)| m.data.len() as u64);
        let (count, bytes) = self.read_state(|s| (s.entries.len(), s.bytes));
        let options = self.inner.options;
        if (old.is_none() && count >= options.max_messages)
            || bytes - old_bytes + message.data.len() as u64 > options.max_bytes
        {
            return Err(RetainedError::Full {
                max_messages: options.max_messages,
                max_bytes: options.max_bytes,
            });
        }
        let record = encode_record(
            message.t_ms,
            &message.content_type,
            &message.origin,
            &message.attrs,
            &message.data,
        )
        .map_err(|e| RetainedError::Invalid(e.to_string()))?;
        let seq = match old {
            Some((seq, _)) => seq + 1,
            None => {
                // A cleared topic's log is gone; a fresh one starts at 1.
                1
            }
        };
        let (store, log) = (self.inner.store.clone(), log_name(topic));
        blocking(move || {
            store.append(
                &[Append {
                    log: &log,
                    seq,
                    data: &record,
                }],
                Durability::Sync,
            )?;
            // The new record is durable; dropping the old one may wait for the next sync.
            store.trim(&log, seq, Durability::Buffered)
        })
        .await?;
        let mut state = self.write_state();
        state.bytes = state.bytes - old_bytes + message.data.len() as u64;
        state.entries.insert(
            topic.clone(),
            Entry {
                message: Arc::new(message),
                seq,
            },
        );
        Ok(())
    }

    /// The message retained on `topic`.
    pub fn get(&self, topic: &Path) -> Option<Arc<RetainedMessage>> {
        self.read_state(|s| s.entries.get(topic).map(|e| e.message.clone()))
    }

    /// The retained messages of the topics `pattern` matches, in path order.
    pub fn matching(&self, pattern: &PathPattern) -> Vec<(Path, Arc<RetainedMessage>)> {
        self.read_state(|s| {
            s.entries
                .iter()
                .filter(|(p, _)| pattern.matches(p))
                .map(|(p, e)| (p.clone(), e.message.clone()))
                .collect()
        })
    }

    /// How many messages are retained.
    pub fn len(&self) -> usize {
        self.read_state(|s| s.entries.len())
    }

    /// Whether no message is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self
            .inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) -> Result<(), RetainedError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RetainedError::Task(e.to_string()))?
        .map_err(RetainedError::from)
}

/// Reads every retained log; the newest record of each is the message.
fn load(store: &dyn Store) -> Result<State, RetainedError> {
    let unlimited = PathLimits {
        max_segments: usize::MAX,
        max_segment_bytes: usize::MAX,
    };
    let mut state = State::default();
    for (log, bounds) in store.list_logs(LOG_PREFIX)? {
        if bounds.first > bounds.last {
            continue;
        }
        let Some(raw_path) = log.strip_prefix(LOG_PREFIX) else {
            continue;
        };
        let path = Path::parse_url(raw_path, &unlimited)
            .map_err(|e| RetainedError::Corrupt(format!("{log}: {e}")))?;
        let Some((seq, raw)) = store.read(&log, bounds.last, 1)?.pop() else {
            continue;
        };
        let rec = decode_record(&raw).map_err(|e| RetainedError::Corrupt(format!("{log}: {e}")))?;
        let message = RetainedMessage {
            t_ms: rec.t_ms,
            content_type: Arc::from(rec.content_type),
            origin: Arc::from(rec.origin),
            attrs: Bytes::copy_from_slice(rec.attrs),
            data: Bytes::copy_from_slice(rec.data),
        };
        state.bytes += message.data.len() as u64;
        state.entries.insert(
            path,
            Entry {
                message: Arc::new(message),
                seq,
            },
        );
    }
    Ok(state)
}
