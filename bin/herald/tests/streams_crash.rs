//! Crash safety of IorioDB-compatible event streams in the real binary: concurrent appenders
//! (`POST /streams/crash/...`), `kill -9` at a random moment, restart on the same data
//! directory. After every restart, per stream:
//! - the seqnums are exactly `1..=last`: no gap, no duplicate;
//! - every acknowledged append (201) is there under the seqnum it was acknowledged with, with
//!   its exact body;
//! - the only events nobody acknowledged are the ones in flight when the server died (at most
//!   one per appender per crash), each at most once, and one that was not there after a restart
//!   never shows up later;
//! - event times never go backwards;
//! - the next append gets `last + 1`.
//!
//! Repeated on one data directory, so the streams accumulate across crashes. Four appenders
//! have a stream each; two more share one, so their appends interleave in one sequence.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use rand::Rng;
use serde_json::{Value, json};

/// Appenders with a stream of their own (`own0`..).
const OWN_WRITERS: usize = 4;
/// Appenders sharing the stream `shared`.
const SHARED_WRITERS: usize = 2;
const CYCLES: usize = 4;
/// The password of the `admin` user the test creates.
const PASSWORD: &str = "crash-test-password";
/// The largest `limit` the server honours (`IorioConfig::max_query_limit`).
const PAGE: usize = 1000;

/// The stream appender `w` writes to.
fn stream_of(w: usize) -> String {
    if w < OWN_WRITERS {
        format!("own{w}")
    } else {
        "shared".to_owned()
    }
}

/// Every stream of the test.
fn streams() -> Vec<String> {
    let mut s: Vec<String> = (0..OWN_WRITERS).map(stream_of).collect();
    s.push(stream_of(OWN_WRITERS));
    s
}

/// The body of appender `w`'s `n`th event of `cycle`. Its keys are in order and it has no
/// spaces, so the stored event printed back by serde_json is the same text. Every fourth one
/// carries 1.5 KB of padding, so that some of the store's blocks are large enough for fjall's
/// blob files (key-value separation, from 1 KiB) and those are crashed and recovered too.
fn body(w: usize, cycle: usize, n: u64) -> String {
    if n.is_multiple_of(4) {
        let pad = "x".repeat(1_500);
        json!({"c": cycle, "n": n, "p": pad, "w": w}).to_string()
    } else {
        json!({"c": cycle, "n": n, "w": w}).to_string()
    }
}

/// What one appender saw in one cycle.
#[derive(Debug, Default)]
struct Appended {
    /// Acknowledged appends: seqnum from the 201, body.
    acked: Vec<(u64, String)>,
    /// Appends sent without an answer, once the server was going down: they may or may not
    /// have been stored.
    in_flight: Vec<String>,
}

/// Appends distinct events to its stream as fast as the acknowledgements come back, until
/// `stopping` is set and a request fails.
async fn appender(
    base: String,
    token: String,
    w: usize,
    cycle: usize,
    stopping: Arc<AtomicBool>,
    unexpected: Arc<AtomicU64>,
) -> Appended {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let url = format!("{base}/streams/crash/{}", stream_of(w));
    let mut out = Appended::default();
    for n in 0u64.. {
        let event = body(w, cycle, n);
        let result = client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("X-Session", &token)
            .body(event.clone())
            .send()
            .await;
        let answer = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                resp.text().await.map(|text| (status, text))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((201, text)) => {
                let ack: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("201 body is not JSON ({e}): {text:?}"));
                let seq = ack["meta"]["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("201 without meta.id: {text}"));
                out.acked.push((seq, event));
            }
            Ok((status, text)) => {
                // Any other answer is not an acknowledgement, and not expected at all.
                unexpected.fetch_add(1, Ordering::SeqCst);
                eprintln!("appender {w}: unexpected answer {status} {text}");
                break;
            }
            Err(e) => {
                out.in_flight.push(event);
                if !stopping.load(Ordering::SeqCst) {
                    unexpected.fetch_add(1, Ordering::SeqCst);
                    eprintln!("appender {w}: request failed while the server was up: {e}");
                }
                break;
            }
        }
    }
    out
}

