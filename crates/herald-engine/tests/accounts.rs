//! The durable accounts: persistence across reopen (memory and fjall), logins and sessions,
//! grants, and that a failed store write leaves the accounts unchanged.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Backend, GatedStore, wait_released};
use herald_auth::session::{self, SessionError};
use herald_auth::users::{ANONYMOUS, GROUP_AUTHENTICATED, PERMISSIONS_BUCKET};
use herald_auth::{Acl, PasswordCost, Permission, Resource, UsersError};
use herald_core::{Access, Modes, Path, PathLimits};
use herald_engine::accounts::SNAPSHOT;
use herald_engine::{Accounts, AccountsError, AccountsOptions};
use herald_store::{Durability, MemoryStore, Store};

/// How long any single wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

fn p(s: &str) -> Path {
    Path::parse_url(s, &PathLimits::default()).expect("valid test path")
}

fn bucket(b: &str) -> Resource {
    Resource::new(b, None).expect("valid bucket")
}

fn cheap() -> AccountsOptions {
    AccountsOptions {
        password_cost: PasswordCost::MINIMUM,
        ..AccountsOptions::default()
    }
}

fn with_secret(secret: &[u8]) -> AccountsOptions {
    AccountsOptions {
        session_secret: Some(secret.to_vec()),
        ..cheap()
    }
}

