//! On-disk key and value encodings.
//!
//! # `logs` keyspace
//! Every key starts with a one-byte tag, so the three kinds of entry sort into separate runs and
//! a scan of one kind never walks another:
//!
//! | tag    | key                                  | value                           |
//! |--------|--------------------------------------|---------------------------------|
//! | `0x00` | `0x00`                               | format version, `u32` BE        |
//! | `0x01` | `0x01 ++ u16_be(len) ++ name`        | `first` ++ `last` ++ `bytes`, `u64` BE each |
//! | `0x03` | `0x03 ++ u16_be(len) ++ name ++ last_be` | a block of records ending at `last` (see `block`) |
//! | `0x02` | `0x02 ++ u16_be(len) ++ name ++ seq_be` | formats 1 and 2 only: one record's bytes |
//!
//! The length prefix makes `u16_be(len) ++ name` prefix-free: two different names differ
//! within the first `2 + min(len)` bytes, so no name (however it is spelt, NUL bytes included)
//! can produce a key inside another name's range. Big-endian `seq` makes byte order equal
//! numeric order, so a range scan returns blocks in `seq` order. A block is keyed by its *last*
//! record, so the block holding record `seq` is the first one at or after `seq`: a read finds
//! it with a forward seek, and a trim below `before` deletes exactly the blocks keyed below it.
//!
//! Format version 1 stored bounds as `first ++ last` only (16 bytes); version 2 added `bytes`.
//! Both stored one record per `0x02` entry. Opening such a directory upgrades it to version 3
//! (see `FjallStore::open_with`).
//!
//! # `snapshots` keyspace
//! | key                                          | value                                   |
//! |----------------------------------------------|-----------------------------------------|
//! | `u16_be(len) ++ name ++ 0x00`                | header: `seq` ++ `total_len` (`u64` BE) ++ `chunks` (`u32` BE) |
//! | `u16_be(len) ++ name ++ 0x01 ++ u32_be(idx)` | chunk `idx` of the blob                 |

/// The longest log or snapshot name, in bytes.
///
/// fjall keys are at most `u16::MAX` bytes (the journal stores the key length as a `u16`); the
/// longest key this crate builds is a block key, `1 + 2 + len + 8` bytes.
pub const MAX_NAME_LEN: usize = u16::MAX as usize - 1 - 2 - 8;

/// The largest record [`Store::append`](herald_store::Store::append) accepts, in bytes.
///
/// fjall stores value lengths as `u32` and truncates longer ones silently in its journal, so
/// records whose block would be longer are refused up front. (Snapshots have no such limit:
/// they are chunked.)
pub const MAX_RECORD_BYTES: usize = u32::MAX as usize - crate::block::MAX_RECORD_OVERHEAD;

/// The size of one stored piece of a snapshot.
///
/// fjall values are limited to `u32::MAX` bytes (the journal truncates longer lengths
/// silently), and a single huge value would also be written as one huge block. Chunks keep
/// every value small and make the size limit irrelevant.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The version written under [`FORMAT_KEY`]; bump it when an encoding in this module changes.
///
/// - 1: bounds values are `first ++ last` (see [`LogMeta::decode_v1`]); one record per entry.
/// - 2: bounds values also hold `bytes`.
/// - 3: records are stored in blocks.
pub(crate) const FORMAT_VERSION: u32 = 3;

/// The older versions that [`FORMAT_VERSION`] directories are upgraded from on open.
pub(crate) const FORMAT_VERSION_V1: u32 = 1;
pub(crate) const FORMAT_VERSION_V2: u32 = 2;

const TAG_FORMAT: u8 = 0x00;
const TAG_META: u8 = 0x01;
const TAG_RECORD: u8 = 0x02;
const TAG_BLOCK: u8 = 0x03;

const SNAPSHOT_HEADER: u8 = 0x00;
const SNAPSHOT_CHUNK: u8 = 0x01;

/// The key of the format version marker.
pub(crate) const FORMAT_KEY: [u8; 1] = [TAG_FORMAT];

/// The prefix shared by every meta key (for the scan on open).
pub(crate) const META_PREFIX: [u8; 1] = [TAG_META];

/// The prefix shared by every format-2 record key (for the upgrade to blocks).
pub(crate) const V2_RECORD_PREFIX: [u8; 1] = [TAG_RECORD];

/// The first key after every format-2 record key.
pub(crate) const V2_RECORD_END: [u8; 1] = [TAG_RECORD + 1];

/// Appends `u16_be(len) ++ name`, or returns `None` if the name is longer than
/// [`MAX_NAME_LEN`].
fn push_name(key: &mut Vec<u8>, name: &str) -> Option<()> {
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    let len = u16::try_from(name.len()).ok()?;
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    Some(())
}

/// The key of `log`'s meta entry, or `None` if the name is too long.
pub(crate) fn meta_key(log: &str) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(1 + 2 + log.len());
    key.push(TAG_META);
    push_name(&mut key, log)?;
    Some(key)
}

