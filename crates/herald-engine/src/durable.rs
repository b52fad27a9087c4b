//! A value kept whole as one store snapshot (the user registry, the hpfeeds identities).
//!
//! Readers get the current value as an `Arc` without waiting for writers. A change is applied
//! to a copy, written with an fsync, and only then made current, so nothing is visible before it
//! is durable; writers are serialized. Meant for small, rarely changed values: every change
//! rewrites the whole snapshot.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use herald_store::{Durability, Store, StoreError};

/// A value persisted as the snapshot `name`; see the module documentation.
pub(crate) struct DurableValue<T> {
    store: Arc<dyn Store>,
    name: &'static str,
    /// The current, durable value.
    value: RwLock<Arc<T>>,
    /// Serializes writers; holds the sequence number of the last snapshot written.
    writer: Mutex<u64>,
}

impl<T: Clone + PartialEq> DurableValue<T> {
    /// Starts from `value`, loaded from the snapshot `name` at sequence number `seq` (0 when
    /// there was none).
    pub(crate) fn new(store: Arc<dyn Store>, name: &'static str, value: T, seq: u64) -> Self {
        Self {
            store,
            name,
            value: RwLock::new(Arc::new(value)),
            writer: Mutex::new(seq),
        }
    }

    /// The current value.
    pub(crate) fn current(&self) -> Arc<T> {
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `f` to a copy of the value; if the copy differs, stores `encode(copy)` durably
    /// and makes the copy current. Blocking: run it on the blocking pool, where it finishes
    /// even if its caller goes away.
    ///
    /// # Errors
    /// What `f` or `encode` return, or the store's error; the current value is then unchanged.
    pub(crate) fn change<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut T) -> Result<R, E>,
        encode: impl FnOnce(&T) -> Result<Vec<u8>, E>,
    ) -> Result<R, E> {
        // A panic while holding the lock leaves a plain counter behind; keep using it.
        let mut seq = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current();
        let mut next = T::clone(&current);
        let out = f(&mut next)?;
        if next != *current {
            let bytes = encode(&next)?;
            let next_seq = seq.saturating_add(1);
            self.store
                .put_snapshot(self.name, next_seq, &bytes, Durability::Sync)?;
            *seq = next_seq;
            *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        }
        Ok(out)
    }
}
