//! TLS for Herald's listeners (hpfeeds, MQTT): loading a PEM certificate chain and key into a
//! rustls [`ServerConfig`], and reloading them when the files change.
//!
//! The files are checked every [`TlsFiles::reload_interval`] (their modification time, size
//! and, on Unix, inode, so that both rewriting a file and renaming a new one over it are seen).
//! When either changed, the pair is loaded again: new connections get the new certificate,
//! connections already open keep theirs. A pair that cannot be loaded (a missing file, bad PEM,
//! a key that does not match the certificate) is logged and the previous configuration kept;
//! it is tried again when the files change again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The certificate and key files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of the leaf certificate.
    pub key: PathBuf,
    /// How often the files are checked for changes. Default 5 s.
    pub reload_interval: Duration,
}

impl TlsFiles {
    /// The pair, checked for changes every 5 seconds.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// Loads the pair into a server configuration (TLS 1.2 and 1.3, no client certificates, the
/// `ring` provider).
///
/// # Errors
/// A message naming the file and what is wrong with it.
pub fn load_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "the TLS key {} does not fit the certificate {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("cannot read the TLS certificate {}: {e}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM CERTIFICATE in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", path.display()))
}

/// What identifies a version of a file.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some((meta.modified().ok()?, meta.len(), ino))
}

fn stamps(files: &TlsFiles) -> (Stamp, Stamp) {
    (stamp(&files.cert), stamp(&files.key))
}

/// Loads the pair and starts a task that reloads it on change until `stop` is cancelled.
/// The receiver always holds the configuration for new connections.
pub fn watch(
    files: TlsFiles,
    stop: CancellationToken,
) -> Result<watch::Receiver<Arc<ServerConfig>>, String> {
    let mut seen = stamps(&files);
    let config = load_server_config(&files)?;
    let (tx, rx) = watch::channel(config);
    let interval = files.reload_interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let files2 = files.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || stamps(&files2)).await else {
                continue;
            };
            if now == seen {
                continue;
            }
            seen = now;
            let files2 = files.clone();
            match tokio::task::spawn_blocking(move || load_server_config(&files2)).await {
                Ok(Ok(config)) => {
                    tracing::info!(
                        cert = %files.cert.display(),
                        key = %files.key.display(),
                        "TLS certificate reloaded"
                    );
                    tx.send_replace(config);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS reload failed");
                }
            }
        }
    });
    Ok(rx)
}
