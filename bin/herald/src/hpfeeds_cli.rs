//! `herald hpfeeds`: manages the hpfeeds identities of a data directory, offline, or of a
//! running server (`add`, `remove`, `list` and `show` with `--server URL`, see [`remote`]).
//!
//! Offline, like `herald user`, it opens the store directly, so it runs before the server
//! starts (or while it is stopped); while a server holds the data directory the store says it
//! is in use and nothing changes: use `--server` then. Secrets are never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use herald_auth::hpfeeds::{self, Identity};
use herald_engine::{HpfeedsIdentities, HpfeedsOptions};
use herald_store::Store;
use serde_json::Value;

use crate::datadir::{self, DataDir};

mod remote;
mod sqlite;

/// Options of `herald hpfeeds`.
#[derive(Debug, Args)]
pub(crate) struct HpfeedsArgs {
    #[command(subcommand)]
    command: HpfeedsCommand,
}

#[derive(Debug, Subcommand)]
enum HpfeedsCommand {
    /// Create an identity, or replace the one with the same ident (in the data directory's
    /// store, created if missing).
    ///
    /// Idents are 1 to 255 bytes; channel names 1 to 255 bytes, not `.` or `..`. Channel `C`
    /// is the topic /hpfeeds/C (with the default topic prefix).
    Add {
        /// The ident clients authenticate as.
        ident: String,
        /// The secret. Other local users may see command lines: prefer --secret-stdin.
        #[arg(
            long,
            value_name = "SECRET",
            required_unless_present = "secret_stdin",
            conflicts_with = "secret_stdin"
        )]
        secret: Option<String>,
        /// Read the secret from the first line of standard input (its line ending is dropped;
        /// the second line with --server --password-stdin).
        #[arg(long)]
        secret_stdin: bool,
        /// Channels the identity may publish to, comma-separated (may be repeated).
        #[arg(long, value_name = "CHANS")]
        pubchans: Vec<String>,
        /// Channels the identity may subscribe to, comma-separated (may be repeated).
        #[arg(long, value_name = "CHANS")]
        subchans: Vec<String>,
        /// Who the identity belongs to (a label in listings and metrics). [default: the ident]
        #[arg(long, value_name = "OWNER")]
        owner: Option<String>,
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        server: remote::ServerArgs,
    },
    /// Remove an identity.
    Remove {
        /// The ident to remove.
        ident: String,
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        server: remote::ServerArgs,
    },
    /// List the identities: ident, owner, publish and subscribe channels (never secrets).
    List {
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        server: remote::ServerArgs,
    },
    /// Show one identity as JSON, without its secret.
    Show {
        /// The ident to show.
        ident: String,
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        server: remote::ServerArgs,
    },
    /// Import an hpfeeds JSON users file
    /// (`{"IDENT": {"owner": .., "secret": .., "pubchans": [..], "subchans": [..]}}`).
    ///
    /// Every identity in it is created or replaced, all in one change: if one entry is
    /// invalid, nothing is imported. Identities not in the file are kept.
    ImportJson {
        /// The JSON users file.
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Import the `authkeys` table of an hpfeeds broker's sqlite database.
    ///
    /// The database is only read (it is opened read-only), so it may be the one a running
    /// hpfeeds broker uses. Every valid row is created or replaced, all in one change;
    /// identities not in the database are kept. An invalid row (a NULL ident or secret, a
    /// channel list that is not a JSON array of strings, an invalid channel name, ...) is
    /// skipped with a warning naming its id and ident and saying why, never its secret; the
    /// other rows are still imported. When rows share an ident, the one with the lowest id is
    /// used, as hpfeeds does. A NULL owner is the ident.
    ImportSqlite {
        /// The hpfeeds sqlite database file.
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
}

pub(crate) fn run(args: HpfeedsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            HpfeedsCommand::Add {
                ident,
                secret,
                secret_stdin: _,
                pubchans,
                subchans,
                owner,
                dir,
                server,
            } => {
                // With --server --password-stdin, the password is the first line of stdin.
                let session = match server.url() {
                    Some(_) => Some(remote::Remote::login(&server).await?),
                    None => None,
                };
                let secret = match secret {
                    Some(secret) => secret,
                    None => datadir::read_stdin_line("secret")?,
                };
                let owner = owner.unwrap_or_else(|| ident.clone());
                let identity = Identity::new(
                    &ident,
                    &secret,
                    &owner,
                    channels(&pubchans),
                    channels(&subchans),
                )?;
                if let Some(session) = session {
                    let done = if session.put(&identity).await? {
                        "replaced"
                    } else {
                        "created"
                    };
                    println!("{done} hpfeeds identity {ident} on {}", session.base());
                    return Ok(());
                }
                let data_dir = dir.create()?;
                let (ids, store) = open(&data_dir).await?;
                let replaced = ids
                    .put(identity)
                    .await
                    .with_context(|| format!("cannot store hpfeeds identity {ident:?}"))?;
                close(ids, store)?;
                let done = if replaced.is_some() {
                    "replaced"
                } else {
                    "created"
                };
                println!("{done} hpfeeds identity {ident} in {}", data_dir.display());
            }
            HpfeedsCommand::Remove { ident, dir, server } => {
                if server.url().is_some() {
                    let session = remote::Remote::login(&server).await?;
                    if !session.remove(&ident).await? {
                        bail!(
                            "there is no hpfeeds identity {ident:?} on {}",
                            session.base()
                        );
                    }
                    println!("removed hpfeeds identity {ident} from {}", session.base());
                    return Ok(());
                }
                let data_dir = dir.existing()?;
                let (ids, store) = open(&data_dir).await?;
                let removed = ids
                    .remove(&ident)
                    .await
                    .with_context(|| format!("cannot remove hpfeeds identity {ident:?}"))?;
                close(ids, store)?;
                if !removed {
                    bail!(
                        "there is no hpfeeds identity {ident:?} in {}",
                        data_dir.display()
                    );
                }
                println!(
                    "removed hpfeeds identity {ident} from {}",
                    data_dir.display()
                );
            }
            HpfeedsCommand::List { dir, server } => {
                if server.url().is_some() {
                    let session = remote::Remote::login(&server).await?;
                    let all = session.list().await?;
                    if all.is_empty() {
                        eprintln!("no hpfeeds identities on {}", session.base());
                    }
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    let chans = |v: &Value| {
                        v.as_array()
                            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    };
                    for id in all {
                        println!(
                            "{}\towner={}\tpubchans={}\tsubchans={}",
                            text(&id["ident"]),
                            text(&id["owner"]),
                            chans(&id["pubchans"]),
                            chans(&id["subchans"])
                        );
                    }
                    return Ok(());
                }
                let data_dir = dir.existing()?;
                let (ids, store) = open(&data_dir).await?;
                let all = ids.list();
                close(ids, store)?;
                if all.is_empty() {
                    eprintln!("no hpfeeds identities in {}", data_dir.display());
                }
                for id in all {
                    println!(
                        "{}\towner={}\tpubchans={}\tsubchans={}",
                        id.ident,
                        id.owner,
                        id.pubchans.join(","),
                        id.subchans.join(",")
                    );
                }
            }
            HpfeedsCommand::Show { ident, dir, server } => {
                if server.url().is_some() {
                    let session = remote::Remote::login(&server).await?;
                    let Some(shown) = session.get(&ident).await? else {
                        bail!(
                            "there is no hpfeeds identity {ident:?} on {}",
                            session.base()
                        );
                    };
                    println!("{}", serde_json::to_string_pretty(&shown)?);
                    return Ok(());
                }
                let data_dir = dir.existing()?;
                let (ids, store) = open(&data_dir).await?;
                let found = ids.get(&ident);
                close(ids, store)?;
                let Some(id) = found else {
                    bail!(
                        "there is no hpfeeds identity {ident:?} in {}",
                        data_dir.display()
                    );
                };
                let shown = serde_json::json!({
                    "ident": id.ident,
                    "owner": id.owner,
                    "pubchans": id.pubchans,
                    "subchans": id.subchans,
                });
                println!("{}", serde_json::to_string_pretty(&shown)?);
            }
            HpfeedsCommand::ImportJson { file, dir } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let identities = hpfeeds::parse_users_json(&text)
                    .with_context(|| format!("cannot import {}", file.display()))?;
                let data_dir = dir.create()?;
                let (ids, store) = open(&data_dir).await?;
                let done = ids
                    .put_all(identities)
                    .await
                    .with_context(|| format!("cannot import {}", file.display()))?;
                close(ids, store)?;
                println!(
                    "imported {} hpfeeds identities from {} into {} ({} created, {} replaced)",
                    done.created.len() + done.replaced.len(),
                    file.display(),
                    data_dir.display(),
                    done.created.len(),
                    done.replaced.len()
                );
            }
            HpfeedsCommand::ImportSqlite { file, dir } => {
                let rows = sqlite::read_file(&file)?;
                let (identities, skipped) = sqlite::convert(rows);
                for skip in &skipped {
                    eprintln!("warning: {}: skipping {skip}", file.display());
                }
                let data_dir = dir.create()?;
                let (ids, store) = open(&data_dir).await?;
                let done = ids
                    .put_all(identities)
                    .await
                    .with_context(|| format!("cannot import {}", file.display()))?;
                close(ids, store)?;
                println!(
                    "imported {} hpfeeds identities from {} into {} ({} created, {} replaced, \
                     {} rows skipped)",
                    done.created.len() + done.replaced.len(),
                    file.display(),
                    data_dir.display(),
                    done.created.len(),
                    done.replaced.len(),
                    skipped.len()
                );
            }
        }
        Ok(())
    })
}

/// The channels of repeated comma-separated options. An empty option value is no channel;
/// an empty entry inside a list (`a,,b`) is kept, so that validation refuses it.
fn channels(values: &[String]) -> Vec<String> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .flat_map(|v| v.split(','))
        .map(str::to_owned)
        .collect()
}

async fn open(data_dir: &Path) -> anyhow::Result<(HpfeedsIdentities, Arc<dyn Store>)> {
    let store = datadir::open_store(data_dir)?;
    let ids = HpfeedsIdentities::open(store.clone(), HpfeedsOptions::default())
        .await
        .context("cannot load the hpfeeds identities")?;
    Ok((ids, store))
}

fn close(ids: HpfeedsIdentities, store: Arc<dyn Store>) -> anyhow::Result<()> {
    drop(ids);
    datadir::close_store(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_options_split_on_commas() {
        let v = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(channels(&v(&[])), Vec::<String>::new());
        assert_eq!(channels(&v(&[""])), Vec::<String>::new());
        assert_eq!(channels(&v(&["a,b", "c"])), v(&["a", "b", "c"]));
        assert_eq!(channels(&v(&["a,,b "])), v(&["a", "", "b "]));
    }
}
