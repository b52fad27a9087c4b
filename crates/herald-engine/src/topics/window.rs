//! A topic's in-memory window: its newest events, oldest first, in chunks.
//!
//! One `VecDeque` of tens of thousands of events (a memory-only topic keeps up to
//! [`super::TopicsOptions::memory_window_events`]) grows by doubling: every growth copies the
//! whole window into fresh memory, which the kernel must clear first. Measured on the MQTT
//! 100 → 100 benchmark, that growth was a fifth of the broker's time. Chunks of at most
//! [`CHUNK`] events never move once written, and the chunk emptied at the front is kept for
//! the next one at the back, so a window at its bound allocates nothing.
//!
//! The window also keeps what trimming it needs: each event's [`footprint`] next to it and the
//! oldest event's sequence number. Trimming then reads nothing of the events it drops, which
//! are the oldest in memory and no longer in the processor's caches (measured: a fifth of the
//! topics actor's time went to those reads on the durable 100 → 100 benchmark).

use std::collections::VecDeque;

use super::{Event, footprint};

/// Events per chunk.
const CHUNK: usize = 64;

/// An event and its [`footprint`] (at most `u32::MAX`), as the window counts it.
type Entry = (Event, u32);

#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Every chunk but the first and the last holds exactly [`CHUNK`] events; none is empty.
    chunks: VecDeque<VecDeque<Entry>>,
    len: usize,
    /// The sum of the events' footprints.
    bytes: usize,
    /// The oldest event's sequence number (while empty: one past the last one taken out):
    /// the events are contiguous, so it moves up by one per event taken out.
    front_seq: u64,
    /// An emptied chunk, kept for reuse.
    spare: Option<VecDeque<Entry>>,
}

impl Window {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The events' footprints added up.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest event's sequence number, without reading the event.
    pub(crate) fn front_seq(&self) -> Option<u64> {
        (self.len > 0).then_some(self.front_seq)
    }

    /// Where the window keeps events from: the oldest event's sequence number or, when it is
    /// empty, one past the last event taken out (0 if there never was one).
    pub(crate) fn kept_from(&self) -> u64 {
        self.front_seq
    }

