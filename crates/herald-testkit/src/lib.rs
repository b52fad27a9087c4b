//! Test fixtures for Herald: start the real `herald` binary on ephemeral loopback ports with a
//! temporary data directory, find its addresses, restart it, kill it, and clean up.
//!
//! What it is **not**: a client. Tests talk to the server with real clients (reqwest,
//! tokio-tungstenite, ...).
//!
//! # Example
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let server = herald_testkit::Server::start(env!("CARGO_PKG_NAME").as_ref(), &[]).await?;
//! println!("icepeak at {}", server.icepeak_url());
//! server.stop().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// How long to wait for the server to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `herald serve` process.
#[derive(Debug)]
pub struct Server {
    bin: PathBuf,
    args: Vec<String>,
    /// Kept alive so the directory is removed when the server is dropped.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    child: Option<Child>,
    addrs: HashMap<String, SocketAddr>,
    starts: u32,
}

impl Server {
    /// Starts `bin serve` with a new temporary data directory, every listener on
    /// `127.0.0.1:0` (metrics, hpfeeds and MQTT included, unless `extra_args` has its own
    /// `--hpfeeds` or `--mqtt`), and `extra_args` appended.
    ///
    /// # Errors
    /// When the process cannot start or does not become ready in time (the error includes its
    /// log).
    pub async fn start(bin: &Path, extra_args: &[&str]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let mut server = Server {
            bin: bin.to_owned(),
            args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            dir,
            data_dir,
            child: None,
            addrs: HashMap::new(),
            starts: 0,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let ready = self.dir.path().join(format!("ready-{}.json", self.starts));
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--icepeak", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0"])
            .args(ephemeral_unless_given(&self.args, "--mqtt"))
            .args(ephemeral_unless_given(&self.args, "--hpfeeds"))
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .env_remove("JWT_SECRET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let map: HashMap<String, String> = serde_json::from_str(&text)?;
                self.addrs = map
                    .into_iter()
                    .map(|(k, v)| Ok((k, v.parse()?)))
                    .collect::<anyhow::Result<_>>()?;
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "herald exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!(
                    "herald was not ready within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("herald.log")
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The data directory (it survives restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The bound address of a listener (`icepeak`, `http`, `metrics`, `hpfeeds`).
    ///
    /// # Panics
    /// When that listener is off.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .addrs
            .get(listener)
            .unwrap_or_else(|| panic!("listener {listener} is not running"))
    }

    /// `http://ADDR` of the Icepeak listener.
    pub fn icepeak_url(&self) -> String {
        format!("http://{}", self.addr("icepeak"))
    }

    /// `ws://ADDR{path}` on the Icepeak listener.
    pub fn icepeak_ws(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr("icepeak"), path)
    }

    /// `http://ADDR` of the main API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    /// The address of the hpfeeds broker (a plain TCP listener).
    ///
    /// # Panics
    /// When the hpfeeds listener is off.
    pub fn hpfeeds_addr(&self) -> SocketAddr {
        self.addr("hpfeeds")
    }

    /// The address of the MQTT broker (a plain TCP listener).
    ///
    /// # Panics
    /// When the MQTT listener is off.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.addr("mqtt")
    }

    /// `http://ADDR` of the metrics listener.
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.addr("metrics"))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends SIGTERM and waits for a clean exit.
    ///
    /// # Errors
    /// When the process does not exit in time or exits unsuccessfully.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate().await
    }

    async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("server is not running");
        };
        if let Some(pid) = child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        let status = tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .with_context(|| format!("herald did not stop within {STOP_TIMEOUT:?}"))??;
        if !status.success() {
            bail!("herald exited with {status}:\n{}", self.log());
        }
        Ok(status)
    }

    /// Kills the process with SIGKILL (a crash) and waits for it to die.
    ///
    /// # Errors
    /// When the process cannot be killed.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stops the server gracefully (if running) and starts it again on the same data
    /// directory. Ports change.
    ///
    /// # Errors
    /// As [`Server::stop`] and [`Server::start`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.terminate().await?;
        }
        self.spawn().await
    }

    /// Starts the server again after [`Server::kill9`] (or a stop), on the same data directory.
    ///
    /// # Errors
    /// As [`Server::start`].
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("server is still running");
        }
        self.spawn().await
    }
}

/// `FLAG 127.0.0.1:0`, unless `args` give that listener themselves.
fn ephemeral_unless_given(args: &[String], flag: &str) -> Vec<String> {
    let given = args.iter().any(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    });
    if given {
        Vec::new()
    } else {
        vec![flag.to_owned(), "127.0.0.1:0".to_owned()]
    }
}
