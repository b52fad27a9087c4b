//! How stored events are written as JSON.
//!
//! Data stored as JSON (`application/json`, or a `+json` type) is embedded as is; anything else
//! becomes a JSON string: UTF-8 text unchanged, other bytes in base64 (RFC 4648 with padding)
//! flagged by `"enc":"base64"`. Entries carry the content type in `ct` unless it is plain
//! `application/json`.

use std::io::Write as _;

use bytes::Bytes;
use herald_core::Path;
use herald_engine::Event;

/// A copy of a request body, in an allocation of its own, for an event to keep. hyper hands
/// a body that came in one read as a slice of the connection's read buffer, which the event
/// would keep alive, whole, for as long as it stays in its topic's window (measured: 32
/// clients appending 200-byte events kept 117 MB of hyper's buffers alive at the peak, where
/// the windows count 8 MB). One copy of the body per append is next to nothing beside the
/// request itself.
pub(crate) fn owned(body: &Bytes) -> Bytes {
    Bytes::copy_from_slice(body)
}

/// Whether `content_type` declares JSON: `application/json` or any `+json` type, parameters
/// ignored.
pub(crate) fn is_json_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

/// Whether `content_type` is plain `application/json` (parameters ignored).
pub(crate) fn is_plain_json(content_type: &str) -> bool {
    essence(content_type).eq_ignore_ascii_case("application/json")
}

fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Whether `data` is one valid JSON value (within serde_json's nesting limit).
pub(crate) fn is_valid_json(data: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
}

/// How event data is written as a JSON value.
enum Data<'a> {
    /// Valid JSON text, embedded as is (trimmed).
    Json(&'a str),
    /// UTF-8 text, as a JSON string.
    Text(&'a str),
    /// Other bytes, as a JSON string of their base64.
    Base64(&'a [u8]),
}

impl<'a> Data<'a> {
    /// How `bytes` of type `content_type` are written, as the module docs describe.
    fn of(content_type: &str, bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) if is_json_type(content_type) && is_valid_json(bytes) => {
                Data::Json(text.trim())
            }
            Ok(text) => Data::Text(text),
            Err(_) => Data::Base64(bytes),
        }
    }

    fn push(&self, out: &mut Vec<u8>) {
        match self {
            Data::Json(text) => out.extend_from_slice(text.as_bytes()),
            Data::Text(text) => push_json_string(out, text),
            Data::Base64(bytes) => {
                out.push(b'"');
                push_base64(out, bytes);
                out.push(b'"');
            }
        }
    }
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_json_string(&mut out, s);
    utf8(out)
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Text made of the JSON pieces this module writes, all UTF-8.
pub(crate) fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The bucket and stream names of a topic: its first segment and the rest joined by `/`
/// (IorioDB topics have exactly two segments).
pub(crate) fn bucket_stream(topic: &Path) -> (String, String) {
    match topic.segments().split_first() {
        Some((bucket, rest)) => (bucket.clone(), rest.join("/")),
        None => (String::new(), String::new()),
    }
}

/// IorioDB's query entry `{"meta":{"id","t"},"data":..}`.
pub(crate) fn query_entry(event: &Event) -> String {
    let mut out = Vec::with_capacity(event.data.len() + 48);
    push_listen_entry(&mut out, event, "");
    utf8(out)
}

/// IorioDB's listen entry `{"meta":{"id","t","bucket","stream"},"data":..}`, appended to
/// `out`; `names` is the pre-rendered `,"bucket":..,"stream":..` part. Metadata follows:
/// `"ct"` unless plain JSON, `"enc"` for base64 data, `"origin"` when recorded.
pub(crate) fn push_listen_entry(out: &mut Vec<u8>, event: &Event, names: &str) {
    let data = Data::of(&event.content_type, &event.data);
    let _ = write!(
        out,
        "{{\"meta\":{{\"id\":{},\"t\":{}{names}",
        event.seq, event.t_ms
    );
    if !is_plain_json(&event.content_type) {
        out.extend_from_slice(b",\"ct\":");
        push_json_string(out, &event.content_type);
    }
    if matches!(data, Data::Base64(_)) {
        out.extend_from_slice(b",\"enc\":\"base64\"");
    }
    if !event.origin.is_empty() {
        out.extend_from_slice(b",\"origin\":");
        push_json_string(out, &event.origin);
    }
    out.extend_from_slice(b"},\"data\":");
    data.push(out);
    out.push(b'}');
}

#[cfg(test)]
fn listen_entry(event: &Event, names: &str) -> String {
    let mut out = Vec::new();
    push_listen_entry(&mut out, event, names);
    utf8(out)
}

/// The `,"bucket":..,"stream":..` part of a listen entry.
pub(crate) fn names_fragment(bucket: &str, stream: &str) -> String {
    format!(
        ",\"bucket\":{},\"stream\":{}",
        json_string(bucket),
        json_string(stream)
    )
}

/// The gap marker: events `from..=to` are no longer retained.
pub(crate) fn gap_entry(names: &str, from: u64, to: u64) -> String {
    format!(
        "{{\"meta\":{{\"id\":{to},\"t\":0{names},\"gap\":{{\"from\":{from},\"to\":{to}}}}},\"data\":null}}"
    )
}

/// The reset marker: the stream was deleted and created again with epoch `epoch`.
pub(crate) fn reset_entry(names: &str, epoch: u64) -> String {
    format!("{{\"meta\":{{\"id\":0{names},\"reset\":{{\"epoch\":{epoch}}}}},\"data\":null}}")
}

/// The native API's event object `{"seq","t","ct","data"[,"enc"]}`.
pub(crate) fn native_event(event: &Event) -> String {
    let data = Data::of(&event.content_type, &event.data);
    let mut out = Vec::with_capacity(event.data.len() + event.content_type.len() + 48);
    let _ = write!(out, "{{\"seq\":{},\"t\":{},\"ct\":", event.seq, event.t_ms);
    push_json_string(&mut out, &event.content_type);
    if matches!(data, Data::Base64(_)) {
        out.extend_from_slice(b",\"enc\":\"base64\"");
    }
    out.extend_from_slice(b",\"data\":");
    data.push(&mut out);
    out.push(b'}');
    utf8(out)
}

/// Standard base64 (RFC 4648 §4) with padding.
#[cfg(test)]
fn base64(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    push_base64(&mut out, bytes);
    utf8(out)
}

/// Appends standard base64 (RFC 4648 §4) with padding.
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'A');
    out.reserve(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { b'=' });
        out.push(if chunk.len() > 2 { sym(n) } else { b'=' });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn an_owned_body_keeps_no_part_of_the_buffer_it_came_in() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let body = buffer.slice(100..300);
        let kept = owned(&body);
        assert_eq!(kept, body);
        let within = buffer.as_ptr_range();
        assert!(!within.contains(&kept.as_ptr()));
        // The buffer's last reference goes with `body`: the event holds none.
        drop((buffer, body));
        assert!(kept.is_unique());
    }

    fn ev(ct: &str, data: &'static [u8]) -> Event {
        Event::new(
            3,
            7,
            Arc::from(ct),
            Arc::from(""),
            Bytes::new(),
            Bytes::from_static(data),
        )
    }

    #[test]
    fn json_is_embedded() {
        assert_eq!(
            query_entry(&ev("application/json", br#"{"a":1}"#)),
            r#"{"meta":{"id":3,"t":7},"data":{"a":1}}"#
        );
        assert_eq!(
            listen_entry(&ev("application/json", b"[1]"), &names_fragment("b", "s")),
            r#"{"meta":{"id":3,"t":7,"bucket":"b","stream":"s"},"data":[1]}"#
        );
    }

    #[test]
    fn other_types_are_strings() {
        assert_eq!(
            query_entry(&ev("text/plain", b"hi \"x\"")),
            r#"{"meta":{"id":3,"t":7,"ct":"text/plain"},"data":"hi \"x\""}"#
        );
        assert_eq!(
            query_entry(&ev("application/octet-stream", &[0xff, 0, 1])),
            r#"{"meta":{"id":3,"t":7,"ct":"application/octet-stream","enc":"base64"},"data":"/wAB"}"#
        );
        // Invalid JSON stored under a JSON type is not embedded raw.
        assert_eq!(
            query_entry(&ev("application/json", b"{nope")),
            r#"{"meta":{"id":3,"t":7},"data":"{nope"}"#
        );
        assert_eq!(
            native_event(&ev("application/vnd.x+json", b"1")),
            r#"{"seq":3,"t":7,"ct":"application/vnd.x+json","data":1}"#
        );
    }

    #[test]
    fn markers() {
        let n = names_fragment("b", "s");
        let gap: serde_json::Value = serde_json::from_str(&gap_entry(&n, 2, 5)).unwrap();
        assert_eq!(
            gap,
            serde_json::json!({"meta":{"id":5,"t":0,"bucket":"b","stream":"s","gap":{"from":2,"to":5}},"data":null})
        );
        let reset: serde_json::Value = serde_json::from_str(&reset_entry(&n, 9)).unwrap();
        assert_eq!(
            reset,
            serde_json::json!({"meta":{"id":0,"bucket":"b","stream":"s","reset":{"epoch":9}},"data":null})
        );
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input), expected);
        }
    }

    fn any_data() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let json = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            ".{0,12}".prop_map(|s| serde_json::Value::String(s).to_string()),
            (any::<i32>(), ".{0,6}", any::<bool>()).prop_map(|(n, s, b)| {
                serde_json::json!({"n": n, "s": s, "b": [b, null]}).to_string()
            }),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            ".{0,24}".prop_map(String::into_bytes),
            (json, "[ \n\t]{0,2}").prop_map(|(j, pad)| format!("{pad}{j}{pad}").into_bytes()),
        ]
    }

    proptest::proptest! {
        /// Whatever an event holds, its listen entry is one JSON object whose `data` gives
        /// the event's bytes back as the module documentation describes.
        #[test]
        fn entries_are_json_and_keep_the_data(
            ct in proptest::sample::select(vec![
                "application/json",
                "application/vnd.x+json; charset=utf-8",
                "text/plain",
                "application/octet-stream",
                "odd \"type\\",
            ]),
            data in any_data(),
            origin in ".{0,8}",
            seq in proptest::prelude::any::<u64>(),
        ) {
            let event = Event::new(
                seq,
                7,
                Arc::from(ct),
                Arc::from(origin.as_str()),
                Bytes::new(),
                Bytes::from(data.clone()),
            );
            let text = listen_entry(&event, &names_fragment("b", "s/t"));
            let v: serde_json::Value = serde_json::from_str(&text).expect("an entry is JSON");
            let meta = &v["meta"];
            proptest::prop_assert_eq!(&meta["id"], &serde_json::json!(seq));
            proptest::prop_assert_eq!(&meta["bucket"], "b");
            proptest::prop_assert_eq!(&meta["stream"], "s/t");
            if is_plain_json(ct) {
                proptest::prop_assert!(meta.get("ct").is_none());
            } else {
                proptest::prop_assert_eq!(&meta["ct"], ct);
            }
            if origin.is_empty() {
                proptest::prop_assert!(meta.get("origin").is_none());
            } else {
                proptest::prop_assert_eq!(&meta["origin"], origin.as_str());
            }
            let got = &v["data"];
            if is_json_type(ct) && is_valid_json(&data) {
                let expected: serde_json::Value = serde_json::from_slice(&data).unwrap();
                proptest::prop_assert_eq!(got, &expected);
                proptest::prop_assert!(meta.get("enc").is_none());
            } else if let Ok(text) = std::str::from_utf8(&data) {
                proptest::prop_assert_eq!(got.as_str(), Some(text));
                proptest::prop_assert!(meta.get("enc").is_none());
            } else {
                proptest::prop_assert_eq!(&meta["enc"], "base64");
                let encoded = base64(&data);
                proptest::prop_assert_eq!(got.as_str(), Some(encoded.as_str()));
            }
            // A query entry is the same without the names.
            let query: serde_json::Value = serde_json::from_str(&query_entry(&event)).unwrap();
            proptest::prop_assert!(query["meta"].get("bucket").is_none());
            proptest::prop_assert_eq!(&query["data"], got);
        }
    }
}