    /// Appends `event`, which must be numbered right after the newest event (any number when
    /// the window is empty).
    pub(crate) fn push_back(&mut self, event: Event) {
        if self.len == 0 {
            self.front_seq = event.seq;
        }
        debug_assert_eq!(
            event.seq,
            self.front_seq + self.len as u64,
            "a window's events are contiguous"
        );
        let size = u32::try_from(footprint(&event)).unwrap_or(u32::MAX);
        self.bytes += size as usize;
        let entry = (event, size);
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(entry),
            _ => {
                // A first chunk grows as it fills, from room for one event: a topic with a
                // handful of events keeps a small one, and with many idle topics most windows
                // hold one event, where `VecDeque`'s smallest growth (room for four, in the
                // chunk and in the list of chunks) took 224 bytes instead of 56. Later chunks
                // are whole, the spare if there is one.
                let mut chunk = match self.spare.take() {
                    Some(spare) => spare,
                    None if self.chunks.is_empty() => VecDeque::with_capacity(1),
                    None => VecDeque::with_capacity(CHUNK),
                };
                chunk.push_back(entry);
                if self.chunks.capacity() == 0 {
                    self.chunks.reserve_exact(1);
                }
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Takes the oldest event out, without reading it.
    pub(crate) fn pop_front(&mut self) -> Option<Event> {
        let first = self.chunks.front_mut()?;
        let (event, size) = first.pop_front()?;
        self.len -= 1;
        self.bytes -= size as usize;
        self.front_seq += 1;
        if first.is_empty()
            && let Some(empty) = self.chunks.pop_front()
            && empty.capacity() >= CHUNK
        {
            self.spare = Some(empty);
        }
        Some(event)
    }

    /// The events from the `skip`-th on (0: the oldest), oldest first.
    pub(crate) fn iter_from(&self, skip: usize) -> impl Iterator<Item = &Event> {
        // Found by arithmetic, not by walking the chunks (a full memory-only window has a
        // thousand, and readers ask for the newest events): the first chunk holds what is
        // left of it, every later one but the last exactly `CHUNK`.
        let skip = skip.min(self.len);
        let first = self.chunks.front().map_or(0, VecDeque::len);
        let (start, left) = if skip < first {
            (0, skip)
        } else {
            let past = skip - first;
            (1 + past / CHUNK, past % CHUNK)
        };
        // With `skip` at most `len`, both are in range; the bounds only keep `range` from
        // panicking should that ever not hold.
        self.chunks
            .range(start.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(i, chunk)| {
                let from = if i == 0 { left.min(chunk.len()) } else { 0 };
                chunk.range(from..)
            })
            .map(|(event, _)| event)
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &Event> {
        self.chunks.iter().flatten().map(|(event, _)| event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn event(seq: u64) -> Event {
        Event::new(
            seq,
            0,
            Arc::from("x"),
            Arc::from(""),
            Bytes::new(),
            Bytes::new(),
        )
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1..200usize).prop_map(Op::Push),
            (1..200usize).prop_map(Op::Pop)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Behaves as one `VecDeque`, whatever the mix of pushes, pops and skips.
        #[test]
        fn matches_a_vecdeque(ops in proptest::collection::vec(op(), 1..40), skips in proptest::collection::vec(0..1000usize, 1..8)) {
            let mut window = Window::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 1;
            for op in ops {
                match op {
                    Op::Push(n) => for _ in 0..n {
                        window.push_back(event(next));
                        model.push_back(next);
                        next += 1;
                    },
                    Op::Pop(n) => for _ in 0..n {
                        prop_assert_eq!(window.pop_front().map(|e| e.seq), model.pop_front());
                    },
                }
                prop_assert_eq!(window.len(), model.len());
                prop_assert_eq!(window.front_seq(), model.front().copied());
                prop_assert_eq!(window.bytes(), model.len() * footprint(&event(0)));
                let all: Vec<u64> = window.iter().map(|e| e.seq).collect();
                prop_assert_eq!(&all, &Vec::from(model.clone()));
                // Counted from the start, and from the end (readers mostly ask for the newest).
                let from_end = skips.iter().map(|k| model.len().saturating_sub(k % 70));
                for skip in skips.iter().copied().chain(from_end) {
                    let got: Vec<u64> = window.iter_from(skip).map(|e| e.seq).collect();
                    let want: Vec<u64> = model.iter().skip(skip).copied().collect();
                    prop_assert_eq!(got, want, "skip {}", skip);
                }
            }
        }
    }

    #[test]
    fn a_window_of_one_event_has_room_for_one() {
        let mut window = Window::default();
        window.push_back(event(1));
        assert_eq!(window.chunks.capacity(), 1);
        assert_eq!(window.chunks.front().map(VecDeque::capacity), Some(1));
        // It grows as any other from there, and the first chunk can become the spare.
        for seq in 2..=2 * CHUNK as u64 {
            window.push_back(event(seq));
        }
        assert_eq!(window.chunks.len(), 2);
        for _ in 0..CHUNK {
            window.pop_front();
        }
        assert!(window.spare.is_some());
    }

    #[test]
    fn a_window_at_its_bound_reuses_its_chunks() {
        let mut window = Window::default();
        for seq in 1..=10 * CHUNK as u64 {
            window.push_back(event(seq));
        }
        let chunk_ptrs = |w: &Window| -> Vec<*const Entry> {
            w.chunks.iter().map(|c| c.as_slices().0.as_ptr()).collect()
        };
        // Slide by whole chunks: the chunk freed at the front comes back at the back.
        for _ in 0..CHUNK {
            window.pop_front();
        }
        let freed = window.spare.as_ref().map(|c| c.as_slices().0.as_ptr());
        assert!(freed.is_some(), "the emptied chunk is kept");
        window.push_back(event(10 * CHUNK as u64 + 1));
        assert_eq!(chunk_ptrs(&window).last().copied(), freed);
        assert_eq!(window.len(), 9 * CHUNK + 1);
    }
}
