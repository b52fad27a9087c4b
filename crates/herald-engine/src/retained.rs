//! Retained messages: at most one kept value per topic, handed to every new subscriber of a
//! matching topic before its live events (MQTT's retained messages).
//!
//! A retained message is not an event of the topic's log: retention may trim the log, and a
//! publish that is not retained does not replace it. Each one is a [`KeyedRecords`] value
//! keyed by its topic (in the topic record format, so content type, origin and protocol
//! attributes come along): setting one is a single fsync'd write, whatever the number of
//! retained messages.
//!
//! All of them are kept in memory too (they are read on every subscribe), so their number and
//! size are bounded by [`RetainedOptions`].

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use herald_core::topic::{decode_record, encode_record};
use herald_core::{Path, PathLimits, PathPattern};
use herald_store::{Store, StoreError};
use tokio::sync::Mutex;

use crate::keyed::KeyedRecords;

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
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<Path, Arc<RetainedMessage>>,
    bytes: u64,
}

/// The retained messages; cheap to clone (a handle).
#[derive(Clone)]
pub struct Retained {
    inner: Arc<Inner>,
}

struct Inner {
    records: KeyedRecords,
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

impl Retained {
    /// Loads the retained messages kept in `store`.
    ///
    /// # Errors
    /// [`RetainedError::Store`] or [`RetainedError::Corrupt`].
    pub async fn open(
        store: Arc<dyn Store>,
        options: RetainedOptions,
    ) -> Result<Self, RetainedError> {
        let (records, values) = KeyedRecords::open(store, LOG_PREFIX).await?;
        let state = load(values)?;
        Ok(Self {
            inner: Arc::new(Inner {
                records,
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
        let key = topic.to_string();
        let old = self.get(topic);
        let Some(message) = message else {
            self.inner.records.remove(&key).await?;
            let mut state = self.write_state();
            if let Some(m) = state.entries.remove(topic) {
                state.bytes = state.bytes.saturating_sub(m.data.len() as u64);
            }
            return Ok(());
        };
        let old_bytes = old.as_ref().map_or(0, |m| m.data.len() as u64);
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
        self.inner.records.put(&key, record).await?;
        let mut state = self.write_state();
        state.bytes = state.bytes - old_bytes + message.data.len() as u64;
        state.entries.insert(topic.clone(), Arc::new(message));
        Ok(())
    }

    /// The message retained on `topic`.
    pub fn get(&self, topic: &Path) -> Option<Arc<RetainedMessage>> {
        self.read_state(|s| s.entries.get(topic).cloned())
    }

    /// The retained messages of the topics `pattern` matches, in path order.
    pub fn matching(&self, pattern: &PathPattern) -> Vec<(Path, Arc<RetainedMessage>)> {
        // The matches are all under the pattern's literal prefix.
        let prefix = pattern.literal_prefix();
        self.read_state(|s| {
            prefix
                .entries_under(&s.entries)
                .filter(|(p, _)| pattern.matches(p))
                .map(|(p, m)| (p.clone(), m.clone()))
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

/// Decodes the stored retained messages.
fn load(values: Vec<(String, Vec<u8>)>) -> Result<State, RetainedError> {
    let unlimited = PathLimits {
        max_segments: usize::MAX,
        max_segment_bytes: usize::MAX,
    };
    let mut state = State::default();
    for (key, raw) in values {
        let path = Path::parse_url(&key, &unlimited)
            .map_err(|e| RetainedError::Corrupt(format!("{key}: {e}")))?;
        let rec = decode_record(&raw).map_err(|e| RetainedError::Corrupt(format!("{key}: {e}")))?;
        let message = RetainedMessage {
            t_ms: rec.t_ms,
            content_type: Arc::from(rec.content_type),
            origin: Arc::from(rec.origin),
            attrs: Bytes::copy_from_slice(rec.attrs),
            data: Bytes::copy_from_slice(rec.data),
        };
        state.bytes += message.data.len() as u64;
        state.entries.insert(path, Arc::new(message));
    }
    Ok(state)
}
