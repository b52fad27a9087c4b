//! `herald hpfeeds add|remove|list|show|import-json|import-sqlite` on a real data directory, checked by
//! opening the same store with `HpfeedsIdentities` afterwards; and `add|remove|list|show
//! --server` against a running server, checked over hpfeeds.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_fails, assert_ok, run_with, stderr, stdout};
use herald_auth::hpfeeds::{Identity, auth_hash};
use herald_engine::{HpfeedsIdentities, HpfeedsOptions};
use herald_store::Store;
use herald_store_fjall::FjallStore;
use tokio::io::AsyncWriteExt;

/// Runs `herald ARGS` (see [`run_with`]) with `stdin` piped in.
async fn herald(args: &[&str], stdin: Option<&str>) -> Output {
    run_with::<&str>(args, &[], stdin).await
}

fn chans(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The identities stored in `data_dir`, read the way the server does.
async fn stored(data_dir: &Path) -> Vec<Identity> {
    let store: Arc<dyn Store> =
        Arc::new(FjallStore::open(&data_dir.join("store")).expect("open the store"));
    let ids = HpfeedsIdentities::open(store.clone(), HpfeedsOptions::default())
        .await
        .expect("open the identities");
    let all = ids.list();
    drop(ids);
    // Nothing else holds the store; dropping it releases the directory lock.
    assert_eq!(Arc::strong_count(&store), 1);
    all
}

#[tokio::test]
async fn add_list_show_remove_on_an_offline_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();

    let out = herald(
        &[
            "hpfeeds",
            "add",
            "bob",
            "--secret",
            "s3cret",
            "--pubchans",
            "a,b",
            "--subchans",
            "c",
            "--subchans",
            "d",
            "--owner",
            "acme",
            "--data-dir",
            d,
        ],
        None,
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("created hpfeeds identity bob"),
        "{}",
        stdout(&out)
    );
    // The secret may come from standard input; the owner defaults to the ident.
    let out = herald(
        &[
            "hpfeeds",
            "add",
            "ann",
            "--secret-stdin",
            "--subchans",
            "a",
            "--data-dir",
            d,
        ],
        Some("ann secret \r\nignored second line\n"),
    )
    .await;
    assert_ok(&out);

    let bob = Identity::new(
        "bob",
        "s3cret",
        "acme",
        chans(&["a", "b"]),
        chans(&["c", "d"]),
    )
    .unwrap();
    let ann = Identity::new("ann", "ann secret ", "ann", vec![], chans(&["a"])).unwrap();
    assert_eq!(stored(&data).await, [ann.clone(), bob.clone()]);
    let nonce = [1, 2, 3, 4];
    assert!(bob.verify(&nonce, &auth_hash(&nonce, "s3cret")));

    // list and show never print secrets.
    let out = herald(&["hpfeeds", "list", "--data-dir", d], None).await;
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "ann\towner=ann\tpubchans=\tsubchans=a\nbob\towner=acme\tpubchans=a,b\tsubchans=c,d\n"
    );
    let out = herald(&["hpfeeds", "show", "bob", "--data-dir", d], None).await;
    assert_ok(&out);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({"ident": "bob", "owner": "acme", "pubchans": ["a", "b"], "subchans": ["c", "d"]})
    );
    assert!(!stdout(&out).contains("s3cret"));

    // Adding an existing ident replaces it, and says so.
    let out = herald(
        &["hpfeeds", "add", "bob", "--secret", "new", "--data-dir", d],
        None,
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("replaced hpfeeds identity bob"),
        "{}",
        stdout(&out)
    );
    let bob = Identity::new("bob", "new", "bob", vec![], vec![]).unwrap();
    assert_eq!(stored(&data).await, [ann.clone(), bob]);

    let out = herald(&["hpfeeds", "remove", "bob", "--data-dir", d], None).await;
    assert_ok(&out);
    assert_fails(
        &herald(&["hpfeeds", "remove", "bob", "--data-dir", d], None).await,
        "no hpfeeds identity \"bob\"",
    );
    assert_fails(
        &herald(&["hpfeeds", "show", "bob", "--data-dir", d], None).await,
        "no hpfeeds identity \"bob\"",
    );
    assert_eq!(stored(&data).await, [ann]);
}