/// Decodes the log name from a meta key.
pub(crate) fn decode_meta_key(key: &[u8]) -> Option<String> {
    let (&tag, rest) = key.split_first()?;
    if tag != TAG_META {
        return None;
    }
    let (len, name) = rest.split_first_chunk::<2>()?;
    if usize::from(u16::from_be_bytes(*len)) != name.len() {
        return None;
    }
    String::from_utf8(name.to_vec()).ok()
}

fn seq_key(tag: u8, log: &str, seq: u64) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(1 + 2 + log.len() + 8);
    key.push(tag);
    push_name(&mut key, log)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Some(key)
}

/// The key of the block of `log` whose last record is `last`, or `None` if the name is too
/// long.
pub(crate) fn block_key(log: &str, last: u64) -> Option<Vec<u8>> {
    seq_key(TAG_BLOCK, log, last)
}

/// The key of record `seq` of `log` in formats 1 and 2, or `None` if the name is too long.
pub(crate) fn v2_record_key(log: &str, seq: u64) -> Option<Vec<u8>> {
    seq_key(TAG_RECORD, log, seq)
}

/// The log name and `seq` of a format-2 record key.
pub(crate) fn decode_v2_record_key(key: &[u8]) -> Option<(String, u64)> {
    let (&tag, rest) = key.split_first()?;
    if tag != TAG_RECORD {
        return None;
    }
    let (rest, seq) = rest.split_last_chunk::<8>()?;
    let (len, name) = rest.split_first_chunk::<2>()?;
    if usize::from(u16::from_be_bytes(*len)) != name.len() {
        return None;
    }
    Some((
        String::from_utf8(name.to_vec()).ok()?,
        u64::from_be_bytes(*seq),
    ))
}

/// A log's bounds as kept in its meta entry and in memory.
///
/// # Invariants
/// - `first <= last + 1`; `first == last + 1` means every record was trimmed, and then
///   `bytes == 0`.
/// - `first` is the `seq` of the oldest record a read returns (not merely a lower bound), so
///   `bounds()` needs no disk access. Every block whose records are all below `first` has been
///   deleted; the one block a trim cut through may still hold records below `first`, which
///   reads skip.
/// - `bytes` is the sum of the data lengths of the records `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogMeta {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) bytes: u64,
}

impl LogMeta {
    /// Whether every record was trimmed.
    pub(crate) fn is_empty(self) -> bool {
        self.first > self.last
    }

    pub(crate) fn encode(self) -> [u8; 24] {
        let mut value = [0; 24];
        let (first, rest) = value.split_at_mut(8);
        let (last, bytes) = rest.split_at_mut(8);
        first.copy_from_slice(&self.first.to_be_bytes());
        last.copy_from_slice(&self.last.to_be_bytes());
        bytes.copy_from_slice(&self.bytes.to_be_bytes());
        value
    }

    pub(crate) fn decode(value: &[u8]) -> Option<Self> {
        let value: &[u8; 24] = value.try_into().ok()?;
        let (first, rest) = value.split_at(8);
        let (last, bytes) = rest.split_at(8);
        let meta = Self {
            first: u64::from_be_bytes(first.try_into().ok()?),
            last: u64::from_be_bytes(last.try_into().ok()?),
            bytes: u64::from_be_bytes(bytes.try_into().ok()?),
        };
        let valid =
            meta.first <= meta.last.saturating_add(1) && !(meta.is_empty() && meta.bytes > 0);
        valid.then_some(meta)
    }

    /// Decodes a format-version-1 value, `first ++ last`, into `(first, last)`.
    pub(crate) fn decode_v1(value: &[u8]) -> Option<(u64, u64)> {
        let value: &[u8; 16] = value.try_into().ok()?;
        let (first, last) = value.split_at(8);
        let first = u64::from_be_bytes(first.try_into().ok()?);
        let last = u64::from_be_bytes(last.try_into().ok()?);
        (first <= last.saturating_add(1)).then_some((first, last))
    }
}

fn snapshot_prefix(name: &str, kind: u8, extra: usize) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(2 + name.len() + 1 + extra);
    push_name(&mut key, name)?;
    key.push(kind);
    Some(key)
}

/// The key of snapshot `name`'s header, or `None` if the name is too long.
pub(crate) fn snapshot_header_key(name: &str) -> Option<Vec<u8>> {
    snapshot_prefix(name, SNAPSHOT_HEADER, 0)
}

/// The key of chunk `index` of snapshot `name`, or `None` if the name is too long.
pub(crate) fn snapshot_chunk_key(name: &str, index: u32) -> Option<Vec<u8>> {
    let mut key = snapshot_prefix(name, SNAPSHOT_CHUNK, 4)?;
    key.extend_from_slice(&index.to_be_bytes());
    Some(key)
}

/// The chunk index at the end of a chunk key.
pub(crate) fn decode_chunk_index(key: &[u8]) -> Option<u32> {
    let (_, index) = key.split_last_chunk::<4>()?;
    Some(u32::from_be_bytes(*index))
}

