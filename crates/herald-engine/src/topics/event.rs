//! A stored event, shared by every window, listener and subscriber that holds it, with room
//! for one wire format's rendering of it.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::NewEvent;

/// A stored event.
///
/// Cloning is one reference count, however many parts the event has: a window, every
/// listener's batch and every subscriber's queue share the same parts. The fields are read
/// through [`Deref`] (`event.seq`, `event.data`).
///
/// The events of one append to a topic with at most one listener share their allocations
/// (see `Event::numbered`): numbering a run of publishes allocates twice, not once per event,
/// and freeing it frees twice. The run is freed when the last of its events goes, so an event
/// that left its window may live on, in memory, until its run-mates leave too (runs are
/// short: one append).
#[derive(Clone)]
pub struct Event {
    run: Arc<Run>,
    /// Which of the run's events this is.
    at: usize,
}

/// Events allocated together. The first is kept apart from the rest, so that a run of one
/// (the most common) needs one allocation, and reading an event costs no lookup of how the
/// run is laid out (only whether `at` is 0).
struct Run {
    first: EventParts,
    rest: Box<[EventParts]>,
}

impl Run {
    fn one(parts: EventParts) -> Arc<Self> {
        Arc::new(Self {
            first: parts,
            rest: Box::default(),
        })
    }
}

/// The parts of an [`Event`].
pub struct EventParts {
    /// Its sequence number in the topic's current epoch.
    pub seq: u64,
    /// When it was accepted, in ms since the Unix epoch.
    pub t_ms: u64,
    /// Its media type.
    pub content_type: Arc<str>,
    /// Who published it; empty when not recorded.
    pub origin: Arc<str>,
    /// Its protocol attributes (see [`super::NewEvent::attrs`]); empty when none.
    pub attrs: Bytes,
    /// Its bytes.
    pub data: Bytes,
    /// Whether renderings are kept (see [`Event::render_into`]).
    keep_rendering: bool,
    /// The first wire format's rendering (see [`Event::render_into`]).
    rendered: OnceLock<Rendering>,
}

struct Rendering {
    wire: &'static Wire,
    bytes: Box<[u8]>,
}

/// A wire format that renders an event the same way for every subscriber, declared once as
/// a `static` by the adapter that speaks it. Its identity is the static's address.
#[derive(Debug)]
pub struct Wire {
    name: &'static str,
}

