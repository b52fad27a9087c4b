//! Decoding the accounts snapshot never panics, and a decoded registry encodes to bytes that
//! decode to an equal registry and encode again to the same bytes.
#![no_main]

use herald_auth::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(registry) = Registry::from_bytes(data) else {
        return;
    };
    let bytes = registry.to_bytes().expect("a decoded registry encodes");
    let again = Registry::from_bytes(&bytes).expect("an encoded registry decodes");
    assert_eq!(again, registry);
    assert_eq!(again.to_bytes().expect("encodes"), bytes);
});