/// What the test knows about one stream across cycles.
#[derive(Debug, Default)]
struct Expected {
    /// Events that must be there: acknowledged ones, and unacknowledged ones already seen
    /// after a restart (they must stay).
    events: BTreeMap<u64, String>,
    /// Unacknowledged events of the last crash that may or may not be there.
    maybe: BTreeSet<String>,
    /// Every body ever sent to the stream, to tell an event that should not exist.
    sent: usize,
}

/// `POST /sessions` as `admin`; returns the token.
async fn login(base: &str) -> String {
    let r = send(
        client()
            .post(format!("{base}/sessions"))
            .json(&json!({"username": "admin", "password": PASSWORD})),
    )
    .await;
    assert_eq!(r.status, 201, "login: {r:?}");
    r.json()["token"].as_str().expect("token").to_owned()
}

/// Every event of a stream, oldest first, read in pages: `(seq, t, data as text)`.
async fn read_all(base: &str, token: &str, stream: &str) -> Vec<(u64, u64, String)> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let r = send(
            client()
                .get(format!(
                    "{base}/streams/crash/{stream}?from={from}&limit={PAGE}"
                ))
                .header("X-Session", token),
        )
        .await;
        assert_eq!(r.status, 200, "GET {stream} from {from}: {r:?}");
        let page = r.json();
        let page = page.as_array().expect("an array of events");
        for e in page {
            let seq = e["meta"]["id"].as_u64().expect("meta.id");
            let t = e["meta"]["t"].as_u64().expect("meta.t");
            events.push((seq, t, e["data"].to_string()));
        }
        match events.last() {
            Some((last, _, _)) if !page.is_empty() => from = last + 1,
            _ => return events,
        }
    }
}

