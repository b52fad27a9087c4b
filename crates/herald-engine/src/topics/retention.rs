//! The retention pass: trims topics to their retention, off the append path.
//!
//! It runs on a blocking thread every `retention_interval` (one pass at a time). For each
//! durable topic with a bounded retention it finds the first sequence number to keep, by
//! count from the bounds alone, and by bytes and age by walking the oldest records, then trims
//! the store and moves the topic's `first`. Appends go on meanwhile: they only touch the tail.
//! Then it trims the windows over their share of the memory budgets (topics that stopped
//! appending keep windows sized for fewer topics otherwise).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_core::topic::{Retention, decode_record};
use herald_store::{Durability, Store, StoreError};

use super::{Shared, Topic, now_ms};

/// How many records the byte and age walk reads at a time.
const WALK_CHUNK: usize = 512;

pub(super) fn pass(shared: &Shared, stale: Vec<String>) {
    for log in stale {
        match shared.store.delete_log(&log, Durability::Buffered) {
            Ok(()) => tracing::info!(%log, "finished deleting an old topic incarnation"),
            Err(e) => tracing::warn!(%log, error = %e, "could not delete an old topic log"),
        }
    }
    let now = now_ms();
    let topics: Vec<(Arc<Topic>, Retention)> = shared
        .topics
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|t| !t.memory_only && t.trim_due.load(Ordering::Relaxed) <= now)
        .filter_map(|t| {
            let (r, _) = shared.retention(&t.path);
            let bounded = r.max_events.is_some() || r.max_bytes.is_some() || r.max_age_ms.is_some();
            if !bounded {
                // Nothing to trim until its retention changes (which makes it due again).
                t.trim_due.store(u64::MAX, Ordering::Relaxed);
            }
            bounded.then(|| (t.clone(), r))
        })
        .collect();
    for (topic, retention) in topics {
        if topic.is_deleted() {
            continue;
        }
        // Not due again unless appended to meanwhile (which sets 0: kept by `fetch_min`).
        topic.trim_due.store(u64::MAX, Ordering::Relaxed);
        match trim_topic(&*shared.store, &topic, &retention, now) {
            Ok((trimmed, due)) => {
                topic.trim_due.fetch_min(due, Ordering::Relaxed);
                if trimmed > 0 {
                    shared.metrics.trimmed.increment(trimmed);
                    tracing::debug!(topic = %topic.path, trimmed, "retention trimmed a topic");
                }
            }
            Err(e) => {
                topic.trim_due.store(0, Ordering::Relaxed);
                tracing::warn!(topic = %topic.path, error = %e, "retention pass failed");
            }
        }
    }
    fit_windows(shared);
}

/// Trims every window over its bound (see [`Shared::window_bounds`]). A window
/// is fitted at each append to its topic; this catches the topics that stopped appending, so
/// that the windows together stay within the budgets as more topics are created. It walks
/// the topics only when a share shrank since the last walk (`Shared::fitted_shares`).
fn fit_windows(shared: &Shared) {
    let shares = shared.shares();
    let mut fitted = shared
        .fitted_shares
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if fitted.is_some_and(|(d, m)| shares.0 >= d && shares.1 >= m) {
        return;
    }
    let topics: Vec<Arc<Topic>> = shared
        .topics
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let mut evicted = Vec::new();
    for topic in topics {
        let (max_events, max_bytes) = shared.window_bounds_at(&topic, shares);
        let mut state = topic.lock();
        if state.window.len() > max_events || state.window.bytes() > max_bytes {
            state.fit_window(topic.memory_only, (max_events, max_bytes), |e| {
                evicted.push(e);
            });
        }
        drop(state);
        // Freed outside the topic's lock.
        evicted.clear();
    }
    // Topics created meanwhile may have made the shares smaller still: the next pass sees
    // that and fits again.
    *fitted = Some(shares);
}

/// Trims one topic; returns how many events were removed and when it is due again without
/// appends (see `Topic::trim_due`): when its oldest event kept grows too old for a maximum
/// age, else never.
fn trim_topic(
    store: &dyn Store,
    topic: &Topic,
    retention: &Retention,
    now: u64,
) -> Result<(u64, u64), StoreError> {
    let Some(bounds) = store.bounds(&topic.log)? else {
        return Ok((0, u64::MAX));
    };
    let mut due = u64::MAX;
    let retained = (bounds.last + 1).saturating_sub(bounds.first);
    let mut cut = bounds.first;
    if let Some(max) = retention.max_events
        && retained > max
    {
        cut = bounds.last + 1 - max;
    }
    if cut > bounds.first {
        store.trim(&topic.log, cut, Durability::Buffered)?;
    }
    let trimmed_to = cut;
    // Bytes and age: walk from the oldest record kept so far.
    let cutoff = retention.max_age_ms.map(|age| now.saturating_sub(age));
    if retention.max_bytes.is_some() || cutoff.is_some() {
        let mut bytes = store.bounds(&topic.log)?.map_or(0, |b| b.bytes);
        let over_bytes = |bytes: u64| retention.max_bytes.is_some_and(|max| bytes > max);
        let mut from = cut;
        'walk: while from <= bounds.last {
            let records = store.read(&topic.log, from, WALK_CHUNK)?;
            if records.is_empty() {
                break;
            }
            for (seq, raw) in &records {
                if *seq > bounds.last {
                    break 'walk;
                }
                let (too_old, expires) = match (retention.max_age_ms, cutoff, decode_record(raw)) {
                    (Some(age), Some(c), Ok(rec)) => {
                        (rec.t_ms < c, rec.t_ms.saturating_add(age).saturating_add(1))
                    }
                    // Unreadable: look again at the next pass.
                    (Some(_), _, Err(_)) => (false, now),
                    _ => (false, u64::MAX),
                };
                if !too_old && !over_bytes(bytes) {
                    due = expires;
                    break 'walk;
                }
                bytes = bytes.saturating_sub(raw.len() as u64);
                cut = seq + 1;
            }
            from = cut;
        }
        if cut > trimmed_to {
            store.trim(&topic.log, cut, Durability::Buffered)?;
        }
    }
    if cut <= bounds.first {
        return Ok((0, due));
    }
    let mut state = topic.lock();
    if cut > state.first {
        state.first = cut;
        while state.window.front_seq().is_some_and(|seq| seq < cut) {
            state.window.pop_front();
        }
    }
    Ok((cut - bounds.first, due))
}