impl Wire {
    /// A wire format called `name` (for debugging only).
    pub const fn new(name: &'static str) -> Self {
        Self { name }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Event {
    /// An event numbered `seq` in its topic, accepted at `t_ms`.
    pub fn new(
        seq: u64,
        t_ms: u64,
        content_type: Arc<str>,
        origin: Arc<str>,
        attrs: Bytes,
        data: Bytes,
    ) -> Self {
        let event = NewEvent {
            content_type,
            origin,
            attrs,
            data,
        };
        Self {
            run: Run::one(EventParts::new(event, seq, t_ms, false)),
            at: 0,
        }
    }

    /// `events` as accepted by one append: numbered from `first`, all accepted at `t_ms`.
    ///
    /// `many_listen` tells whether several listeners follow their topic. If not, the events
    /// share their allocations (a run) and keep no rendering: with 100 publishers each on its
    /// own topic and its own subscriber, durable, `malloc` and `free` of each event alone
    /// took 11 % of the server's CPU samples. If so, each gets an allocation of its own and
    /// keeps its first rendering (see [`Event::render_into`]): every listener takes a
    /// reference to every event, and listeners on different threads counting references on
    /// one shared run made 1 → 100 fan-out 20 % slower than counting on each event.
    pub(crate) fn numbered(
        events: Vec<NewEvent>,
        first: u64,
        t_ms: u64,
        many_listen: bool,
    ) -> Numbered {
        if many_listen {
            return Numbered(Taking::Apart {
                events: events.into_iter(),
                seq: first,
                t_ms,
            });
        }
        let count = events.len();
        let mut parts = events
            .into_iter()
            .zip(first..)
            .map(|(e, seq)| EventParts::new(e, seq, t_ms, false));
        let run = parts.next().map(|first| {
            Arc::new(Run {
                first,
                rest: parts.collect(),
            })
        });
        Numbered(Taking::Run { run, at: 0, count })
    }

    /// Appends the event as `wire` renders it to `out`, rendering it once for all
    /// subscribers: the first call renders and keeps a copy with the event; later calls, from
    /// any task, copy that.
    ///
    /// Only some events keep one: the topics engine marks the events of topics that more
    /// than one listener follows as it numbers them (`Event::numbered`). Others
    /// are rendered straight into `out` on every call, as they have one reader (a single
    /// listener, a read from disk) and a kept rendering would only hold memory. An event
    /// keeps one rendering, for the first wire format that asks; any other format renders on
    /// every call.
    ///
    /// `render` appends the rendering to the vector it is given. It must depend only on the
    /// event (and on what the wire format fixes, such as the topic's name), never on the
    /// subscriber. The kept copy lives as long as the event does (in a topic's window, until
    /// it is trimmed).
    pub fn render_into(
        &self,
        wire: &'static Wire,
        out: &mut Vec<u8>,
        render: impl FnOnce(&Event, &mut Vec<u8>),
    ) {
        if !self.keep_rendering {
            return render(self, out);
        }
        match self.rendered.get() {
            Some(kept) if std::ptr::eq(kept.wire, wire) => out.extend_from_slice(&kept.bytes),
            Some(_) => render(self, out),
            None => {
                let start = out.len();
                render(self, out);
                // Two tasks may render at once; the first to finish is kept, and both
                // renderings are equal.
                let _ = self.rendered.set(Rendering {
                    wire,
                    bytes: out.get(start..).unwrap_or_default().into(),
                });
            }
        }
    }

    /// Whether `self` and `other` are the same shared event (not merely equal).
    pub fn ptr_eq(&self, other: &Event) -> bool {
        Arc::ptr_eq(&self.run, &other.run) && self.at == other.at
    }
}

/// Events as numbered by [`Event::numbered`], in order.
pub(crate) struct Numbered(Taking);

enum Taking {
    /// Sharing one allocation. The last event takes the run's reference rather than a new
    /// one: a run of one counts no references at all.
    Run {
        run: Option<Arc<Run>>,
        at: usize,
        count: usize,
    },
    /// Each allocated as it is taken.
    Apart {
        events: std::vec::IntoIter<NewEvent>,
        seq: u64,
        t_ms: u64,
    },
}

impl Iterator for Numbered {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        match &mut self.0 {
            Taking::Run { run, at, count } => {
                let this = *at;
                let run = if this + 1 < *count {
                    run.clone()?
                } else if this + 1 == *count {
                    run.take()?
                } else {
                    return None;
                };
                *at += 1;
                Some(Event { run, at: this })
            }
            Taking::Apart { events, seq, t_ms } => {
                let parts = EventParts::new(events.next()?, *seq, *t_ms, true);
                *seq += 1;
                Some(Event {
                    run: Run::one(parts),
                    at: 0,
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match &self.0 {
            Taking::Run { at, count, .. } => count.saturating_sub(*at),
            Taking::Apart { events, .. } => events.len(),
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for Numbered {}

impl EventParts {
    fn new(e: NewEvent, seq: u64, t_ms: u64, keep_rendering: bool) -> Self {
        Self {
            seq,
            t_ms,
            content_type: e.content_type,
            origin: e.origin,
            attrs: e.attrs,
            data: e.data,
            keep_rendering,
            rendered: OnceLock::new(),
        }
    }
}

impl Deref for Event {
    type Target = EventParts;

    fn deref(&self) -> &EventParts {
        match self.at.checked_sub(1) {
            None => &self.run.first,
            // `at` is below the run's length: only `Numbered` makes events past the first.
            Some(i) => &self.run.rest[i],
        }
    }
}

/// Events are equal when their numbers, times and contents are; a kept rendering is not
/// compared.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        let (a, b): (&EventParts, &EventParts) = (self, other);
        a.seq == b.seq
            && a.t_ms == b.t_ms
            && a.content_type == b.content_type
            && a.origin == b.origin
            && a.attrs == b.attrs
            && a.data == b.data
    }
}

impl Eq for Event {}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("seq", &self.seq)
            .field("t_ms", &self.t_ms)
            .field("content_type", &self.content_type)
            .field("origin", &self.origin)
            .field("attrs", &self.attrs)
            .field("data", &self.data)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static A: Wire = Wire::new("a");
    static B: Wire = Wire::new("b");

    /// An event numbered 7 at 9 ms, alone in its run.
    fn event(keep: bool) -> Event {
        let one = vec![NewEvent::new(Arc::from("text/plain"), "hi")];
        let mut run = Event::numbered(one, 7, 9, keep);
        assert_eq!(run.len(), 1);
        run.next().unwrap()
    }

    /// Renders `e` for `wire` after what `out` holds, counting renders in `renders`.
    fn render(e: &Event, wire: &'static Wire, renders: &AtomicUsize) -> String {
        let mut out = b"..".to_vec();
        e.render_into(wire, &mut out, |e, out| {
            renders.fetch_add(1, Ordering::Relaxed);
            out.extend_from_slice(format!("{}{}", wire.name(), e.seq).as_bytes());
        });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_first_wire_format_renders_once_for_every_clone() {
        let e = event(true);
        let renders = AtomicUsize::new(0);
        let copies: Vec<Event> = (0..5).map(|_| e.clone()).collect();
        for c in &copies {
            assert_eq!(render(c, &A, &renders), "..a7");
        }
        assert_eq!(renders.load(Ordering::Relaxed), 1);
        // Another format is not mistaken for the first, and renders every time.
        assert_eq!(render(&e, &B, &renders), "..b7");
        assert_eq!(render(&e, &B, &renders), "..b7");
        assert_eq!(renders.load(Ordering::Relaxed), 3);
        assert_eq!(render(&copies[0], &A, &renders), "..a7");
        assert_eq!(renders.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn events_not_keeping_renderings_render_every_time() {
        let e = event(false);
        let renders = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(render(&e.clone(), &A, &renders), "..a7");
        }
        assert_eq!(renders.load(Ordering::Relaxed), 3);
    }

    /// Three events numbered together from 5, from publisher `origin`.
    fn numbered(origin: &Arc<str>, many_listen: bool) -> Vec<Event> {
        let news = ["a", "b", "c"].map(|d| NewEvent::json(d).with_origin(origin.clone()));
        Event::numbered(news.to_vec(), 5, 9, many_listen).collect()
    }

    #[test]
    fn numbered_events_are_in_order_whether_they_share_a_run_or_not() {
        let origin: Arc<str> = Arc::from("me");
        for many_listen in [false, true] {
            let events = numbered(&origin, many_listen);
            for ((e, seq), data) in events.iter().zip(5..).zip(["a", "b", "c"]) {
                let alone = Event::new(
                    seq,
                    9,
                    super::super::json_content_type(),
                    origin.clone(),
                    Bytes::new(),
                    Bytes::from(data),
                );
                assert_eq!(*e, alone);
            }
            // Events of one run are not the same event; a clone is.
            assert!(!events[0].ptr_eq(&events[1]));
            assert!(events[2].ptr_eq(&events[2].clone()));
        }
        assert_eq!(Event::numbered(Vec::new(), 1, 9, false).len(), 0);
    }

    #[test]
    fn events_many_listeners_follow_each_keep_their_own_rendering() {
        let origin: Arc<str> = Arc::from("me");
        let renders = AtomicUsize::new(0);
        let followed = numbered(&origin, true);
        for _ in 0..2 {
            assert_eq!(render(&followed[0], &A, &renders), "..a5");
            assert_eq!(render(&followed[1], &A, &renders), "..a6");
        }
        assert_eq!(renders.load(Ordering::Relaxed), 2);
        let run = numbered(&origin, false);
        assert_eq!(render(&run[1], &A, &renders), "..a6");
        assert_eq!(render(&run[1], &A, &renders), "..a6");
        assert_eq!(renders.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_run_is_freed_with_its_last_event_and_events_apart_each_on_their_own() {
        let origin: Arc<str> = Arc::from("me");
        let mut run = numbered(&origin, false);
        // Each event's parts hold the origin.
        assert_eq!(Arc::strong_count(&origin), 4);
        let last = run.pop().unwrap();
        run.clear();
        assert_eq!(
            Arc::strong_count(&origin),
            4,
            "the run outlives all but one"
        );
        assert_eq!(last.seq, 7);
        drop(last);
        assert_eq!(Arc::strong_count(&origin), 1);

        let mut apart = numbered(&origin, true);
        apart.truncate(1);
        assert_eq!(Arc::strong_count(&origin), 2);
    }

    #[test]
    fn equality_ignores_sharing_and_renderings() {
        let (a, b) = (event(true), event(false));
        assert!(!a.ptr_eq(&b));
        assert_eq!(a, b);
        let _ = render(&a, &A, &AtomicUsize::new(0));
        assert_eq!(a, b);
        assert_ne!(
            a,
            Event::new(
                8,
                9,
                Arc::from("text/plain"),
                Arc::from(""),
                Bytes::new(),
                Bytes::new()
            )
        );
    }
}