/// A snapshot's header entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotHeader {
    /// The sequence number the snapshot covers.
    pub(crate) seq: u64,
    /// The blob's length in bytes.
    pub(crate) len: u64,
    /// How many chunk entries hold the blob.
    pub(crate) chunks: u32,
}

impl SnapshotHeader {
    pub(crate) fn encode(self) -> [u8; 20] {
        let mut value = [0; 20];
        let (seq, rest) = value.split_at_mut(8);
        let (len, chunks) = rest.split_at_mut(8);
        seq.copy_from_slice(&self.seq.to_be_bytes());
        len.copy_from_slice(&self.len.to_be_bytes());
        chunks.copy_from_slice(&self.chunks.to_be_bytes());
        value
    }

    pub(crate) fn decode(value: &[u8]) -> Option<Self> {
        let value: &[u8; 20] = value.try_into().ok()?;
        let (seq, rest) = value.split_at(8);
        let (len, chunks) = rest.split_at(8);
        Some(Self {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            len: u64::from_be_bytes(len.try_into().ok()?),
            chunks: u32::from_be_bytes(chunks.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_sort_by_name_then_seq() {
        let a1 = block_key("a", 1).unwrap();
        let a256 = block_key("a", 256).unwrap();
        let a_nul = block_key("a\0", 0).unwrap();
        let b0 = block_key("b", 0).unwrap();
        assert!(a1 < a256);
        // Length first: every "a" block sorts before every "a\0" block.
        assert!(block_key("a", u64::MAX).unwrap() < a_nul);
        assert!(a256 < b0);
        // Blocks sort after every format-2 record and every bounds entry.
        assert!(v2_record_key("z", u64::MAX).unwrap() < block_key("", 0).unwrap());
        assert!(meta_key("z").unwrap() < v2_record_key("", 0).unwrap());
        let v2 = v2_record_key("a\0b", 9).unwrap();
        assert_eq!(decode_v2_record_key(&v2), Some(("a\0b".to_owned(), 9)));
        assert_eq!(decode_v2_record_key(&block_key("a", 9).unwrap()), None);
    }

    #[test]
    fn names_with_nul_do_not_alias_records() {
        // Without a length prefix, "a" ++ 0x00 ++ seq could equal "a\0..." ++ seq.
        let mut seen = std::collections::HashSet::new();
        for name in ["", "a", "a\0", "a\0\0", "\0", "ab"] {
            for seq in [0, 1, 0x0100, u64::MAX] {
                assert!(seen.insert(block_key(name, seq).unwrap()));
            }
        }
    }

    #[test]
    fn meta_round_trips() {
        let meta = LogMeta {
            first: 3,
            last: 9,
            bytes: 1 << 40,
        };
        assert_eq!(LogMeta::decode(&meta.encode()), Some(meta));
        let empty = LogMeta {
            first: 10,
            last: 9,
            bytes: 0,
        };
        assert!(empty.is_empty());
        assert_eq!(LogMeta::decode(&empty.encode()), Some(empty));
        // first > last + 1 breaks the invariant, and so do bytes in an empty log.
        let bad = [
            LogMeta {
                first: 11,
                last: 9,
                bytes: 0,
            },
            LogMeta { bytes: 1, ..empty },
        ];
        for meta in bad {
            assert_eq!(LogMeta::decode(&meta.encode()), None, "{meta:?}");
        }
        assert_eq!(LogMeta::decode(&[0; 23]), None);
        // The version-1 encoding is only accepted by `decode_v1`.
        let mut v1 = [0; 16];
        v1[..8].copy_from_slice(&3u64.to_be_bytes());
        v1[8..].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(LogMeta::decode(&v1), None);
        assert_eq!(LogMeta::decode_v1(&v1), Some((3, 9)));
        assert_eq!(LogMeta::decode_v1(&meta.encode()), None);
        let key = meta_key("x\0y").unwrap();
        assert_eq!(decode_meta_key(&key).as_deref(), Some("x\0y"));
    }

    #[test]
    fn names_longer_than_the_limit_are_refused() {
        let longest = "x".repeat(MAX_NAME_LEN);
        let key = block_key(&longest, u64::MAX).unwrap();
        assert_eq!(key.len(), usize::from(u16::MAX));
        assert!(snapshot_chunk_key(&longest, u32::MAX).unwrap().len() <= usize::from(u16::MAX));
        let too_long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(block_key(&too_long, 0), None);
        assert_eq!(meta_key(&too_long), None);
        assert_eq!(snapshot_header_key(&too_long), None);
    }

    #[test]
    fn snapshot_header_round_trips() {
        let header = SnapshotHeader {
            seq: 7,
            len: 3 << 20,
            chunks: 3,
        };
        assert_eq!(SnapshotHeader::decode(&header.encode()), Some(header));
        let chunk = snapshot_chunk_key("s", 258).unwrap();
        assert_eq!(decode_chunk_index(&chunk), Some(258));
        // The header sorts before the chunks.
        assert!(snapshot_header_key("s").unwrap() < snapshot_chunk_key("s", 0).unwrap());
    }
}
