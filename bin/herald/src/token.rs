//! `herald token`: mints tokens the way icepeak-token-gen does.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;

/// Options of `herald token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// Secret used to sign the token (HS256). Without one the token is not signed, which only a
    /// server running with --enable-jwt-auth and no secret accepts.
    #[arg(short = 's', long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Make the token expire this many seconds from now.
    #[arg(short = 'e', long = "expires", value_name = "EXPIRES_SECONDS")]
    expires: Option<u64>,
    /// Allow MODES on PATH and everything below it. MODES is r (read), w (write) or rw. PATH is
    /// slash-separated, e.g. users/123. May be repeated.
    #[arg(short = 'p', long = "path", value_name = "PATH:MODES")]
    paths: Vec<String>,
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    let whitelist = args
        .paths
        .iter()
        .map(|p| herald_auth::parse_path_modes(p).with_context(|| format!("invalid --path {p:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs();
    let token = herald_auth::mint(
        args.jwt_secret.as_deref().map(str::as_bytes),
        args.expires,
        &whitelist,
        now,
    )
    .context("could not create the token")?;
    println!("{token}");
    Ok(())
}
