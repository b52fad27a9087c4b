//! IorioDB session tokens: verifying arbitrary strings never panics and never fails other than
//! malformed, invalid or expired; a minted token verifies back to its user name while
//! `now <= exp` and is expired after.
#![no_main]

use herald_auth::session::{self, SessionError};
use herald_auth::token::MAX_TOKEN_LEN;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing session secret";
const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for secret in [SECRET, b"".as_slice()] {
        match session::verify(&text, secret, NOW) {
            Ok(_)
            | Err(SessionError::Malformed | SessionError::Invalid | SessionError::Expired) => {}
            Err(e) => panic!("unexpected verify error {e:?}"),
        }
    }

    let Some((ttl, name)) = data.split_first_chunk::<8>() else {
        return;
    };
    let ttl = u64::from_le_bytes(*ttl);
    let user = String::from_utf8_lossy(name);
    match session::mint(&user, ttl, SECRET, NOW) {
        Ok(_) => assert!(NOW.checked_add(ttl).is_some()),
        Err(SessionError::Mint(_)) => assert!(NOW.checked_add(ttl).is_none()),
        Err(e) => panic!("unexpected mint error {e:?}"),
    }
    // Every ttl that does not overflow, so that the round trip is always exercised.
    let ttl = ttl % (u64::MAX - NOW + 1);
    let exp = NOW + ttl;
    let token = session::mint(&user, ttl, SECRET, NOW).expect("mints");
    if token.len() > MAX_TOKEN_LEN {
        assert_eq!(
            session::verify(&token, SECRET, NOW),
            Err(SessionError::Malformed)
        );
        return;
    }
    assert_eq!(session::verify(&token, SECRET, NOW).as_deref(), Ok(&*user));
    assert_eq!(session::verify(&token, SECRET, exp).as_deref(), Ok(&*user));
    if let Some(after) = exp.checked_add(1) {
        assert_eq!(
            session::verify(&token, SECRET, after),
            Err(SessionError::Expired)
        );
    }
    assert_eq!(
        session::verify(&token, b"another secret", NOW),
        Err(SessionError::Invalid)
    );
});
