//! Blocks: consecutive records of one log stored as one fjall value.
//!
//! One fjall entry per record made every record pay the LSM tree's per-entry costs: a skiplist
//! insert into the memtable (comparing long keys that share the log's name), an entry in the
//! journal, and then again in every flush and compaction. An append now writes the records it
//! adds to a log as one value (or a few, see [`BLOCK_BYTES`]), keyed by the last record's
//! `seq`, so those costs are paid once per log per append.
//!
//! # Encoding
//! A block is the concatenation of its records, each as
//!
//! ```text
//! varint(seq - previous seq) ++ varint(len) ++ data
//! ```
//!
//! where the "previous seq" of the first record is 0, so the first record carries its whole
//! `seq`. Varints are LEB128 (7 bits per byte, least significant first, at most 10 bytes). A
//! block holds at least one record, its `seq`s strictly increase, and its last `seq` is the one
//! in its key. [`entries`] checks all of it but the key, and reports anything else as
//! corruption rather than guessing.

/// The data bytes after which an append starts a new block for the same log.
///
/// Reading one record reads its whole block, so blocks stay small: a few fjall data blocks. A
/// single larger record gets a block of its own.
pub(crate) const BLOCK_BYTES: usize = 16 * 1024;

/// The most bytes a block adds to its records' data: two varints per record.
pub(crate) const MAX_RECORD_OVERHEAD: usize = 2 * MAX_VARINT;

const MAX_VARINT: usize = 10;

/// Builds the blocks of one log during an append.
#[derive(Debug, Default)]
pub(crate) struct BlockWriter {
    buf: Vec<u8>,
    /// The seq of the last record pushed, if any since the last [`BlockWriter::take`].
    last: Option<u64>,
    data_bytes: usize,
}

impl BlockWriter {
    /// Whether a record of `len` bytes should start a new block instead of joining this one.
    pub(crate) fn is_full_for(&self, len: usize) -> bool {
        self.last.is_some() && self.data_bytes.saturating_add(len) > BLOCK_BYTES
    }

    /// Makes room for `records` more records of `data_bytes` bytes in all (of which at most
    /// a block's worth goes into this block), so that pushing them does not grow the buffer
    /// step by step.
    pub(crate) fn reserve(&mut self, records: usize, data_bytes: usize) {
        let headers = records.min(BLOCK_BYTES).saturating_mul(2 * MAX_VARINT);
        self.buf.reserve(
            data_bytes
                .min(BLOCK_BYTES)
                .saturating_add(headers.min(BLOCK_BYTES)),
        );
    }

    /// Adds a record. `seq` must be greater than the previous record's (the caller validates
    /// that before anything is written).
    pub(crate) fn push(&mut self, seq: u64, data: &[u8]) {
        let delta = seq - self.last.unwrap_or(0);
        if self.last.is_none() {
            self.buf.reserve(2 * MAX_VARINT + data.len());
        }
        push_varint(&mut self.buf, delta);
        push_varint(&mut self.buf, data.len() as u64);
        self.buf.extend_from_slice(data);
        self.last = Some(seq);
        self.data_bytes = self.data_bytes.saturating_add(data.len());
    }

    /// Hands out the block built so far (its last seq and its value) and starts a new one.
    pub(crate) fn take(&mut self) -> Option<(u64, Vec<u8>)> {
        let last = self.last.take()?;
        self.data_bytes = 0;
        Some((last, std::mem::take(&mut self.buf)))
    }
}

fn push_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Reads a varint from the front of `input`, or `None` if it is truncated, longer than 10
/// bytes, or overflows a `u64`.
fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate().take(MAX_VARINT) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(value);
        }
    }
    None
}

/// A block that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// The records of a block, in order, as `(seq, data)`; an `Err` (then nothing more) if the
/// block is empty or does not decode.
pub(crate) fn entries(block: &[u8]) -> Entries<'_> {
    Entries {
        rest: block,
        prev: None,
        failed: false,
    }
}

/// The iterator returned by [`entries`].
#[derive(Debug, Clone)]
pub(crate) struct Entries<'a> {
    rest: &'a [u8],
    prev: Option<u64>,
    failed: bool,
}