/// Checks one stream after a restart against what was acknowledged; afterwards everything
/// found is expected to stay.
fn check_stream(stream: &str, cycle: usize, found: &[(u64, u64, String)], exp: &mut Expected) {
    let ctx = format!("cycle {cycle}, stream {stream}");
    let seqs: Vec<u64> = found.iter().map(|(s, _, _)| *s).collect();
    let want: Vec<u64> = (1..=found.len() as u64).collect();
    assert!(
        seqs == want,
        "{ctx}: seqnums are not 1..={}: first differences {:?}",
        found.len(),
        seqs.iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>()
    );
    for pair in found.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "{ctx}: time goes backwards: {pair:?}"
        );
    }
    let mut bodies = BTreeSet::new();
    for (seq, _, data) in found {
        assert!(
            bodies.insert(data.as_str()),
            "{ctx}: {data} is stored twice (again at {seq})"
        );
    }
    let mut lost = Vec::new();
    for (seq, data) in &exp.events {
        match found.get(*seq as usize - 1) {
            Some((_, _, got)) if got == data => {}
            got => lost.push(format!("{seq}: expected {data}, got {got:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{ctx}: {} of {} acknowledged events lost or changed after kill -9, e.g. {:?}",
        lost.len(),
        exp.events.len(),
        &lost[..lost.len().min(5)]
    );
    let mut unacked = 0;
    for (seq, _, data) in found {
        if exp.events.contains_key(seq) {
            continue;
        }
        assert!(
            exp.maybe.remove(data),
            "{ctx}: event {seq} = {data} was never acknowledged and was not in flight at the \
             crash (in flight: {:?})",
            exp.maybe
        );
        unacked += 1;
        exp.events.insert(*seq, data.clone());
    }
    // What was in flight and is not there now must never appear later.
    exp.maybe.clear();
    eprintln!(
        "{ctx}: {} events (1..={}), {unacked} of them stored but never acknowledged, {} sent \
         in all",
        found.len(),
        found.len(),
        exp.sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_stream_appends_survive_kill_9_without_gaps_or_duplicates() {
    let mut s = start(&[]).await;
    // The test cannot give the server HERALD_ADMIN_PASSWORD (the testkit passes no
    // environment, and setting it in this process needs `unsafe`), so it adds the user
    // offline, on the data directory the first start created, the way an operator would.
    within("kill -9 before adding the user", s.kill9())
        .await
        .expect("kill -9");
    let data_dir = s.data_dir().to_str().expect("UTF-8 path").to_owned();
    let added = within_for(
        Duration::from_secs(60),
        "herald user add",
        tokio::process::Command::new(bin())
            .args(["user", "add", "admin", "--password", PASSWORD, "--admin"])
            .args(["--data-dir", &data_dir])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("herald user add runs");
    assert!(
        added.status.success(),
        "herald user add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    within_for(
        Duration::from_secs(40),
        "start with the user",
        s.start_again(),
    )
    .await
    .expect("herald starts");
    // One login for the whole test: sessions are signed with a secret kept in the data
    // directory, so the token must stay valid across the crashes.
    let token = login(&s.http_url()).await;

    let mut expected: BTreeMap<String, Expected> = streams()
        .into_iter()
        .map(|s| (s, Expected::default()))
        .collect();
    let mut rng = rand::rng();
    let writers = OWN_WRITERS + SHARED_WRITERS;
    for cycle in 0..CYCLES {
        let stopping = Arc::new(AtomicBool::new(false));
        let unexpected = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                tokio::spawn(appender(
                    s.http_url(),
                    token.clone(),
                    w,
                    cycle,
                    stopping.clone(),
                    unexpected.clone(),
                ))
            })
            .collect();

        let delay = Duration::from_millis(rng.random_range(200..=800));
        tokio::time::sleep(delay).await;
        stopping.store(true, Ordering::SeqCst);
        within("kill -9", s.kill9()).await.expect("kill -9");

        let mut acked_this_cycle = 0;
        for (w, t) in tasks.into_iter().enumerate() {
            let got = within_for(Duration::from_secs(10), "appender ends", t)
                .await
                .expect("appender task");
            let exp = expected.get_mut(&stream_of(w)).expect("known stream");
            exp.sent += got.acked.len() + got.in_flight.len();
            acked_this_cycle += got.acked.len();
            for (seq, data) in got.acked {
                if let Some(other) = exp.events.insert(seq, data.clone()) {
                    panic!(
                        "cycle {cycle}: seqnum {seq} of {} acknowledged twice: {other} and \
                         {data}",
                        stream_of(w)
                    );
                }
            }
            exp.maybe.extend(got.in_flight);
        }
        assert_eq!(
            unexpected.load(Ordering::SeqCst),
            0,
            "appenders saw errors while the server was up:\n{}",
            s.log()
        );
        assert!(
            acked_this_cycle > 0,
            "cycle {cycle}: no append was acknowledged in {delay:?}"
        );
        eprintln!("cycle {cycle}: killed after {delay:?}, {acked_this_cycle} acknowledged appends");

        within_for(
            Duration::from_secs(40),
            "start after kill -9",
            s.start_again(),
        )
        .await
        .expect("herald restarts after kill -9");
        let base = s.http_url();
        for (stream, exp) in &mut expected {
            let found = within_for(
                Duration::from_secs(30),
                "read the stream back",
                read_all(&base, &token, stream),
            )
            .await;
            check_stream(stream, cycle, &found, exp);
            // Appends continue right after the last event.
            let probe = json!({"c": cycle, "probe": true}).to_string();
            let r = send(
                client()
                    .post(format!("{base}/streams/crash/{stream}"))
                    .header("Content-Type", "application/json")
                    .header("X-Session", &token)
                    .body(probe.clone()),
            )
            .await;
            assert_eq!(r.status, 201, "probe append to {stream}: {r:?}");
            let next = found.len() as u64 + 1;
            assert_eq!(
                r.json()["meta"]["id"].as_u64(),
                Some(next),
                "cycle {cycle}: the first append to {stream} after the restart is not {next}"
            );
            exp.events.insert(next, probe);
            exp.sent += 1;
        }
    }
    let total: usize = expected.values().map(|e| e.events.len()).sum();
    eprintln!("{total} stream events survived {CYCLES} crashes");
    stop(s).await;
}
