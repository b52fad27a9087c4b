//! Durable values by key: at most one record per key, each in its own store log
//! `<prefix><key>`, so replacing one value costs one small write whatever the number of keys
//! (unlike a whole snapshot).
//!
//! Replacing appends the new record with an fsync and then trims the old one; removing deletes
//! the log. After a crash between the two steps a log holds two records and the newer wins, so
//! a value is never lost once `put` returned. Writers of one key must not race: callers
//! serialize them (each user of this module holds one writer per key, or one for all).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use herald_store::{Append, Durability, Store, StoreError};

/// Values by key under one log name prefix; cheap to clone.
#[derive(Clone)]
pub struct KeyedRecords {
    store: Arc<dyn Store>,
    prefix: &'static str,
    /// The sequence number of each key's current record.
    seqs: Arc<Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for KeyedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRecords")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl KeyedRecords {
    /// Opens the values under `prefix` and returns them with their keys, in key order.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn open(
        store: Arc<dyn Store>,
        prefix: &'static str,
    ) -> Result<(Self, Vec<(String, Vec<u8>)>), StoreError> {
        let loader = store.clone();
        let loaded = blocking(move || {
            let mut out = Vec::new();
            for (log, bounds) in loader.list_logs(prefix)? {
                if bounds.first > bounds.last {
                    continue;
                }
                let Some(key) = log.strip_prefix(prefix) else {
                    continue;
                };
                if let Some((seq, data)) = loader.read(&log, bounds.last, 1)?.pop() {
                    out.push((key.to_owned(), seq, data));
                }
            }
            Ok(out)
        })
        .await?;
        let seqs = loaded.iter().map(|(k, seq, _)| (k.clone(), *seq)).collect();
        let values = loaded.into_iter().map(|(k, _, v)| (k, v)).collect();
        Ok((
            Self {
                store,
                prefix,
                seqs: Arc::new(Mutex::new(seqs)),
            },
            values,
        ))
    }

    /// Stores `value` under `key`, durably, replacing the one there.
    ///
    /// # Errors
    /// The store's errors; the old value then stays.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let seq = self.lock().get(key).map_or(1, |s| s + 1);
        let (store, log) = (self.store.clone(), format!("{}{key}", self.prefix));
        blocking(move || {
            store.append(
                &[Append {
                    log: &log,
                    seq,
                    data: &value,
                }],
                Durability::Sync,
            )?;
            // The new record is durable; dropping the old one may wait for the next sync.
            store.trim(&log, seq, Durability::Buffered)
        })
        .await?;
        self.lock().insert(key.to_owned(), seq);
        Ok(())
    }

    /// Removes the value of `key`, durably; nothing happens when there is none.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn remove(&self, key: &str) -> Result<(), StoreError> {
        if !self.lock().contains_key(key) {
            return Ok(());
        }
        let (store, log) = (self.store.clone(), format!("{}{key}", self.prefix));
        blocking(move || store.delete_log(&log, Durability::Sync)).await?;
        self.lock().remove(key);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.seqs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Engine(Box::new(e)))?
}
