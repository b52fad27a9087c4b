//! A stored event, shared by every window, listener and subscriber that holds it, with room
//! for one wire format's rendering of it.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// A stored event.
///
/// Cloning is one reference count, however many parts the event has: a window, every
/// listener's batch and every subscriber's queue share the same parts. The fields are read
/// through [`Deref`] (`event.seq`, `event.data`).
#[derive(Clone)]
pub struct Event(Arc<EventParts>);

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
        Self(Arc::new(EventParts {
            seq,
            t_ms,
            content_type,
            origin,
            attrs,
            data,
            keep_rendering: false,
            rendered: OnceLock::new(),
        }))
    }

    /// The same event, made to keep its first rendering (see [`Event::render_into`]): for the
    /// events of a topic that several listeners follow. Only a new event, not yet shared,
    /// can be changed; a shared one is returned as it is.
    #[must_use]
    pub(crate) fn keeping_renderings(mut self) -> Self {
        if let Some(parts) = Arc::get_mut(&mut self.0) {
            parts.keep_rendering = true;
        }
        self
    }

    /// Appends the event as `wire` renders it to `out`, rendering it once for all
    /// subscribers: the first call renders and keeps a copy with the event; later calls, from
    /// any task, copy that.
    ///
    /// Only some events keep one: the topics engine marks the events of topics that more
    /// than one listener follows as it numbers them (`Event::keeping_renderings`). Others
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
        if !self.0.keep_rendering {
            return render(self, out);
        }
        match self.0.rendered.get() {
            Some(kept) if std::ptr::eq(kept.wire, wire) => out.extend_from_slice(&kept.bytes),
            Some(_) => render(self, out),
            None => {
                let start = out.len();
                render(self, out);
                // Two tasks may render at once; the first to finish is kept, and both
                // renderings are equal.
                let _ = self.0.rendered.set(Rendering {
                    wire,
                    bytes: out.get(start..).unwrap_or_default().into(),
                });
            }
        }
    }

    /// Whether `self` and `other` are the same shared event (not merely equal).
    pub fn ptr_eq(&self, other: &Event) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Event {
    type Target = EventParts;

    fn deref(&self) -> &EventParts {
        &self.0
    }
}

/// Events are equal when their numbers, times and contents are; a kept rendering is not
/// compared.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
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

    fn event(keep: bool) -> Event {
        let e = Event::new(
            7,
            9,
            Arc::from("text/plain"),
            Arc::from(""),
            Bytes::new(),
            Bytes::from_static(b"hi"),
        );
        if keep { e.keeping_renderings() } else { e }
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
        // A shared event cannot be changed afterwards.
        let copy = e.clone();
        let e = e.keeping_renderings();
        assert_eq!(render(&e, &A, &renders), "..a7");
        assert_eq!(render(&copy, &A, &renders), "..a7");
        assert_eq!(renders.load(Ordering::Relaxed), 5);
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
