//! `herald hpfeeds add|remove|list|show --server URL`: the same commands against a running
//! server, through its hpfeeds admin API on the `--http` listener
//! (`herald_transport_hpfeeds::admin`).
//!
//! It logs in with `POST /sessions` (`{"username","password"}` → `{"token"}`), then sends the
//! token in `X-Session`. The user must be an admin. Only `http://` URLs are supported (this
//! build has no TLS client): use it on the server's host or over a trusted network.

use anyhow::{Context, bail};
use clap::Args;
use herald_auth::hpfeeds::Identity;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The environment variable a `--server` password may come from.
pub(super) const PASSWORD_ENV: &str = "HERALD_PASSWORD";

/// How to reach a running server.
#[derive(Debug, Args)]
pub(super) struct ServerArgs {
    /// Manage the identities of a running server through its --http API (e.g.
    /// http://127.0.0.1:8080) instead of a data directory. The password comes from
    /// --password-stdin, else the HERALD_PASSWORD environment variable. With both
    /// --password-stdin and --secret-stdin, the first line of standard input is the password
    /// and the second the secret.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The admin user to log in as (with --server).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "admin",
        requires = "server"
    )]
    user: String,
    /// Read the password of --user from the first line of standard input (with --server).
    #[arg(long, requires = "server")]
    password_stdin: bool,
}

impl ServerArgs {
    /// The server URL, when the command is for a running server.
    pub(super) fn url(&self) -> Option<&str> {
        self.server.as_deref()
    }
}

/// A logged-in admin session on a server.
pub(super) struct Remote {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    /// Reads the password (standard input or [`PASSWORD_ENV`]) and logs in.
    pub(super) async fn login(args: &ServerArgs) -> anyhow::Result<Remote> {
        let Some(server) = &args.server else {
            bail!("no --server given");
        };
        let base = base_url(server)?;
        let password = if args.password_stdin {
            crate::datadir::read_stdin_line("password")?
        } else {
            match std::env::var(PASSWORD_ENV) {
                Ok(p) => p,
                Err(_) => bail!(
                    "--server needs the password of user {:?}: pass --password-stdin, or set \
                     {PASSWORD_ENV}",
                    args.user
                ),
            }
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot create the HTTP client")?;
        let resp = http
            .post(format!("{base}/sessions"))
            .header("Accept", "application/json")
            .json(&json!({ "username": args.user, "password": password }))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "cannot log in to {base} as {:?}: wrong user name or password",
                args.user
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            bail!("cannot log in to {base}: too many attempts, try again later");
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let Some(token) = body.get("token").and_then(Value::as_str) else {
            bail!(
                "cannot log in to {base} as {:?}: the server answered {status} {}",
                args.user,
                error_text(&body)
            );
        };
        Ok(Remote {
            base,
            token: token.to_owned(),
            http,
        })
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-Session", &self.token)
            .header("Accept", "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {}{path} failed", self.base))?;
        let status = resp.status();
        let body = if status == StatusCode::NO_CONTENT {
            Value::Null
        } else {
            resp.json().await.unwrap_or(Value::Null)
        };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => bail!(
                "{} refused the request ({status}): {}",
                self.base,
                error_text(&body)
            ),
            StatusCode::NOT_FOUND if body.get("error").is_none() => bail!(
                "{} has no hpfeeds admin API (is it a Herald server, with --http on?)",
                self.base
            ),
            _ => Ok((status, body)),
        }
    }

    /// Creates or replaces `identity`; returns whether it replaced one.
    pub(super) async fn put(&self, identity: &Identity) -> anyhow::Result<bool> {
        let body = json!({
            "secret": identity.secret,
            "owner": identity.owner,
            "pubchans": identity.pubchans,
            "subchans": identity.subchans,
        });
        let (status, answer) = self
            .call(Method::PUT, &identity_path(&identity.ident), Some(&body))
            .await?;
        match status {
            StatusCode::CREATED => Ok(false),
            StatusCode::OK => Ok(true),
            _ => bail!(
                "cannot store hpfeeds identity {:?} on {} ({status}): {}",
                identity.ident,
                self.base,
                error_text(&answer)
            ),
        }
    }

    /// Removes `ident`; returns whether it existed.
    pub(super) async fn remove(&self, ident: &str) -> anyhow::Result<bool> {
        let (status, answer) = self
            .call(Method::DELETE, &identity_path(ident), None)
            .await?;
        match status {
            StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => bail!(
                "cannot remove hpfeeds identity {ident:?} on {} ({status}): {}",
                self.base,
                error_text(&answer)
            ),
        }
    }

    /// Every identity, as the API shows them (no secrets).
    pub(super) async fn list(&self) -> anyhow::Result<Vec<Value>> {
        let (status, answer) = self.call(Method::GET, "/hpfeeds/identities", None).await?;
        match (status, answer.get("identities").and_then(Value::as_array)) {
            (StatusCode::OK, Some(all)) => Ok(all.clone()),
            _ => bail!(
                "cannot list the hpfeeds identities of {} ({status}): {}",
                self.base,
                error_text(&answer)
            ),
        }
    }

    /// One identity as the API shows it (no secret), `None` when absent.
    pub(super) async fn get(&self, ident: &str) -> anyhow::Result<Option<Value>> {
        let (status, answer) = self.call(Method::GET, &identity_path(ident), None).await?;
        match status {
            StatusCode::OK => Ok(Some(answer)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => bail!(
                "cannot read hpfeeds identity {ident:?} on {} ({status}): {}",
                self.base,
                error_text(&answer)
            ),
        }
    }
}

/// The server's base URL, without a trailing slash.
fn base_url(server: &str) -> anyhow::Result<String> {
    let trimmed = server.trim().trim_end_matches('/');
    if trimmed.starts_with("https://") {
        bail!("--server {server:?}: https is not supported by this client, use http://");
    }
    let Some(rest) = trimmed.strip_prefix("http://") else {
        bail!("--server {server:?} must be an http:// URL (e.g. http://127.0.0.1:8080)");
    };
    if rest.is_empty() {
        bail!("--server {server:?} has no host");
    }
    Ok(trimmed.to_owned())
}

/// `/hpfeeds/identities/{ident}`, the ident percent-encoded (all but unreserved characters).
fn identity_path(ident: &str) -> String {
    let mut path = String::from("/hpfeeds/identities/");
    for b in ident.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// The `error` of a JSON error body, else the body.
fn error_text(body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(e) => e.to_owned(),
        None if body.is_null() => "(no details)".to_owned(),
        None => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_are_percent_encoded() {
        assert_eq!(identity_path("bob"), "/hpfeeds/identities/bob");
        assert_eq!(identity_path("a/b c"), "/hpfeeds/identities/a%2Fb%20c");
        assert_eq!(identity_path("é"), "/hpfeeds/identities/%C3%A9");
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            base_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(base_url("127.0.0.1:8080").is_err());
        assert!(base_url("https://h").is_err());
        assert!(base_url("http://").is_err());
    }
}
