//! MQTT sessions: what outlives a connection, and the registry that hands a session from one
//! connection to the next.
//!
//! A session's queued messages are not copied anywhere: they are the events of its topics after
//! its listener's positions, kept by the topics engine. While no connection holds the session,
//! its listener is not polled, so the events simply wait in the topic logs (subject to their
//! retention), and the next connection carries on from where the last one stopped. Messages
//! sent but not acknowledged (`inflight`) are resent with DUP on reconnect.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald_core::{Path, PathPattern};
use herald_engine::Listener;
use herald_mqtt_codec::{Publish, SubOptions};
use tokio::sync::{Notify, mpsc};

use crate::shared::{MEMBER_QUEUE, SharedDelivery};
use tokio_util::sync::CancellationToken;

/// Where a session's shared subscription groups hand it messages (boxed: they wait in the
/// channel and in the packet loop's state).
pub(crate) type SharedChannel = (
    mpsc::Sender<Box<SharedDelivery>>,
    mpsc::Receiver<Box<SharedDelivery>>,
);

/// One subscription of a session.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// The filter as the client sent it.
    pub(crate) filter: String,
    /// The topics it matches.
    pub(crate) pattern: PathPattern,
    /// The topic, when the filter has no wildcard.
    pub(crate) exact: Option<Path>,
    /// The client's options.
    pub(crate) options: SubOptions,
    /// The MQTT 5 subscription identifier.
    pub(crate) id: Option<u32>,
    /// Whether it is a shared subscription (`$share/{group}/{filter}`), delivered through
    /// its group rather than the session's listener.
    pub(crate) shared: bool,
}

/// Where an outgoing QoS 1 or 2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// A session: subscriptions, positions in their topics, and unacknowledged messages.
#[derive(Debug)]
pub(crate) struct Session {
    /// Follows the subscribed topics; its positions are where the session stands.
    pub(crate) listener: Listener,
    pub(crate) subs: Vec<Subscription>,
    /// Outgoing QoS 1 and 2 messages not acknowledged yet, in the order they were sent.
    pub(crate) inflight: VecDeque<(u16, OutState, Publish)>,
    /// Messages waiting for room in the client's receive window (their packet ids are given
    /// when they are sent).
    pub(crate) queue: VecDeque<Publish>,
    /// Incoming QoS 2 packet ids between PUBREC and PUBREL.
    pub(crate) incoming_qos2: HashSet<u16>,
    next_id: u16,
    /// How long the session outlives its connection (zero: it ends with it).
    pub(crate) expiry: Duration,
    /// The user whose session it is (`None`: anonymous); only they may resume it.
    pub(crate) owner: Option<String>,
    /// This session as a member of shared subscription groups.
    pub(crate) member_id: u64,
    /// Where its groups put the messages they give it; made by its first shared
    /// subscription (most sessions have none, and the channel costs a few KiB).
    pub(crate) shared: Option<SharedChannel>,
}

/// The next message a shared subscription group gave a session, from its `shared` channel
/// (never, without one).
pub(crate) async fn next_shared(shared: &mut Option<SharedChannel>) -> Option<Box<SharedDelivery>> {
    match shared {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

static NEXT_MEMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Session {
    pub(crate) fn new(listener: Listener, expiry: Duration, owner: Option<String>) -> Self {
        Self {
            member_id: NEXT_MEMBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            shared: None,
            listener,
            subs: Vec::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            next_id: 0,
            expiry,
            owner,
        }
    }

    /// The sender its shared subscription groups hand messages to.
    pub(crate) fn shared_sender(&mut self) -> mpsc::Sender<Box<SharedDelivery>> {
        self.shared
            .get_or_insert_with(|| mpsc::channel(MEMBER_QUEUE))
            .0
            .clone()
    }

    /// A packet id that no message in flight uses.
    pub(crate) fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !self.inflight.iter().any(|(i, _, _)| *i == id) {
                return id;
            }
        }
    }
}

/// A message to publish when a connection ends without DISCONNECT.
#[derive(Debug, Clone)]
pub(crate) struct PendingWill {
    pub(crate) cancel: CancellationToken,
}

enum Slot {
    /// A connection holds the session. `kick` asks it to close; `done` turns true once it
    /// has handed the session back.
    Active {
        /// The user the connection logged in as (`None`: anonymous).
        owner: Option<String>,
        generation: u64,
        kick: CancellationToken,
        done: Arc<Done>,
    },
    /// No connection holds it.
    Detached {
        session: Box<Session>,
        since: Instant,
        will: Option<PendingWill>,
    },
}

/// Every session by client id.
pub(crate) struct Sessions {
    slots: Mutex<HashMap<Arc<str>, Slot>>,
    generation: std::sync::atomic::AtomicU64,
    /// Most sessions kept (connected or not).
    max: usize,
}

/// A connection's claim on its client id.
pub(crate) struct Claim {
    pub(crate) client_id: Arc<str>,
    pub(crate) generation: u64,
    /// Cancelled when another connection takes the session over (or at shutdown).
    pub(crate) kick: CancellationToken,
    done: Arc<Done>,
}

impl Drop for Claim {
    /// A claim ends when it is released or, failing that, when its connection is gone.
    fn drop(&mut self) {
        self.done.set();
    }
}

