//! Decoding a document log record never panics, and a decoded record applies to a tree and
//! encodes back to an equal record.
#![no_main]

use herald_core::DocOp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(op) = serde_json::from_slice::<DocOp>(data) else {
        return;
    };
    let mut doc = serde_json::json!({});
    op.apply(&mut doc);
    let bytes = serde_json::to_vec(&op).expect("a DocOp always serializes");
    let back: DocOp = serde_json::from_slice(&bytes).expect("encoded record decodes");
    assert_eq!(back, op);
});