#[tokio::test]
async fn import_a_json_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let out = herald(
        &["hpfeeds", "add", "bob", "--secret", "old", "--data-dir", d],
        None,
    )
    .await;
    assert_ok(&out);

    let file = dir.path().join("users.json");
    std::fs::write(
        &file,
        r#"{
            "bob": {"owner": "acme", "secret": "s1", "pubchans": ["a"], "subchans": []},
            "carol": {"owner": "c", "secret": "s2", "pubchans": [], "subchans": ["a", "b"]}
        }"#,
    )
    .unwrap();
    let out = herald(
        &[
            "hpfeeds",
            "import-json",
            file.to_str().unwrap(),
            "--data-dir",
            d,
        ],
        None,
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("imported 2 hpfeeds identities")
            && stdout(&out).contains("1 created, 1 replaced"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        stored(&data).await,
        [
            Identity::new("bob", "s1", "acme", chans(&["a"]), vec![]).unwrap(),
            Identity::new("carol", "s2", "c", vec![], chans(&["a", "b"])).unwrap(),
        ]
    );

    // One bad entry: nothing is imported, and the secret is not echoed.
    std::fs::write(
        &file,
        r#"{"dave": {"owner": "d", "secret": "topsecret", "pubchans": [], "subchans": []},
            "eve": {"owner": "e", "secret": "topsecret", "pubchans": [""], "subchans": []}}"#,
    )
    .unwrap();
    let out = herald(
        &[
            "hpfeeds",
            "import-json",
            file.to_str().unwrap(),
            "--data-dir",
            d,
        ],
        None,
    )
    .await;
    assert_fails(&out, "invalid channel");
    assert!(!stderr(&out).contains("topsecret"), "{}", stderr(&out));
    std::fs::write(&file, r#"{"eve": {"secret": 12345}}"#).unwrap();
    let out = herald(
        &[
            "hpfeeds",
            "import-json",
            file.to_str().unwrap(),
            "--data-dir",
            d,
        ],
        None,
    )
    .await;
    assert_fails(&out, "invalid hpfeeds users file");
    assert!(!stderr(&out).contains("12345"), "{}", stderr(&out));
    assert_eq!(stored(&data).await.len(), 2);
}

#[tokio::test]
async fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();

    // Commands that read need an existing store.
    for args in [
        &["hpfeeds", "list", "--data-dir", d][..],
        &["hpfeeds", "show", "bob", "--data-dir", d],
        &["hpfeeds", "remove", "bob", "--data-dir", d],
    ] {
        assert_fails(&herald(args, None).await, "there is no Herald store");
    }
    assert!(!data.exists());

    // A secret is required, and may not be empty.
    assert_fails(
        &herald(&["hpfeeds", "add", "bob", "--data-dir", d], None).await,
        "--secret",
    );
    assert_fails(
        &herald(
            &["hpfeeds", "add", "bob", "--secret-stdin", "--data-dir", d],
            Some("\n"),
        )
        .await,
        "is empty",
    );
    // Channel names follow the rules.
    for chans in ["a,,b", "..", &"x".repeat(256)] {
        assert_fails(
            &herald(
                &[
                    "hpfeeds",
                    "add",
                    "bob",
                    "--secret",
                    "s",
                    "--pubchans",
                    chans,
                    "--data-dir",
                    d,
                ],
                None,
            )
            .await,
            "invalid channel",
        );
    }
    let long = "x".repeat(256);
    assert_fails(
        &herald(
            &["hpfeeds", "add", &long, "--secret", "s", "--data-dir", d],
            None,
        )
        .await,
        "invalid hpfeeds ident",
    );
    // Nothing was created by the refused commands.
    assert!(!data.exists());

    // An empty list is fine, and says so on stderr only.
    assert_ok(
        &herald(
            &[
                "hpfeeds",
                "add",
                "bob",
                "--secret",
                "s",
                "--pubchans",
                "",
                "--data-dir",
                d,
            ],
            None,
        )
        .await,
    );
    assert_ok(&herald(&["hpfeeds", "remove", "bob", "--data-dir", d], None).await);
    let out = herald(&["hpfeeds", "list", "--data-dir", d], None).await;
    assert_ok(&out);
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("no hpfeeds identities"));
}

