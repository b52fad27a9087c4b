//! Crash safety of the real binary: concurrent writers, `kill -9` at a random moment, restart
//! on the same data directory; every write that was acknowledged (Icepeak `?durable` 202,
//! main API 204) must be there with its value. Repeated on one data directory so that the
//! acknowledged sets accumulate across crashes, with snapshots and log trims happening during
//! the run (`--snapshot-every 50`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use rand::Rng;
use serde_json::{Value, json};

const WRITERS: usize = 4;
const CYCLES: usize = 4;
/// `--snapshot-every`.
const SNAPSHOT_EVERY: u64 = 50;

#[derive(Clone, Copy, Debug)]
enum Api {
    /// `PUT /crash/...?durable` on the Icepeak listener, acknowledged with 202.
    Icepeak,
    /// `PUT /docs/crash/...` on the main API, acknowledged with 204.
    Main,
}

/// Where the server listens (ports change on every start).
#[derive(Clone, Debug)]
struct Bases {
    icepeak: String,
    http: String,
}

impl Api {
    fn url(self, bases: &Bases, writer: usize, key: &str) -> String {
        match self {
            Api::Icepeak => format!("{}/crash/w{writer}/{key}?durable", bases.icepeak),
            Api::Main => format!("{}/docs/crash/w{writer}/{key}", bases.http),
        }
    }

    fn ack(self) -> u16 {
        match self {
            Api::Icepeak => 202,
            Api::Main => 204,
        }
    }
}

/// One acknowledged write: writer, key, value.
type Acked = (usize, String, Value);

/// Writes distinct keys as fast as it can until `stopping` is set and a request fails.
async fn writer(
    api: Api,
    bases: Bases,
    id: usize,
    cycle: usize,
    stopping: Arc<AtomicBool>,
    unexpected: Arc<AtomicU64>,
) -> Vec<Acked> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let mut acked = Vec::new();
    for n in 0u64.. {
        let key = format!("c{cycle}n{n}");
        let value = json!({"w": id, "c": cycle, "n": n});
        let result = client
            .put(api.url(&bases, id, &key))
            .body(value.to_string())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().as_u16() == api.ack() => acked.push((id, key, value)),
            Ok(resp) => {
                // Any other answer is not an acknowledgement; it is only expected (never,
                // really) while the server is going down.
                if !stopping.load(Ordering::SeqCst) {
                    unexpected.fetch_add(1, Ordering::SeqCst);
                    eprintln!("writer {id}: unexpected status {}", resp.status());
                }
            }
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                unexpected.fetch_add(1, Ordering::SeqCst);
                eprintln!("writer {id}: request failed while the server was up: {e}");
                break;
            }
        }
    }
    acked
}

/// `replayed=N` of the last "document tree recovered" line of the server log.
/// The numbers the last "document tree recovered" log line reports.
struct Recovery {
    replayed: u64,
    replayed_bytes: u64,
    snapshot_bytes: u64,
}

fn last_recovery(log: &str) -> Recovery {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("document tree recovered"))
        .unwrap_or_else(|| panic!("no recovery line in the log:\n{log}"));
    let field = |name: &str| -> u64 {
        let prefix = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name}=N in {line:?}"))
    };
    Recovery {
        replayed: field("replayed"),
        replayed_bytes: field("replayed_bytes"),
        snapshot_bytes: field("snapshot_bytes"),
    }
}

fn bases_of(s: &herald_testkit::Server) -> Bases {
    Bases {
        icepeak: s.icepeak_url(),
        http: s.http_url(),
    }
}

async fn crash_cycles(api: Api) {
    let mut s = start(&["--snapshot-every", &SNAPSHOT_EVERY.to_string()]).await;
    let mut acked: BTreeMap<(usize, String), Value> = BTreeMap::new();
    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let stopping = Arc::new(AtomicBool::new(false));
        let unexpected = Arc::new(AtomicU64::new(0));
        let bases = bases_of(&s);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    api,
                    bases.clone(),
                    id,
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

        let mut this_cycle = 0;
        for t in tasks {
            let got = within_for(Duration::from_secs(10), "writer ends", t)
                .await
                .expect("writer task");
            this_cycle += got.len();
            for (w, key, value) in got {
                acked.insert((w, key), value);
            }
        }
        assert_eq!(
            unexpected.load(Ordering::SeqCst),
            0,
            "writers saw errors while the server was up"
        );
        assert!(
            this_cycle > 0,
            "cycle {cycle}: no write was acknowledged in {delay:?}"
        );
        eprintln!(
            "{api:?} cycle {cycle}: killed after {delay:?}, {this_cycle} acknowledged writes"
        );

        within_for(
            Duration::from_secs(40),
            "start after kill -9",
            s.start_again(),
        )
        .await
        .expect("herald restarts after kill -9");
        // Snapshots kept the replay short: the log after the last snapshot is at most about
        // `snapshot-every` records or one snapshot's size in bytes, whichever is more (plus
        // the writes of a snapshot still in flight).
        let r = last_recovery(&s.log());
        eprintln!(
            "{api:?} cycle {cycle}: recovery replayed {} log records ({} bytes) after a \
             {}-byte snapshot",
            r.replayed, r.replayed_bytes, r.snapshot_bytes
        );
        assert!(
            r.replayed <= 4 * SNAPSHOT_EVERY || r.replayed_bytes <= 3 * r.snapshot_bytes,
            "recovery replayed {} records ({} bytes) with --snapshot-every {SNAPSHOT_EVERY} \
             and a {}-byte snapshot",
            r.replayed,
            r.replayed_bytes,
            r.snapshot_bytes
        );
        // One read of the whole subtree.
        let tree = icepeak_get(&s, "/crash").await.expect("/crash exists");
        let mut missing = Vec::new();
        for ((w, key), value) in &acked {
            let got = &tree[format!("w{w}")][key];
            if got != value {
                missing.push(format!("w{w}/{key}: expected {value}, got {got}"));
            }
        }
        assert!(
            missing.is_empty(),
            "{api:?} cycle {cycle}: {} of {} acknowledged writes lost after kill -9, e.g. {:?}\n{}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)],
            s.log()
        );
        // Everything present has a well-formed value (nothing torn).
        for (w, writes) in tree.as_object().expect("object") {
            for (key, value) in writes.as_object().expect("object") {
                assert_eq!(format!("w{}", value["w"]), *w, "{w}/{key}: {value}");
                assert_eq!(format!("c{}n{}", value["c"], value["n"]), *key);
            }
        }
        // And the server is fully usable after recovery.
        let url = match api {
            Api::Icepeak => format!("{}/probe/c{cycle}?durable", s.icepeak_url()),
            Api::Main => format!("{}/docs/probe/c{cycle}", s.http_url()),
        };
        let r = put(&url, "1").await;
        assert_eq!(r.status, api.ack(), "{r:?}");
    }
    eprintln!(
        "{api:?}: {} acknowledged writes survived {CYCLES} crashes",
        acked.len()
    );
    stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_icepeak_durable_writes_survive_kill_9() {
    crash_cycles(Api::Icepeak).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_main_api_writes_survive_kill_9() {
    crash_cycles(Api::Main).await;
}