async fn open(store: Arc<dyn Store>, options: AccountsOptions) -> Accounts {
    tokio::time::timeout(WAIT, Accounts::open(store, options))
        .await
        .expect("open timed out")
        .expect("open failed")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Waits until `store` is referenced only by the caller (the accounts were dropped and no
/// blocking job still holds them).

#[tokio::test]
async fn accounts_survive_a_restart() {
    for mut backend in Backend::all() {
        let name = backend.name();
        let accounts = open(backend.store(), cheap()).await;
        assert!(accounts.user_names().is_empty(), "{name}");
        assert!(accounts.ensure_admin("secret").await.unwrap(), "{name}");
        accounts.add_user("bob", "pw-bob", false).await.unwrap();
        accounts.add_user("carol", "pw-carol", false).await.unwrap();
        accounts
            .grant("bob", &bucket("b"), Permission::Put)
            .await
            .unwrap();
        accounts
            .grant(ANONYMOUS, &bucket("open"), Permission::Get)
            .await
            .unwrap();
        accounts.set_password("carol", "new-carol").await.unwrap();
        assert!(accounts.remove_user("carol").await.unwrap());
        let token = accounts.login("bob", "pw-bob").await.unwrap().unwrap();
        let acl = accounts.acl(&bucket("b"));
        drop(accounts);

        backend.restart().await;
        let accounts = open(backend.store(), cheap()).await;
        assert_eq!(accounts.user_names(), ["admin", "bob"], "{name}");
        assert!(accounts.is_admin("admin"));
        assert!(!accounts.is_admin("bob"));
        assert_eq!(accounts.acl(&bucket("b")), acl);
        assert!(
            accounts
                .access(Some("bob"))
                .allows(&p("/b/x"), Modes::WRITE)
        );
        assert!(accounts.access(None).allows(&p("/open/x"), Modes::READ));
        assert_eq!(accounts.access(Some("admin")), Access::Full);
        // The generated session secret was kept: the old token still verifies.
        assert_eq!(accounts.verify_session(&token).unwrap(), "bob", "{name}");
        assert!(accounts.login("admin", "secret").await.unwrap().is_some());
        assert!(
            accounts
                .login("carol", "new-carol")
                .await
                .unwrap()
                .is_none()
        );
        // ensure_admin does nothing when admin exists, whatever the password.
        assert!(!accounts.ensure_admin("other").await.unwrap());
        assert!(accounts.login("admin", "other").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn logins_and_passwords() {
    let accounts = open(Arc::new(MemoryStore::default()), cheap()).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    let token = accounts
        .login("bob", "pw")
        .await
        .unwrap()
        .expect("good login");
    assert_eq!(accounts.verify_session(&token).unwrap(), "bob");
    for (user, password) in [
        ("bob", "PW"),
        ("bob", ""),
        ("bob", "pw "),
        ("eve", "pw"),
        ("", ""),
        ("anonymous", "secret"),
    ] {
        assert_eq!(
            accounts.login(user, password).await.unwrap(),
            None,
            "{user}:{password}"
        );
    }
    let huge = "x".repeat(herald_auth::users::MAX_PASSWORD_LEN + 1);
    assert_eq!(accounts.login("bob", &huge).await.unwrap(), None);

    accounts.set_password("bob", "new").await.unwrap();
    assert!(accounts.login("bob", "pw").await.unwrap().is_none());
    assert!(accounts.login("bob", "new").await.unwrap().is_some());
    // A session minted before the change stays valid until it expires.
    assert_eq!(accounts.verify_session(&token).unwrap(), "bob");

    assert!(matches!(
        accounts.set_password("eve", "x").await,
        Err(AccountsError::Users(UsersError::UnknownUser(_)))
    ));
    assert!(matches!(
        accounts.set_password("bob", "").await,
        Err(AccountsError::Users(UsersError::EmptyPassword))
    ));
    assert!(matches!(
        accounts.add_user("bob", "x", false).await,
        Err(AccountsError::Users(UsersError::UserExists(_)))
    ));
    for bad in ["", "anonymous", "g-admin", "a b", "../x"] {
        assert!(
            matches!(
                accounts.add_user(bad, "x", false).await,
                Err(AccountsError::Users(UsersError::IllegalUsername(_)))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        accounts.add_user("dan", "", false).await,
        Err(AccountsError::Users(UsersError::EmptyPassword))
    ));
    assert_eq!(accounts.user_names(), ["bob"]);
}

#[tokio::test]
async fn sessions_expire_and_die_with_their_user() {
    let secret = b"changeme";
    let accounts = open(Arc::new(MemoryStore::default()), with_secret(secret)).await;
    accounts.add_user("bob", "pw", false).await.unwrap();

    // Tokens are IorioDB's: HS512 over {"u","exp"} with the configured secret, 24 h by default.
    let token = accounts.login("bob", "pw").await.unwrap().unwrap();
    // The clock may tick between the login and `now()` here, hence the second of slack.
    let in_a_day = now() + 24 * 60 * 60;
    assert_eq!(
        session::verify(&token, secret, in_a_day - 1).unwrap(),
        "bob"
    );
    assert_eq!(
        session::verify(&token, secret, in_a_day + 2),
        Err(SessionError::Expired)
    );

    let old = session::mint("bob", 60, secret, now() - 61).unwrap();
    assert_eq!(accounts.verify_session(&old), Err(SessionError::Expired));
    let foreign = session::mint("bob", 60, b"another secret", now()).unwrap();
    assert_eq!(
        accounts.verify_session(&foreign),
        Err(SessionError::Invalid)
    );
    assert_eq!(
        accounts.verify_session("garbage"),
        Err(SessionError::Malformed)
    );
    // A valid signature for a user that never existed.
    let ghost = session::mint("ghost", 60, secret, now()).unwrap();
    assert_eq!(
        accounts.verify_session(&ghost),
        Err(SessionError::UnknownUser)
    );

    accounts
        .grant("bob", &bucket("b"), Permission::Get)
        .await
        .unwrap();
    assert!(accounts.remove_user("bob").await.unwrap());
    assert!(!accounts.remove_user("bob").await.unwrap());
    assert_eq!(
        accounts.verify_session(&token),
        Err(SessionError::UnknownUser)
    );
    assert!(accounts.login("bob", "pw").await.unwrap().is_none());
    assert_eq!(accounts.access(Some("bob")), accounts.access(None));
    // Re-creating bob does not bring back the old grants.
    accounts.add_user("bob", "pw2", false).await.unwrap();
    assert!(!accounts.access(Some("bob")).allows(&p("/b/x"), Modes::READ));
    assert_eq!(accounts.verify_session(&token).unwrap(), "bob");

    let short = AccountsOptions {
        session_ttl: Duration::from_secs(5),
        ..with_secret(secret)
    };
    let accounts = open(Arc::new(MemoryStore::default()), short).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    let token = accounts.login("bob", "pw").await.unwrap().unwrap();
    let exp = now() + 5;
    assert!(session::verify(&token, secret, exp - 1).is_ok());
    assert_eq!(
        session::verify(&token, secret, exp + 2),
        Err(SessionError::Expired)
    );
}

#[tokio::test]
async fn the_session_secret_option_overrides_the_stored_one() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let accounts = open(store.clone(), cheap()).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    let generated = accounts.login("bob", "pw").await.unwrap().unwrap();
    drop(accounts);

    let accounts = open(store.clone(), with_secret(b"configured")).await;
    assert_eq!(
        accounts.verify_session(&generated),
        Err(SessionError::Invalid)
    );
    let configured = accounts.login("bob", "pw").await.unwrap().unwrap();
    assert_eq!(
        session::verify(&configured, b"configured", now()).unwrap(),
        "bob"
    );
    drop(accounts);

    // Without the option again, the stored (generated) secret is back.
    let accounts = open(store.clone(), cheap()).await;
    assert_eq!(accounts.verify_session(&generated).unwrap(), "bob");
    assert_eq!(
        accounts.verify_session(&configured),
        Err(SessionError::Invalid)
    );

    assert!(matches!(
        Accounts::open(store, with_secret(b"")).await,
        Err(AccountsError::EmptySessionSecret)
    ));
}

#[tokio::test]
async fn a_generated_secret_is_durable_before_open_returns() {
    let store = Arc::new(MemoryStore::default());
    let accounts = open(store.clone(), cheap()).await;
    let (_, bytes) = store.snapshot(SNAPSHOT).unwrap().expect("snapshot written");
    let registry = herald_auth::Registry::from_bytes(&bytes).unwrap();
    let secret = registry.session_secret().expect("secret stored").to_vec();
    assert_eq!(secret.len(), session::SECRET_LEN);
    let token = session::mint("x", 60, &secret, now()).unwrap();
    // Signed with the stored secret (only the user is unknown).
    assert_eq!(
        accounts.verify_session(&token),
        Err(SessionError::UnknownUser)
    );

    // With a configured secret nothing is written at open.
    let other = Arc::new(MemoryStore::default());
    let _accounts = open(other.clone(), with_secret(b"s")).await;
    assert!(other.snapshot(SNAPSHOT).unwrap().is_none());
}

#[tokio::test]
async fn grants_acl_and_access() {
    let accounts = open(Arc::new(MemoryStore::default()), cheap()).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    accounts.add_user("root", "pw", true).await.unwrap();
    let b = bucket("b");
    let s = Resource::new("b", Some("s")).unwrap();
    accounts.grant("bob", &b, Permission::Get).await.unwrap();
    accounts.grant("bob", &b, Permission::Get).await.unwrap();
    accounts.grant("bob", &s, Permission::Put).await.unwrap();
    accounts
        .grant(GROUP_AUTHENTICATED, &b, Permission::List)
        .await
        .unwrap();
    assert_eq!(
        accounts.acl(&b),
        Acl {
            users: vec![("bob".to_owned(), vec![Permission::Get])],
            groups: vec![(GROUP_AUTHENTICATED.to_owned(), vec![Permission::List])],
        }
    );
    let bob = accounts.access(Some("bob"));
    assert!(bob.allows(&p("/b/s"), Modes::READ | Modes::WRITE | Modes::LIST));
    assert!(!bob.allows(&p("/b/t"), Modes::WRITE));
    assert!(bob.allows(&p("/_user_bob/x"), Modes::ALL));
    assert!(!bob.allows(&p("/_user_root/x"), Modes::READ));
    assert_eq!(accounts.access(Some("root")), Access::Full);

    accounts.revoke("bob", &b, Permission::Get).await.unwrap();
    accounts.revoke("bob", &b, Permission::Get).await.unwrap();
    assert!(!accounts.access(Some("bob")).allows(&p("/b/t"), Modes::READ));

    // adminusers is the admin flag.
    let perms = bucket(PERMISSIONS_BUCKET);
    accounts
        .grant("bob", &perms, Permission::AdminUsers)
        .await
        .unwrap();
    assert!(accounts.is_admin("bob"));
    assert_eq!(accounts.access(Some("bob")), Access::Full);
    accounts
        .revoke("bob", &perms, Permission::AdminUsers)
        .await
        .unwrap();
    assert!(!accounts.is_admin("bob"));
    assert!(matches!(
        accounts.grant("bob", &b, Permission::AdminUsers).await,
        Err(AccountsError::Users(UsersError::AdminUsersMisplaced))
    ));
    assert!(matches!(
        accounts.grant("eve", &b, Permission::Get).await,
        Err(AccountsError::Users(UsersError::UnknownRole(_)))
    ));
    assert!(accounts.user_exists("bob"));
    assert!(!accounts.user_exists("eve"));
}

#[tokio::test]
async fn concurrent_changes_all_land_durably() {
    let store = Arc::new(MemoryStore::default());
    let accounts = open(store.clone(), cheap()).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let accounts = accounts.clone();
        tasks.spawn(async move {
            accounts
                .grant("bob", &bucket(&format!("b{i}")), Permission::Get)
                .await
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap().unwrap();
    }
    drop(accounts);
    wait_released(&store).await;
    let accounts = open(store, cheap()).await;
    let bob = accounts.access(Some("bob"));
    for i in 0..20 {
        assert!(bob.allows(&p(&format!("/b{i}/x")), Modes::READ), "b{i}");
    }
}

#[tokio::test]
async fn a_dropped_change_still_completes_visibly_and_durably() {
    let store = Arc::new(MemoryStore::default());
    let accounts = open(store.clone(), cheap()).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    // Polled once (the job starts), then dropped by the elapsed timeout.
    let res = tokio::time::timeout(
        Duration::ZERO,
        accounts.grant("bob", &bucket("b"), Permission::Get),
    )
    .await;
    if res.is_err() {
        let deadline = Instant::now() + WAIT;
        while !accounts.access(Some("bob")).allows(&p("/b"), Modes::READ) {
            assert!(Instant::now() < deadline, "the dropped grant never landed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(accounts);
    wait_released(&store).await;
    let accounts = open(store, cheap()).await;
    assert!(accounts.access(Some("bob")).allows(&p("/b"), Modes::READ));
}

#[tokio::test]
async fn a_failed_write_leaves_the_accounts_unchanged() {
    let store = Arc::new(GatedStore::new_open());
    let accounts = open(store.clone(), cheap()).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    accounts
        .grant("bob", &bucket("b"), Permission::Get)
        .await
        .unwrap();
    let (_, durable) = store.snapshot(SNAPSHOT).unwrap().unwrap();
    let bob_before = accounts.access(Some("bob"));

    store.fail_snapshots.store(true, Ordering::SeqCst);
    assert!(matches!(
        accounts.add_user("carol", "pw", false).await,
        Err(AccountsError::Store(_))
    ));
    assert!(matches!(
        accounts.grant("bob", &bucket("c"), Permission::Put).await,
        Err(AccountsError::Store(_))
    ));
    assert!(matches!(
        accounts.revoke("bob", &bucket("b"), Permission::Get).await,
        Err(AccountsError::Store(_))
    ));
    assert!(matches!(
        accounts.set_password("bob", "new").await,
        Err(AccountsError::Store(_))
    ));
    assert!(matches!(
        accounts.remove_user("bob").await,
        Err(AccountsError::Store(_))
    ));
    assert!(matches!(
        accounts.ensure_admin("secret").await,
        Err(AccountsError::Store(_))
    ));
    // Changes that change nothing write nothing, so they succeed.
    accounts
        .grant("bob", &bucket("b"), Permission::Get)
        .await
        .unwrap();
    assert_eq!(accounts.user_names(), ["bob"]);
    assert_eq!(accounts.access(Some("bob")), bob_before);
    assert!(accounts.login("bob", "pw").await.unwrap().is_some());
    assert!(accounts.login("bob", "new").await.unwrap().is_none());
    assert_eq!(store.snapshot(SNAPSHOT).unwrap().unwrap().1, durable);

    // Once the store works again, so do changes.
    store.fail_snapshots.store(false, Ordering::SeqCst);
    accounts.add_user("carol", "pw", false).await.unwrap();
    assert_eq!(accounts.user_names(), ["bob", "carol"]);

    // Opening fails cleanly when the generated secret cannot be stored.
    let fresh = Arc::new(GatedStore::new_open());
    fresh.fail_snapshots.store(true, Ordering::SeqCst);
    assert!(matches!(
        Accounts::open(fresh, cheap()).await,
        Err(AccountsError::Store(_))
    ));
}

#[tokio::test]
async fn unreadable_snapshots_are_reported() {
    for bytes in [
        b"garbage".to_vec(),
        br#"{"version":99,"session_secret":null,"users":[],"grants":[]}"#.to_vec(),
    ] {
        let store = Arc::new(MemoryStore::default());
        store
            .put_snapshot(SNAPSHOT, 1, &bytes, Durability::Sync)
            .unwrap();
        let err = Accounts::open(store, cheap()).await.unwrap_err();
        assert!(matches!(err, AccountsError::Corrupt(_)), "{err}");
    }
}

#[tokio::test]
async fn unknown_users_cost_as_much_as_known_ones() {
    // A moderate cost, so that hashing dominates and the comparison is meaningful.
    let cost = PasswordCost {
        memory_kib: 4096,
        iterations: 2,
        parallelism: 1,
    };
    let options = AccountsOptions {
        password_cost: cost,
        ..AccountsOptions::default()
    };
    let accounts = open(Arc::new(MemoryStore::default()), options).await;
    accounts.add_user("bob", "pw", false).await.unwrap();
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        assert!(accounts.login("bob", "wrong").await.unwrap().is_none());
        known = known.min(t.elapsed());
        let t = Instant::now();
        assert!(accounts.login("eve", "wrong").await.unwrap().is_none());
        unknown = unknown.min(t.elapsed());
    }
    // Generous bounds: the point is that the unknown user's login does hash.
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "known {known:?}, unknown {unknown:?}"
    );
}