/// Set once the connection holding a session has handed it back (or is gone). Lighter than a
/// `watch` channel (whose shared state is about 400 bytes), and there is one per connection.
#[derive(Debug, Default)]
pub(crate) struct Done {
    set: AtomicBool,
    notify: Notify,
}

impl Done {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` in between is not missed.
            notified.as_mut().enable();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// What [`Sessions::claim`] found.
pub(crate) struct Claimed {
    pub(crate) claim: Claim,
    /// The session left by an earlier connection, unless the client asked for a clean start
    /// or it had expired.
    pub(crate) session: Option<Box<Session>>,
    /// Whether another connection held the client id and was closed.
    pub(crate) took_over: bool,
}

/// The client id belongs to a session of another user: a client cannot take over, or read
/// the queued messages of, another user's session.
#[derive(Debug)]
pub(crate) struct OwnedByAnother;

impl Sessions {
    /// A registry keeping at most `max` sessions.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            max,
        }
    }

    /// Whether a session may outlive its connection without exceeding the maximum (the
    /// connection's own slot already counts).
    pub(crate) fn room_to_keep(&self) -> bool {
        self.lock().len() <= self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `client_id` for a new connection of user `owner`. A connection holding it is
    /// kicked, and the claim waits (at most `wait`) until it has let go. A pending will of the
    /// client is cancelled. With `clean_start` an old session is discarded. A client id whose
    /// session (connected or not) belongs to another user is refused.
    pub(crate) async fn claim(
        &self,
        client_id: Arc<str>,
        owner: Option<&str>,
        clean_start: bool,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Claimed, OwnedByAnother> {
        let mut took_over = false;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let done = {
                let mut slots = self.lock();
                let held_by = match slots.get(&client_id) {
                    Some(Slot::Active { owner, .. }) => Some(owner.as_deref()),
                    Some(Slot::Detached { session, .. }) => Some(session.owner.as_deref()),
                    None => None,
                };
                if held_by.is_some_and(|o| o != owner) {
                    return Err(OwnedByAnother);
                }
                match slots.get(&client_id) {
                    Some(Slot::Active { kick, done, .. }) => {
                        kick.cancel();
                        took_over = true;
                        done.clone()
                    }
                    _ => {
                        let old = slots.remove(&client_id);
                        let generation = self
                            .generation
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let kick = shutdown.child_token();
                        let done = Arc::new(Done::default());
                        slots.insert(
                            client_id.clone(),
                            Slot::Active {
                                owner: owner.map(str::to_owned),
                                generation,
                                kick: kick.clone(),
                                done: done.clone(),
                            },
                        );
                        let session = match old {
                            Some(Slot::Detached {
                                session,
                                since,
                                will,
                            }) => {
                                if let Some(w) = will {
                                    w.cancel.cancel();
                                }
                                (!clean_start && since.elapsed() < session.expiry)
                                    .then_some(session)
                            }
                            _ => None,
                        };
                        return Ok(Claimed {
                            claim: Claim {
                                client_id,
                                generation,
                                kick,
                                done,
                            },
                            session,
                            took_over,
                        });
                    }
                }
            };
            // The holder may be stuck writing to a dead peer; past the deadline its slot is
            // taken anyway (its session then ends with it).
            let finished = tokio::time::timeout_at(deadline, done.wait()).await.is_ok();
            if !finished {
                let mut slots = self.lock();
                if matches!(slots.get(&client_id), Some(Slot::Active { done: d, .. }) if Arc::ptr_eq(d, &done))
                {
                    slots.remove(&client_id);
                }
            }
        }
    }

    /// Ends a connection's claim: keeps `session` for the next connection (when given and its
    /// expiry is not zero) or forgets the client id. `will` is the pending will, if the
    /// connection left one waiting for its delay.
    pub(crate) fn release(
        &self,
        claim: Claim,
        session: Option<Box<Session>>,
        will: Option<PendingWill>,
    ) {
        {
            let mut slots = self.lock();
            let ours = matches!(
                slots.get(&claim.client_id),
                Some(Slot::Active { generation, .. }) if *generation == claim.generation
            );
            if ours {
                match session {
                    Some(session) if !session.expiry.is_zero() => {
                        slots.insert(
                            claim.client_id.clone(),
                            Slot::Detached {
                                session,
                                since: Instant::now(),
                                will,
                            },
                        );
                    }
                    _ => {
                        slots.remove(&claim.client_id);
                    }
                }
            }
        }
        // Dropping `claim` sets its `done`.
        drop(claim);
    }

    /// Forgets detached sessions whose expiry has passed; returns their client ids.
    pub(crate) fn sweep(&self) -> Vec<Arc<str>> {
        let mut slots = self.lock();
        let mut gone = Vec::new();
        slots.retain(|id, slot| match slot {
            Slot::Detached { session, since, .. } if since.elapsed() >= session.expiry => {
                gone.push(id.clone());
                false
            }
            _ => true,
        });
        gone
    }

    /// Adds a session restored from disk, disconnected since `since`.
    pub(crate) fn insert_detached(&self, client_id: Arc<str>, session: Session, since: Instant) {
        self.lock().insert(
            client_id,
            Slot::Detached {
                session: Box::new(session),
                since,
                will: None,
            },
        );
    }

    /// How many sessions exist (connected or not).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