#[tokio::test]
async fn import_an_hpfeeds_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let out = herald(
        &["hpfeeds", "add", "bob", "--secret", "old", "--data-dir", d],
        None,
    )
    .await;
    assert_ok(&out);

    // A database as the hpfeeds broker creates it (seed contract 3.3).
    let db = dir.path().join("hpfeeds.sqlite");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT);
             CREATE TABLE stats (id INTEGER PRIMARY KEY AUTOINCREMENT, ak TEXT, uid TEXT,
                                 data TEXT);
             CREATE TABLE authkeys (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT,
                                    ident TEXT, secret TEXT, pubchans TEXT, subchans TEXT);",
        )
        .unwrap();
        // Valid; NULL owner; NULL secret; bad JSON; an invalid channel; NULL ident; and a
        // second row for bob, which is skipped since hpfeeds uses the first row of an ident.
        conn.execute_batch(
            r#"INSERT INTO authkeys (owner, ident, secret, pubchans, subchans) VALUES
                 ('acme', 'bob', 's1', '["a", "b"]', '[]'),
                 (NULL, 'carol', 's2', '[]', '["a"]'),
                 ('d', 'dave', NULL, '[]', '[]'),
                 ('e', 'eve', 'topsecret', 'a,b', '[]'),
                 ('f', 'frank', 'topsecret', '[".."]', '[]'),
                 ('g', NULL, 'topsecret', '[]', '[]'),
                 ('other', 'bob', 'topsecret', '[]', '[]');"#,
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();

    let out = herald(
        &[
            "hpfeeds",
            "import-sqlite",
            db.to_str().unwrap(),
            "--data-dir",
            d,
        ],
        None,
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("imported 2 hpfeeds identities")
            && stdout(&out).contains("1 created, 1 replaced, 5 rows skipped"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    for warning in [
        "row id=3 (ident \"dave\"): secret is NULL",
        "row id=4 (ident \"eve\"): pubchans is not valid JSON",
        "row id=5 (ident \"frank\"): invalid channel \"..\"",
        "row id=6: ident is NULL",
        "row id=7 (ident \"bob\"): row id=1 has the same ident",
    ] {
        assert!(err.contains(warning), "{warning:?} not in {err}");
    }
    assert!(!err.contains("topsecret") && !stdout(&out).contains("topsecret"));
    assert_eq!(
        stored(&data).await,
        [
            Identity::new("bob", "s1", "acme", chans(&["a", "b"]), vec![]).unwrap(),
            Identity::new("carol", "s2", "carol", vec![], chans(&["a"])).unwrap(),
        ]
    );
    // The database was only read.
    assert_eq!(std::fs::read(&db).unwrap(), before);

    // A missing file is not created; a database without authkeys imports nothing.
    let missing = dir.path().join("missing.sqlite");
    assert_fails(
        &herald(
            &[
                "hpfeeds",
                "import-sqlite",
                missing.to_str().unwrap(),
                "--data-dir",
                d,
            ],
            None,
        )
        .await,
        "cannot open the sqlite database",
    );
    assert!(!missing.exists());
    let other = dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x TEXT);")
        .unwrap();
    assert_fails(
        &herald(
            &[
                "hpfeeds",
                "import-sqlite",
                other.to_str().unwrap(),
                "--data-dir",
                d,
            ],
            None,
        )
        .await,
        "cannot read the authkeys table",
    );
    assert_eq!(stored(&data).await.len(), 2);
}

/// Authenticates over hpfeeds as `ident` and, when that works, subscribes to `chan`, publishes
/// on it and waits for its own message. `false` when authentication failed.
async fn hpfeeds_roundtrip(
    addr: std::net::SocketAddr,
    ident: &str,
    secret: &str,
    chan: &str,
) -> bool {
    use bytes::{Bytes, BytesMut};
    use herald_transport_hpfeeds::frame::{Decoder, Frame};
    use tokio::io::AsyncReadExt;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new();
    let mut next = async |stream: &mut tokio::net::TcpStream| -> Option<Frame> {
        loop {
            if let Some(f) = decoder.decode(&mut buf).unwrap() {
                return Some(f);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    let io = Duration::from_secs(10);
    let Ok(Some(Frame::Info { nonce, .. })) = tokio::time::timeout(io, next(&mut stream)).await
    else {
        panic!("expected OP_INFO first");
    };
    let hash = auth_hash(&nonce, secret);
    for frame in [
        Frame::auth(ident, Bytes::copy_from_slice(&hash)),
        Frame::subscribe(ident, chan),
        Frame::publish(ident, chan, Bytes::from_static(b"hello")),
    ] {
        stream.write_all(&frame.to_bytes().unwrap()).await.unwrap();
    }
    match tokio::time::timeout(io, next(&mut stream)).await {
        Ok(Some(Frame::Publish {
            ident: from,
            channel,
            payload,
        })) => {
            assert_eq!((from.as_str(), channel.as_str()), (ident, chan));
            assert_eq!(&payload[..], b"hello");
            true
        }
        Ok(Some(Frame::Error(message))) => {
            assert_eq!(message, format!("Authentication failed for {ident}"));
            false
        }
        other => panic!("unexpected answer: {other:?}"),
    }
}

#[tokio::test]
async fn add_list_show_remove_against_a_running_server() {
    const PASSWORD: &str = "admin-password";
    let mut server = herald_testkit::Server::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &["--session-attempts-per-minute", "1000"],
    )
    .await
    .unwrap();
    // The testkit passes the server no environment (so no HERALD_ADMIN_PASSWORD): add the
    // users offline on the data directory of the first start, then start again.
    server.kill9().await.unwrap();
    let d = server.data_dir().to_str().unwrap().to_owned();
    for (user, admin) in [("admin", true), ("joe", false)] {
        let mut args = vec![
            "user",
            "add",
            user,
            "--password",
            PASSWORD,
            "--data-dir",
            &d,
        ];
        if admin {
            args.push("--admin");
        }
        assert_ok(&herald(&args, None).await);
    }
    server.start_again().await.unwrap();
    let url = server.http_url();
    let url = url.trim_end_matches('/');
    let hp = server.hpfeeds_addr();
    let pw = [("HERALD_PASSWORD", PASSWORD)];

    assert!(!hpfeeds_roundtrip(hp, "sensor", "s3cret", "events").await);
    // Password then secret, both on standard input.
    let out = herald(
        &[
            "hpfeeds",
            "add",
            "sensor",
            "--secret-stdin",
            "--pubchans",
            "events",
            "--subchans",
            "events,other",
            "--owner",
            "Lab",
            "--server",
            url,
            "--user",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\ns3cret\n")),
    )
    .await;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("created hpfeeds identity sensor on"),
        "{}",
        stdout(&out)
    );
    // Usable over hpfeeds at once, without a restart.
    assert!(hpfeeds_roundtrip(hp, "sensor", "s3cret", "events").await);

    let out = run_with(&["hpfeeds", "list", "--server", url], &pw, None).await;
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "sensor\towner=Lab\tpubchans=events\tsubchans=events,other\n"
    );
    let out = run_with(&["hpfeeds", "show", "sensor", "--server", url], &pw, None).await;
    assert_ok(&out);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({"ident": "sensor", "owner": "Lab", "pubchans": ["events"],
                           "subchans": ["events", "other"]})
    );
    assert!(!stdout(&out).contains("s3cret"));

    // Replacing rotates the secret at once (password from the environment, secret on stdin).
    let out = run_with(
        &[
            "hpfeeds",
            "add",
            "sensor",
            "--secret-stdin",
            "--pubchans",
            "events",
            "--subchans",
            "events",
            "--server",
            url,
        ],
        &pw,
        Some("rotated\n"),
    )
    .await;
    assert_ok(&out);
    assert!(stdout(&out).contains("replaced hpfeeds identity sensor on"));
    assert!(!hpfeeds_roundtrip(hp, "sensor", "s3cret", "events").await);
    assert!(hpfeeds_roundtrip(hp, "sensor", "rotated", "events").await);

    // Refusals: no password, a wrong one, a user who is not an admin, bad input.
    assert_fails(
        &herald(&["hpfeeds", "list", "--server", url], None).await,
        "HERALD_PASSWORD",
    );
    assert_fails(
        &run_with(
            &["hpfeeds", "list", "--server", url],
            &[("HERALD_PASSWORD", "no")],
            None,
        )
        .await,
        "wrong user name or password",
    );
    assert_fails(
        &run_with(
            &["hpfeeds", "list", "--server", url, "--user", "joe"],
            &pw,
            None,
        )
        .await,
        "is not an admin",
    );
    assert_fails(
        &run_with(
            &[
                "hpfeeds",
                "add",
                "x",
                "--secret",
                "s",
                "--pubchans",
                "..",
                "--server",
                url,
            ],
            &pw,
            None,
        )
        .await,
        "invalid channel",
    );
    assert_fails(
        &herald(&["hpfeeds", "list", "--password-stdin"], Some("x\n")).await,
        "--server",
    );
    assert_fails(
        &run_with(&["hpfeeds", "show", "nobody", "--server", url], &pw, None).await,
        "no hpfeeds identity \"nobody\"",
    );

    let out = run_with(&["hpfeeds", "remove", "sensor", "--server", url], &pw, None).await;
    assert_ok(&out);
    assert!(stdout(&out).contains("removed hpfeeds identity sensor from"));
    assert!(!hpfeeds_roundtrip(hp, "sensor", "rotated", "events").await);
    assert_fails(
        &run_with(&["hpfeeds", "remove", "sensor", "--server", url], &pw, None).await,
        "no hpfeeds identity \"sensor\"",
    );
    let out = run_with(&["hpfeeds", "list", "--server", url], &pw, None).await;
    assert_ok(&out);
    assert!(stderr(&out).contains("no hpfeeds identities on"));
    server.stop().await.unwrap();
}
