//! The command line of the real binary: help texts, the loopback-only safety check, `herald
//! token`, the TOML config file and `HERALD_*` environment variables.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

const SERVE_FLAGS: &[&str] = &[
    "--data-dir",
    "--icepeak",
    "--http",
    "--metrics",
    "--config",
    "--enable-jwt-auth",
    "--jwt-secret",
    "--allow-anonymous",
    "--max-body-bytes",
    "--queue-capacity",
    "--threads",
    "--snapshot-every",
    "--websocket-ping-interval",
    "--websocket-pong-timeout",
    "--first-subscription-deadline-timeout",
    "--ready-file",
];

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn help_texts_list_every_command_and_flag() {
    let out = run_cli(&["--help"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for word in ["serve", "token", "--help", "--version"] {
        assert!(text.contains(word), "herald --help lacks {word}:\n{text}");
    }

    let out = run_cli(&["serve", "--help"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for flag in SERVE_FLAGS {
        assert!(
            text.contains(flag),
            "herald serve --help lacks {flag}:\n{text}"
        );
    }
    // The environment variables are documented too.
    for var in ["HERALD_DATA_DIR", "HERALD_ICEPEAK", "HERALD_JWT_SECRET"] {
        assert!(
            text.contains(var),
            "herald serve --help lacks {var}:\n{text}"
        );
    }

    let out = run_cli(&["token", "--help"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for flag in ["--jwt-secret", "--expires", "--path"] {
        assert!(
            text.contains(flag),
            "herald token --help lacks {flag}:\n{text}"
        );
    }

    let out = run_cli(&["--version"]).await;
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("herald "), "{out:?}");

    // Usage errors exit non-zero.
    let out = run_cli(&["serve", "--no-such-flag"]).await;
    assert!(!out.status.success());
    let out = run_cli(&[]).await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn non_loopback_listeners_without_auth_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for args in [
        &["--icepeak", "0.0.0.0:0", "--http", "off"][..],
        &["--icepeak", "off", "--http", "0.0.0.0:0"][..],
        &["--icepeak", "127.0.0.1:0", "--http", "[::]:0"][..],
        // Auth without a secret verifies nothing, so it does not count.
        &[
            "--icepeak",
            "0.0.0.0:0",
            "--http",
            "off",
            "--enable-jwt-auth",
        ][..],
    ] {
        let out = run_cli(&[&["serve", "--data-dir", data][..], args].concat()).await;
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains("refusing to start"), "{args:?}: {err}");
        assert!(err.contains("--allow-anonymous"), "{args:?}: {err}");
    }
    // Refused before anything was created.
    assert!(!Path::new(data).exists());
}

#[tokio::test]
async fn allow_anonymous_or_verified_auth_lift_the_loopback_rule() {
    // To keep to loopback sockets, the non-loopback address is one this host does not have
    // (TEST-NET-1): the safety check must pass, and binding is what fails.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for args in [
        &["--allow-anonymous"][..],
        &["--enable-jwt-auth", "--jwt-secret", "s"][..],
    ] {
        let out = run_cli(
            &[
                &[
                    "serve",
                    "--data-dir",
                    data,
                    "--icepeak",
                    "192.0.2.1:0",
                    "--http",
                    "off",
                ][..],
                args,
            ]
            .concat(),
        )
        .await;
        let err = stderr(&out);
        assert!(!err.contains("refusing to start"), "{args:?}: {err}");
        assert!(
            err.contains("cannot bind the icepeak listener to 192.0.2.1:0"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn token_command_validates_paths_and_mints_verifiable_tokens() {
    for (path, needle) in [
        ("foo:x", "invalid modes"),
        ("foo:", "invalid modes"),
        ("foo:rwx", "invalid modes"),
        ("foo", "no ':'"),
        ("a/../b:r", "invalid path"),
    ] {
        let out = run_cli(&["token", "--jwt-secret", "s", "--path", path]).await;
        assert!(!out.status.success(), "{path}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains("invalid --path"), "{path}: {err}");
        assert!(err.contains(needle), "{path}: {err}");
        assert!(stdout(&out).is_empty(), "{path}: {out:?}");
    }

    let token = cli_token(&[
        "--jwt-secret",
        "s3cret",
        "--path",
        "foo:r",
        "--path",
        "a/b:rw",
        "--expires",
        "60",
    ])
    .await;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
        &validation,
    )
    .expect("the token verifies with the secret");
    assert_eq!(
        data.claims["icepeak"],
        json!({"version": 1, "whitelist": [
            {"prefix": ["foo"], "modes": ["read"]},
            {"prefix": ["a", "b"], "modes": ["read", "write"]},
        ]})
    );
    let exp = data.claims["exp"].as_u64().expect("exp");
    let now = now();
    assert!((now + 55..=now + 65).contains(&exp), "exp {exp}, now {now}");

    // JWT_SECRET is read from the environment.
    let mut cmd = command();
    cmd.args(["token", "--path", "x:w"])
        .env("JWT_SECRET", "from-env");
    let out = within("herald token", cmd.output()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = stdout(&out).trim().to_owned();
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"from-env"),
        &validation,
    )
    .expect("signed with JWT_SECRET");
}

#[tokio::test]
async fn a_toml_config_file_sets_the_listeners_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ready = dir.path().join("ready.json");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nicepeak = \"127.0.0.1:0\"\nhttp = \"off\"\nmetrics = \"127.0.0.1:0\"\n\
             ready-file = {:?}\nmax-body-bytes = 16\nsnapshot-every = 2\n",
            data.to_str().unwrap(),
            ready.to_str().unwrap()
        ),
    )
    .unwrap();

    let mut cmd = command();
    cmd.arg("serve").arg("--config").arg(&config);
    let p = Proc::spawn(cmd, ready.clone(), dir.path().join("log1")).await;
    let addrs = p.addrs();
    assert!(addrs.contains_key("icepeak"), "{addrs:?}");
    assert!(addrs.contains_key("metrics"), "{addrs:?}");
    assert!(
        !addrs.contains_key("http"),
        "http is off in the file: {addrs:?}"
    );
    let base = format!("http://{}", addrs["icepeak"]);
    // max-body-bytes from the file applies.
    let r = put(&format!("{base}/k?durable"), "\"0123456789abcdefghij\"").await;
    assert_eq!(r.status, 413, "{r:?}");
    let r = put(&format!("{base}/k?durable"), "\"small\"").await;
    assert_eq!(r.status, 202, "{r:?}");
    p.stop().await;
    // The data landed in the configured directory.
    assert!(
        data.join("store").is_dir(),
        "no store in {}",
        data.display()
    );

    // Flags win over the file: the main API on, and the data is still there.
    std::fs::remove_file(&ready).unwrap();
    let mut cmd = command();
    cmd.arg("serve").arg("--config").arg(&config).args([
        "--http",
        "127.0.0.1:0",
        "--max-body-bytes",
        "100",
    ]);
    let p = Proc::spawn(cmd, ready.clone(), dir.path().join("log2")).await;
    let addrs = p.addrs();
    assert!(addrs.contains_key("http"), "{addrs:?}");
    let r = get(&format!("http://{}/docs/k", addrs["http"])).await;
    assert_eq!((r.status, r.body.as_str()), (200, "\"small\""));
    let r = put(
        &format!("http://{}/docs/k", addrs["http"]),
        "\"0123456789abcdefghij\"",
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    p.stop().await;

    // An unknown key is an error naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "icepeak = \"127.0.0.1:0\"\nno-such-key = 1\n").unwrap();
    let out = run_cli(&["serve", "--config", bad.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-key"), "{out:?}");
    // A missing file too.
    let out = run_cli(&["serve", "--config", "/nonexistent/herald.toml"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read config file"), "{out:?}");
}

#[tokio::test]
async fn herald_environment_variables_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let env_data = dir.path().join("env-data");
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let ready = dir.path().join("ready.json");

    let mut cmd = command();
    cmd.arg("serve")
        .current_dir(&cwd)
        .env("HERALD_DATA_DIR", &env_data)
        .env("HERALD_ICEPEAK", "127.0.0.1:0")
        .env("HERALD_HTTP", "off")
        .env("HERALD_READY_FILE", &ready);
    let p = Proc::spawn(cmd, ready.clone(), dir.path().join("log1")).await;
    let addrs = p.addrs();
    assert!(!addrs.contains_key("http"), "{addrs:?}");
    let base = format!("http://{}", addrs["icepeak"]);
    let r = put(&format!("{base}/env?durable"), "42").await;
    assert_eq!(r.status, 202);
    p.stop().await;
    assert!(
        env_data.join("store").is_dir(),
        "data not in HERALD_DATA_DIR"
    );
    assert!(
        !cwd.join("herald-data").exists(),
        "data went to the default directory"
    );

    // The data is really there: a server started with --data-dir on it reads it back, and the
    // flag wins over the environment variable.
    std::fs::remove_file(&ready).unwrap();
    let mut cmd = command();
    cmd.arg("serve")
        .current_dir(&cwd)
        .arg("--data-dir")
        .arg(&env_data)
        .env("HERALD_DATA_DIR", dir.path().join("elsewhere"))
        .args(["--icepeak", "127.0.0.1:0", "--http", "off", "--ready-file"])
        .arg(&ready);
    let p = Proc::spawn(cmd, ready.clone(), dir.path().join("log2")).await;
    let base = format!("http://{}", p.addrs()["icepeak"]);
    let r = get(&format!("{base}/env")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    p.stop().await;
    assert!(!dir.path().join("elsewhere").exists());

    // HERALD_ENABLE_JWT_AUTH and JWT_SECRET turn auth on.
    std::fs::remove_file(&ready).unwrap();
    let mut cmd = command();
    cmd.arg("serve")
        .current_dir(&cwd)
        .env("HERALD_DATA_DIR", &env_data)
        .env("HERALD_ENABLE_JWT_AUTH", "true")
        .env("JWT_SECRET", "env-secret")
        .args(["--icepeak", "127.0.0.1:0", "--http", "off", "--ready-file"])
        .arg(&ready);
    let p = Proc::spawn(cmd, ready.clone(), dir.path().join("log3")).await;
    let base = format!("http://{}", p.addrs()["icepeak"]);
    let r = get(&format!("{base}/env")).await;
    assert_eq!(r.status, 401, "{r:?}");
    let token = cli_token(&["--jwt-secret", "env-secret", "--path", "env:r"]).await;
    let r = get(&format!("{base}/env?access_token={token}")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    p.stop().await;
}

#[tokio::test]
async fn invalid_settings_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (args, needle) in [
        (
            &["--icepeak", "off", "--http", "off"][..],
            "nothing to serve",
        ),
        (&["--icepeak", "nonsense", "--http", "off"][..], "nonsense"),
        (
            &["--http", "off", "--snapshot-every", "0"][..],
            "--snapshot-every",
        ),
        (
            &["--http", "off", "--max-body-bytes", "0"][..],
            "--max-body-bytes",
        ),
        (
            &["--http", "off", "--queue-capacity", "0"][..],
            "--queue-capacity",
        ),
        (&["--http", "off", "--threads", "0"][..], "--threads"),
    ] {
        // Every case names at least one listener so a wrongly accepted one binds no fixed port.
        let args = if args.contains(&"--icepeak") {
            args.to_vec()
        } else {
            [args, &["--icepeak", "127.0.0.1:0"][..]].concat()
        };
        let out = run_cli(&[&["serve", "--data-dir", data][..], &args].concat()).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

/// The SIGTERM handler is installed before the store opens. A SIGTERM that arrives while
/// Herald is still starting, or just as it writes its ready file, starts a clean shutdown
/// once startup is done; it does not kill the process (as it did before: the handler was
/// installed only after the ready file was written).
#[tokio::test]
async fn a_sigterm_during_startup_shuts_down_cleanly() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--icepeak", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(dir.path().join("ready.json"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("herald spawns");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    within("the store opens", async {
        while let Some(line) = lines.next_line().await.expect("stderr") {
            log.push_str(&line);
            log.push('\n');
            if line.contains("store opened") {
                return;
            }
        }
        panic!("herald exited before opening its store:\n{log}");
    })
    .await;

    let pid = child.id().expect("running").to_string();
    assert!(within("kill -TERM", command_kill(&pid)).await.success());
    // Keep reading stderr so a full pipe never blocks the server.
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    let status = within_for(
        std::time::Duration::from_secs(25),
        "herald exit",
        child.wait(),
    )
    .await
    .expect("wait");
    log.push_str(&rest.await.unwrap());
    assert!(status.success(), "herald exited with {status}:\n{log}");
    assert!(log.contains("shutdown requested"), "{log}");
}
