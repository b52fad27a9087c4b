//! Shared subscriptions (`$share/{group}/{filter}`): each message of the filter's topics goes
//! to one member of the group.
//!
//! A group is one engine listener and a task that hands its events round-robin to the members'
//! sessions, skipping members whose queue is full (so a slow member does not hold the group
//! back while another has room). The group ends with its last member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use herald_core::Path;
use herald_engine::{Delivery, Event, Topics};
use metrics::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::session::Subscription;

/// How many messages wait in a member's queue at most.
pub(crate) const MEMBER_QUEUE: usize = 64;

/// A message handed to one member of a group.
#[derive(Debug)]
pub(crate) struct SharedDelivery {
    /// The subscription's filter as the client sent it (`$share/g/f`).
    pub(crate) filter: Arc<str>,
    pub(crate) topic: Path,
    pub(crate) event: Event,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Box<SharedDelivery>>,
}

struct Group {
    members: Arc<Mutex<Vec<Member>>>,
    /// Cancelled when the group ends (its task has stopped or is asked to).
    stop: CancellationToken,
}

/// Every shared subscription group, by `$share/{group}/{filter}`.
#[derive(Default)]
pub(crate) struct SharedGroups {
    groups: Mutex<HashMap<Arc<str>, Group>>,
}

impl SharedGroups {
    /// Adds member `id` (a session, whose messages go to `tx`) to the group of the shared
    /// subscription `sub`, starting the group when it is new.
    pub(crate) fn join(
        &self,
        topics: &Topics,
        lost: &Counter,
        sub: &Subscription,
        id: u64,
        tx: mpsc::Sender<Box<SharedDelivery>>,
    ) {
        let filter: Arc<str> = Arc::from(sub.filter.as_str());
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = groups.get(&filter).filter(|g| !g.stop.is_cancelled()) {
            let mut members = group.members.lock().unwrap_or_else(PoisonError::into_inner);
            if !members.iter().any(|m| m.id == id) {
                members.push(Member { id, tx });
            }
            return;
        }
        let members = Arc::new(Mutex::new(vec![Member { id, tx }]));
        let mut listener = topics.listener();
        match &sub.exact {
            Some(path) => listener.subscribe(path.clone(), None),
            None => listener.subscribe_pattern(sub.pattern.clone(), None),
        };
        let task_members = members.clone();
        let task_filter = filter.clone();
        let lost = lost.clone();
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        tokio::spawn(async move {
            // Ends the group however the task stops, so that the next join starts a new one.
            let _stopped = task_stop.clone().drop_guard();
            let mut cursor = 0usize;
            loop {
                let batch = tokio::select! {
                    _ = task_stop.cancelled() => break,
                    b = listener.next() => match b {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(filter = %task_filter, error = %e, "mqtt: shared group stopped");
                            break;
                        }
                    },
                };
                for d in batch {
                    match d {
                        Delivery::Event { topic, event, .. } => {
                            // Boxed: it waits in channels and in every member's packet loop
                            // state, which idle connections carry too.
                            let msg = Box::new(SharedDelivery {
                                filter: task_filter.clone(),
                                topic,
                                event,
                            });
                            let handed = tokio::select! {
                                _ = task_stop.cancelled() => false,
                                h = hand_out(&task_members, &mut cursor, msg) => h,
                            };
                            if !handed {
                                return;
                            }
                        }
                        Delivery::Gap { from, to, .. } => {
                            lost.increment(to.saturating_sub(from) + 1);
                        }
                        Delivery::Reset { .. } => {}
                    }
                }
            }
        });
        groups.insert(filter, Group { members, stop });
    }

    /// Removes member `id` from the group of `filter`; the group ends with its last member.
    pub(crate) fn leave(&self, filter: &str, id: u64) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(group) = groups.get(filter) else {
            return;
        };
        let empty = {
            let mut members = group.members.lock().unwrap_or_else(PoisonError::into_inner);
            members.retain(|m| m.id != id);
            members.is_empty()
        };
        if empty && let Some(group) = groups.remove(filter) {
            group.stop.cancel();
        }
    }
}

impl SharedGroups {
    /// Gives a message that a leaving member had not delivered to another member of its
    /// group, if one has room; returns false when it had to be dropped.
    pub(crate) fn redistribute(&self, msg: Box<SharedDelivery>) -> bool {
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(group) = groups.get(&msg.filter) else {
            return false;
        };
        let members = group.members.lock().unwrap_or_else(PoisonError::into_inner);
        let mut msg = msg;
        for m in members.iter() {
            match m.tx.try_send(msg) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(back))
                | Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            }
        }
        false
    }
}

/// Gives `msg` to the next member with room, waiting for the chosen one when all are full.
/// Returns false when the group has no member left.
async fn hand_out(
    members: &Mutex<Vec<Member>>,
    cursor: &mut usize,
    mut msg: Box<SharedDelivery>,
) -> bool {
    loop {
        let waiting = {
            let mut members = members.lock().unwrap_or_else(PoisonError::into_inner);
            members.retain(|m| !m.tx.is_closed());
            let n = members.len();
            if n == 0 {
                return false;
            }
            let mut chosen = None;
            for k in 0..n {
                let i = (*cursor + k) % n;
                let Some(m) = members.get(i) else { continue };
                match m.tx.try_send(msg) {
                    Ok(()) => {
                        *cursor = (i + 1) % n;
                        return true;
                    }
                    Err(mpsc::error::TrySendError::Full(back))
                    | Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
                }
                if chosen.is_none() {
                    chosen = Some(m.tx.clone());
                }
            }
            *cursor = (*cursor + 1) % n;
            chosen
        };
        // Everyone is full: wait for room at one member (the others may free up first, but
        // order within the group matters less than not spinning).
        let Some(tx) = waiting else { return false };
        match tx.send(msg).await {
            Ok(()) => return true,
            Err(mpsc::error::SendError(back)) => msg = back,
        }
    }
}
