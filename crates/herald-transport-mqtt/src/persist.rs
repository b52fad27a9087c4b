//! Persistent sessions on disk, so that they survive a restart of Herald.
//!
//! Each session whose expiry is not zero is one `KeyedRecords` value (log
//! `mqtt-session:<client id>`), written when its subscriptions change (before the SUBACK or
//! UNSUBACK) and when its connection ends (positions in its topics, messages in flight and
//! queued). Messages in flight are kept as MQTT 5 PUBLISH packets, which hold every field.
//!
//! Positions are saved at those moments only: after a crash (not a clean shutdown) a session
//! resumes from where it was last saved, so QoS 1 and 2 messages delivered since may be sent
//! again (at least once; a QoS 2 message may then arrive twice).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use herald_core::{Path, PathLimits};
use herald_engine::Listener;
use herald_mqtt_codec::{Packet, Protocol, Publish, QoS, SubOptions, decode_packet, encode};
use serde::{Deserialize, Serialize};

use crate::names::filter_pattern;
use crate::session::{OutState, Session, Subscription};

/// The log name prefix of stored sessions.
pub(crate) const PREFIX: &str = "mqtt-session:";

#[derive(Serialize, Deserialize)]
struct Stored {
    /// Format version, 1.
    v: u32,
    expiry_s: u64,
    /// The user whose session it is (`None`: anonymous).
    #[serde(default)]
    owner: Option<String>,
    /// When it was saved, in ms since the Unix epoch (its expiry counts from there).
    saved_ms: u64,
    subs: Vec<StoredSub>,
    positions: Vec<StoredPosition>,
    /// `[packet id, released, base64 PUBLISH]`.
    inflight: Vec<(u16, bool, String)>,
    /// base64 PUBLISH packets.
    queue: Vec<String>,
    incoming_qos2: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
struct StoredSub {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct StoredPosition {
    /// The topic, as `Path` displays it.
    path: String,
    epoch: Option<u64>,
    next: u64,
}

fn encode_publish(p: &Publish) -> String {
    let mut buf = BytesMut::new();
    encode(&Packet::Publish(p.clone()), Protocol::V5, &mut buf);
    B64.encode(&buf)
}

fn decode_publish(s: &str) -> Option<Publish> {
    let bytes = B64.decode(s).ok()?;
    match decode_packet(&bytes, Some(Protocol::V5), u32::MAX).ok()?? {
        (Packet::Publish(p), _) => Some(p),
        _ => None,
    }
}

/// The stored form of `session`, saved at `now_ms`.
pub(crate) fn save(session: &Session, now_ms: u64) -> Vec<u8> {
    let stored = Stored {
        v: 1,
        expiry_s: session.expiry.as_secs(),
        owner: session.owner.clone(),
        saved_ms: now_ms,
        subs: session
            .subs
            .iter()
            .map(|s| StoredSub {
                filter: s.filter.clone(),
                qos: s.options.qos as u8,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
                retain_handling: s.options.retain_handling,
                id: s.id,
            })
            .collect(),
        positions: session
            .listener
            .positions()
            .into_iter()
            .map(|(path, p)| StoredPosition {
                path: path.to_string(),
                epoch: p.epoch,
                next: p.next,
            })
            .collect(),
        inflight: session
            .inflight
            .iter()
            .map(|(id, state, p)| (*id, *state == OutState::Released, encode_publish(p)))
            .collect(),
        queue: session.queue.iter().map(encode_publish).collect(),
        incoming_qos2: session.incoming_qos2.iter().copied().collect(),
    };
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// A session restored from its stored form, and how long ago it was saved; `None` when the
/// bytes are not a stored session.
pub(crate) fn restore(
    bytes: &[u8],
    mut listener: Listener,
    limits: &PathLimits,
    now_ms: u64,
) -> Option<(Session, Duration)> {
    let stored: Stored = serde_json::from_slice(bytes).ok()?;
    if stored.v != 1 {
        return None;
    }
    let unlimited = PathLimits {
        max_segments: usize::MAX,
        max_segment_bytes: usize::MAX,
    };
    for p in &stored.positions {
        let Ok(path) = Path::parse_url(&p.path, &unlimited) else {
            continue;
        };
        match p.epoch {
            Some(epoch) => listener.resume(path, epoch, p.next),
            None => listener.subscribe(path, Some(p.next)),
        };
    }
    let mut session = Session::new(listener, Duration::from_secs(stored.expiry_s), stored.owner);
    for s in stored.subs {
        let shared = s.filter.starts_with("$share/");
        let inner =
            herald_mqtt_codec::parse_shared(&s.filter).map_or(s.filter.as_str(), |(_, f)| f);
        let Some((pattern, exact)) = filter_pattern(inner, limits) else {
            continue;
        };
        if !shared {
            match &exact {
                Some(path) => session.listener.subscribe(path.clone(), None),
                None => session.listener.subscribe_pattern(pattern.clone(), None),
            };
        }
        session.subs.push(Subscription {
            filter: s.filter,
            pattern,
            exact,
            options: SubOptions {
                qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                retain_handling: s.retain_handling,
            },
            id: s.id,
            shared,
        });
    }
    for (id, released, p) in stored.inflight {
        if let Some(p) = decode_publish(&p) {
            let state = if released {
                OutState::Released
            } else {
                OutState::Sent
            };
            session.inflight.push_back((id, state, p));
        }
    }
    session.queue = stored
        .queue
        .iter()
        .filter_map(|p| decode_publish(p))
        .collect();
    session.incoming_qos2 = stored.incoming_qos2.into_iter().collect();
    let age = Duration::from_millis(now_ms.saturating_sub(stored.saved_ms));
    Some((session, age))
}