impl<'a> Entries<'a> {
    fn decode_one(&mut self) -> Option<(u64, &'a [u8])> {
        let delta = take_varint(&mut self.rest)?;
        let seq = match self.prev {
            None => delta,
            Some(_) if delta == 0 => return None,
            Some(prev) => prev.checked_add(delta)?,
        };
        let len = usize::try_from(take_varint(&mut self.rest)?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (data, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.prev = Some(seq);
        Some((seq, data))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u64, &'a [u8]), Corrupt>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || (self.rest.is_empty() && self.prev.is_some()) {
            return None;
        }
        match self.decode_one() {
            Some(entry) => Some(Ok(entry)),
            None => {
                self.failed = true;
                Some(Err(Corrupt))
            }
        }
    }
}

/// What a cut at `at` does to one block: the first record at or after `at` (if the block has
/// one), and the data bytes of its records with `from <= seq < at`.
pub(crate) fn split(block: &[u8], from: u64, at: u64) -> Result<(Option<u64>, u64), Corrupt> {
    let mut below = 0u64;
    for entry in entries(block) {
        let (seq, data) = entry?;
        if seq >= at {
            return Ok((Some(seq), below));
        }
        if seq >= from {
            below = below.saturating_add(data.len() as u64);
        }
    }
    Ok((None, below))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(records: &[(u64, &[u8])]) -> (u64, Vec<u8>) {
        let mut w = BlockWriter::default();
        for (seq, data) in records {
            w.push(*seq, data);
        }
        w.take().unwrap()
    }

    fn decode(value: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, Corrupt> {
        entries(value)
            .map(|e| e.map(|(seq, data)| (seq, data.to_vec())))
            .collect()
    }

    #[test]
    fn records_round_trip_with_small_headers() {
        let (last, value) = block(&[(7, b"abc"), (8, b""), (300, b"x")]);
        assert_eq!(last, 300);
        assert_eq!(
            decode(&value),
            Ok(vec![
                (7, b"abc".to_vec()),
                (8, vec![]),
                (300, b"x".to_vec())
            ])
        );
        // 1 + 1 + 3, 1 + 1, 2 + 1 + 1.
        assert_eq!(value.len(), 5 + 2 + 4);
        let (_, max) = block(&[(u64::MAX - 1, b"")]);
        assert_eq!(decode(&max), Ok(vec![(u64::MAX - 1, vec![])]));
    }

    #[test]
    fn writer_splits_after_block_bytes() {
        let mut w = BlockWriter::default();
        assert!(
            !w.is_full_for(BLOCK_BYTES * 4),
            "an empty block takes any record"
        );
        w.push(1, &[0; BLOCK_BYTES - 1]);
        assert!(!w.is_full_for(1));
        assert!(w.is_full_for(2));
        assert_eq!(w.take().map(|(last, _)| last), Some(1));
        assert_eq!(w.take(), None);
        assert!(!w.is_full_for(BLOCK_BYTES));
    }

    #[test]
    fn corrupt_blocks_are_reported_not_misread() {
        let (_, good) = block(&[(1, b"ab"), (2, b"c")]);
        let bad: Vec<Vec<u8>> = vec![
            vec![],                                      // no record at all
            good[..good.len() - 1].to_vec(),             // data cut short
            vec![0x80],                                  // varint cut short
            vec![0xff; 11],                              // varint too long
            vec![1, 0, 0, 0],                            // second record does not advance
            [&[0xff; 9][..], &[0x02, 0]].concat(),       // varint overflows u64
            [&[0xff; 9][..], &[0x01, 0, 1, 0]].concat(), // seq overflows u64
        ];
        for value in bad {
            let decoded = decode(&value);
            assert_eq!(decoded, Err(Corrupt), "{value:?}");
        }
    }

    #[test]
    fn split_finds_the_cut_and_the_bytes_below_it() {
        let (_, value) = block(&[(3, b"a"), (4, b"bb"), (6, b"cccc")]);
        assert_eq!(split(&value, 0, 4), Ok((Some(4), 1)));
        // Records below `from` were trimmed already and are not counted again.
        assert_eq!(split(&value, 4, 6), Ok((Some(6), 2)));
        assert_eq!(split(&value, 4, 5), Ok((Some(6), 2)));
        assert_eq!(split(&value, 0, 7), Ok((None, 7)));
        assert_eq!(split(&value, 0, 3), Ok((Some(3), 0)));
    }

    proptest! {
        #[test]
        fn any_records_round_trip(
            start in any::<u64>(),
            gaps in proptest::collection::vec((1u64..1 << 40, proptest::collection::vec(any::<u8>(), 0..300)), 1..40),
        ) {
            let mut seq = start % (u64::MAX / 2);
            let mut records = Vec::new();
            for (gap, data) in gaps {
                seq += gap;
                records.push((seq, data));
            }
            let borrowed: Vec<(u64, &[u8])> = records.iter().map(|(s, d)| (*s, d.as_slice())).collect();
            let (last, value) = block(&borrowed);
            prop_assert_eq!(last, seq);
            prop_assert_eq!(decode(&value), Ok(records));
        }

        #[test]
        fn arbitrary_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut prev = None;
            for entry in entries(&value) {
                let Ok((seq, data)) = entry else { break };
                prop_assert!(prev.is_none_or(|p| seq > p));
                prop_assert!(data.len() <= value.len());
                prev = Some(seq);
            }
        }
    }
}
