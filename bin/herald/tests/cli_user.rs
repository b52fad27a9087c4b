//! `herald user add` / `herald user passwd` on a real data directory, checked by opening the
//! same store with `Accounts` afterwards.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use common::{assert_fails, assert_ok, run_with, stderr, stdout};
use herald_engine::{Accounts, AccountsOptions};
use herald_store::Store;
use herald_store_fjall::FjallStore;

/// Runs `herald ARGS` (see [`run_with`]) with `env` added and `stdin` piped in.
async fn herald(args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
    run_with(args, env, stdin).await
}

/// Opens the accounts of `data_dir` the way the server does, runs `check`, and closes the
/// store again.
async fn with_accounts(data_dir: &Path, check: impl AsyncFnOnce(&Accounts)) {
    let store: Arc<dyn Store> =
        Arc::new(FjallStore::open(&data_dir.join("store")).expect("open the store"));
    let accounts = Accounts::open(store.clone(), AccountsOptions::default())
        .await
        .expect("open the accounts");
    check(&accounts).await;
    drop(accounts);
    // Nothing else holds the store; dropping it releases the directory lock.
    assert_eq!(Arc::strong_count(&store), 1);
}

#[tokio::test]
async fn add_and_passwd_on_an_offline_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();

    let out = herald(
        &[
            "user",
            "add",
            "admin",
            "--password",
            "pw1",
            "--admin",
            "--data-dir",
            d,
        ],
        &[],
        None,
    )
    .await;
    assert_ok(&out);
    assert!(stdout(&out).contains("admin"), "{}", stdout(&out));
    // The password may come from standard input instead of the command line.
    let out = herald(
        &["user", "add", "bob", "--password-stdin", "--data-dir", d],
        &[],
        Some("bob pw \r\nignored second line\n"),
    )
    .await;
    assert_ok(&out);

    with_accounts(&data, async |accounts| {
        assert_eq!(accounts.user_names(), ["admin", "bob"]);
        assert!(accounts.is_admin("admin"));
        assert!(!accounts.is_admin("bob"));
        assert!(accounts.login("admin", "pw1").await.unwrap().is_some());
        // Only the line ending is dropped; inner and trailing spaces are kept.
        assert!(accounts.login("bob", "bob pw ").await.unwrap().is_some());
        assert!(accounts.login("bob", "bob pw").await.unwrap().is_none());
    })
    .await;

    let out = herald(
        &["user", "passwd", "bob", "--password-stdin", "--data-dir", d],
        &[],
        Some("new pw"),
    )
    .await;
    assert_ok(&out);
    let out = herald(
        &[
            "user",
            "passwd",
            "admin",
            "--password",
            "pw2",
            "--data-dir",
            d,
        ],
        &[],
        None,
    )
    .await;
    assert_ok(&out);
    with_accounts(&data, async |accounts| {
        assert!(accounts.login("bob", "bob pw ").await.unwrap().is_none());
        assert!(accounts.login("bob", "new pw").await.unwrap().is_some());
        assert!(accounts.login("admin", "pw2").await.unwrap().is_some());
        assert!(accounts.is_admin("admin"), "passwd keeps the admin flag");
    })
    .await;
}

#[tokio::test]
async fn refused_changes_say_why_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_ok(
        &herald(
            &["user", "add", "bob", "--password", "pw", "--data-dir", d],
            &[],
            None,
        )
        .await,
    );

    let cases: [(&[&str], &str); 6] = [
        (&["user", "add", "bob", "--password", "x"], "already exists"),
        (
            &["user", "add", "a b", "--password", "x"],
            "illegal user name",
        ),
        (
            &["user", "add", "anonymous", "--password", "x"],
            "illegal user name",
        ),
        (
            &["user", "add", "g-admin", "--password", "x"],
            "illegal user name",
        ),
        (
            &["user", "add", "carol", "--password", ""],
            "password is empty",
        ),
        (
            &["user", "passwd", "eve", "--password", "x"],
            "unknown user",
        ),
    ];
    for (args, message) in cases {
        let mut args = args.to_vec();
        args.extend(["--data-dir", d]);
        assert_fails(&herald(&args, &[], None).await, message);
    }
    // An empty line on standard input is an empty password.
    assert_fails(
        &herald(
            &["user", "add", "carol", "--password-stdin", "--data-dir", d],
            &[],
            Some("\n"),
        )
        .await,
        "password is empty",
    );
    with_accounts(dir.path(), async |accounts| {
        assert_eq!(accounts.user_names(), ["bob"]);
        assert!(accounts.login("bob", "pw").await.unwrap().is_some());
    })
    .await;

    // passwd does not create a data directory that is not there.
    let missing = dir.path().join("missing");
    let out = herald(
        &[
            "user",
            "passwd",
            "bob",
            "--password",
            "x",
            "--data-dir",
            missing.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    assert_fails(&out, "no Herald store");
    assert!(!missing.exists());

    // Usage errors: no password source, or two.
    for args in [
        &["user", "add", "x", "--data-dir", d][..],
        &[
            "user",
            "add",
            "x",
            "--password",
            "p",
            "--password-stdin",
            "--data-dir",
            d,
        ][..],
    ] {
        let out = herald(args, &[], None).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    }
}

#[tokio::test]
async fn the_data_dir_comes_from_the_environment_or_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = dir.path().join("env");
    let out = herald(
        &["user", "add", "bob", "--password", "pw"],
        &[("HERALD_DATA_DIR", &from_env)],
        None,
    )
    .await;
    assert_ok(&out);
    with_accounts(&from_env, async |accounts| {
        assert_eq!(accounts.user_names(), ["bob"]);
    })
    .await;

    let from_file = dir.path().join("file");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!("data-dir = {:?}\n", from_file.to_str().unwrap()),
    )
    .unwrap();
    let out = herald(
        &[
            "user",
            "add",
            "carol",
            "--password",
            "pw",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    assert_ok(&out);
    with_accounts(&from_file, async |accounts| {
        assert_eq!(accounts.user_names(), ["carol"]);
    })
    .await;
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Held open by this process, as a running server would.
    let held = FjallStore::open(&dir.path().join("store")).unwrap();
    let out = herald(
        &["user", "add", "bob", "--password", "pw", "--data-dir", d],
        &[],
        None,
    )
    .await;
    assert_fails(&out, "in use");
    drop(held);
    assert_ok(
        &herald(
            &["user", "add", "bob", "--password", "pw", "--data-dir", d],
            &[],
            None,
        )
        .await,
    );
}

#[tokio::test]
async fn help_documents_the_password_options() {
    for sub in ["add", "passwd"] {
        let out = herald(&["user", sub, "--help"], &[], None).await;
        assert_ok(&out);
        let text = stdout(&out);
        for word in [
            "--password",
            "--password-stdin",
            "--data-dir",
            "HERALD_DATA_DIR",
            "--config",
        ] {
            assert!(
                text.contains(word),
                "user {sub} --help lacks {word}:\n{text}"
            );
        }
    }
    let out = herald(&["--help"], &[], None).await;
    assert!(stdout(&out).contains("user"), "{}", stdout(&out));
}
