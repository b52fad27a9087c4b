//! Decoding a stored block of records never panics; what decodes is a non-empty run of records
//! with strictly increasing sequence numbers, each within the input, and encoding them again
//! gives a block that decodes to the same records.
#![no_main]

use herald_store_fjall::fuzzing::{decode_block, encode_block};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(records) = decode_block(data) else {
        return;
    };
    assert!(!records.is_empty());
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    let payload: usize = records.iter().map(|(_, d)| d.len()).sum();
    assert!(payload <= data.len());
    let again = encode_block(&records);
    assert!(again.len() <= data.len(), "the encoder's varints are the shortest");
    assert_eq!(decode_block(&again), Some(records));
});
