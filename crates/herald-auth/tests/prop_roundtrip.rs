//! Property tests: minted tokens verify to exactly the grants they were minted with, and the
//! resulting permissions agree with a direct reading of Icepeak's rule ("any entry whose prefix
//! is a segment-wise prefix of the path and that contains the mode"). Also: no input makes
//! `verify` panic.

use base64::Engine;
use herald_auth::{AuthError, JwtConfig, mint, verify};
use herald_core::{Access, Grant, Modes, Path, PathLimits, PathPattern};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000;

fn segment() -> impl Strategy<Value = String> {
    // A small alphabet so that random paths often fall under random prefixes; includes
    // characters that are special elsewhere (`#`, `+`, `%`, `.`) but never a whole dot segment.
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("ab".to_owned()),
        Just("#".to_owned()),
        Just("+".to_owned()),
        Just("%2F".to_owned()),
        Just("...".to_owned()),
        "[a-z0-9_.#+%-]{1,6}".prop_filter("no dot segments", |s| s != "." && s != ".."),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(segment(), 0..5)
        .prop_map(|segs| Path::from_segments(segs, &PathLimits::default()).unwrap())
}

fn modes() -> impl Strategy<Value = Modes> {
    prop_oneof![
        Just(Modes::NONE),
        Just(Modes::READ),
        Just(Modes::WRITE),
        Just(Modes::READ_WRITE),
    ]
}

fn whitelist() -> impl Strategy<Value = Vec<(Path, Modes)>> {
    prop::collection::vec((path(), modes()), 0..6)
}

/// Icepeak's `isAuthorizedByClaim`, written against the whitelist directly.
fn reference_allows(whitelist: &[(Path, Modes)], path: &Path, mode: Modes) -> bool {
    whitelist.iter().any(|(prefix, modes)| {
        path.segments().starts_with(prefix.segments()) && modes.contains(mode)
    })
}

proptest! {
    #[test]
    fn mint_then_verify_round_trips(
        wl in whitelist(),
        signed in any::<bool>(),
        expires_in in prop::option::of(0u64..1_000_000),
        probes in prop::collection::vec(path(), 1..8),
    ) {
        let secret: &[u8] = b"prop-secret";
        let token = mint(signed.then_some(secret), expires_in, &wl, NOW).unwrap();
        let cfg = if signed { JwtConfig::with_secret(secret) } else { JwtConfig::unverified() };
        let claims = verify(&token, &cfg, NOW).unwrap();

        let expected = Access::Grants(
            wl.iter()
                .map(|(p, m)| Grant { pattern: PathPattern::prefix(p), modes: *m })
                .collect(),
        );
        prop_assert_eq!(&claims.access, &expected);
        prop_assert_eq!(claims.expires_at, expires_in.map(|e| NOW + e));

        // Probe both random paths and the whitelisted prefixes themselves plus a child.
        let mut paths = probes;
        for (p, _) in &wl {
            paths.push(p.clone());
            let mut segs = p.segments().to_vec();
            segs.push("child".to_owned());
            paths.push(Path::from_segments(segs, &PathLimits::default()).unwrap());
        }
        for p in &paths {
            for mode in [Modes::READ, Modes::WRITE] {
                prop_assert_eq!(
                    claims.allows(p, mode),
                    reference_allows(&wl, p, mode),
                    "path {} mode {}", p, mode
                );
            }
        }

        if signed {
            if let Some(e) = expires_in {
                prop_assert!(verify(&token, &cfg, NOW + e).is_ok());
                prop_assert!(matches!(
                    verify(&token, &cfg, NOW + e + 1),
                    Err(AuthError::Invalid(_))
                ));
            }
            let wrong = JwtConfig::with_secret("other");
            prop_assert!(matches!(verify(&token, &wrong, NOW), Err(AuthError::Invalid(_))));
        } else {
            // An unsigned token never passes a verifying configuration.
            prop_assert!(matches!(
                verify(&token, &JwtConfig::with_secret(secret), NOW),
                Err(AuthError::Invalid(_))
            ));
        }
    }

    #[test]
    fn verify_never_panics_on_arbitrary_strings(s in ".{0,300}", now in any::<u64>()) {
        let _ = verify(&s, &JwtConfig::unverified(), now);
        let _ = verify(&s, &JwtConfig::with_secret("k"), now);
    }

    #[test]
    fn verify_never_panics_on_arbitrary_json_parts(
        header in arb_json(),
        payload in arb_json(),
        sig in "[A-Za-z0-9_=-]{0,50}",
        now in any::<u64>(),
    ) {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.{sig}",
            b64.encode(header.to_string()),
            b64.encode(payload.to_string())
        );
        let _ = verify(&token, &JwtConfig::unverified(), now);
        let _ = verify(&token, &JwtConfig::with_secret("k"), now);
        // The same payload wrapped as a claim set.
        let claims = serde_json::json!({"icepeak": payload, "exp": header, "nbf": 1});
        let token = format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), b64.encode(claims.to_string()));
        let _ = verify(&token, &JwtConfig::unverified(), now);
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e20f64..1e20).prop_map(|f| json!(f)),
        prop_oneof![
            Just("read".to_owned()),
            Just("write".to_owned()),
            Just("..".to_owned()),
            Just(String::new()),
            ".{0,8}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("version".to_owned()),
            Just("whitelist".to_owned()),
            Just("prefix".to_owned()),
            Just("modes".to_owned()),
            Just("alg".to_owned()),
            "[a-z]{1,4}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
