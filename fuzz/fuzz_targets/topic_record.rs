//! Decoding a topic event record never panics, and a decoded record encodes back to the same
//! bytes (the format is canonical) and decodes again to the same event.
#![no_main]

use herald_core::topic::{RECORD_HEADER_LEN, decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = decode_record(data) else {
        return;
    };
    let optional_fields = if !rec.attrs.is_empty() {
        1 + rec.origin.len() + 2 + rec.attrs.len()
    } else if !rec.origin.is_empty() {
        1 + rec.origin.len()
    } else {
        0
    };
    assert_eq!(
        data.len(),
        RECORD_HEADER_LEN + rec.content_type.len() + optional_fields + rec.data.len()
    );
    let bytes = encode_record(rec.t_ms, rec.content_type, rec.origin, rec.attrs, rec.data)
        .expect("a decoded record's fields are within the limits");
    assert_eq!(bytes, data);
    let again = decode_record(&bytes).expect("an encoded record decodes");
    assert_eq!(again, rec);
});
