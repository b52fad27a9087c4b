//! Token verification never panics on hostile input, with or without a secret.
#![no_main]

use herald_auth::{JwtConfig, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = verify(token, &JwtConfig::unverified(), 1_700_000_000);
    let _ = verify(token, &JwtConfig::with_secret("secret"), 1_700_000_000);
});
