//! `herald user`: manages the IorioDB-style user accounts of a data directory, offline.
//!
//! It opens the store directly, so it runs before the server starts (or while it is stopped);
//! while a server holds the data directory the store says it is in use and nothing changes.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use herald_engine::{Accounts, AccountsOptions};
use herald_store::Store;

use crate::config;

/// Options of `herald user`.
#[derive(Debug, Args)]
pub(crate) struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user (in the data directory's store, created if missing).
    ///
    /// Names are 1 to 64 of A-Z a-z 0-9 _ . - (not starting with . or -); `anonymous` and
    /// names starting with `g-` are reserved. Every user owns the bucket `_user_<NAME>`.
    Add {
        /// The new user's name.
        name: String,
        /// Make the user an admin (full access, may manage users and grants).
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Change a user's password. Sessions already handed out stay valid until they expire.
    Passwd {
        /// The user's name.
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

/// What every `user` subcommand takes.
#[derive(Debug, Args)]
struct Common {
    /// The password. Other local users may see command lines: prefer --password-stdin.
    #[arg(
        long,
        value_name = "PASSWORD",
        required_unless_present = "password_stdin",
        conflicts_with = "password_stdin"
    )]
    password: Option<String>,

    /// Read the password from the first line of standard input (its line ending is dropped),
    /// e.g. `printf '%s\n' "$PW" | herald user add bob --password-stdin`.
    #[arg(long)]
    password_stdin: bool,

    /// Data directory of the server (the store is DIR/store). [default: the config file's
    /// data-dir, else ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// A `herald serve` TOML configuration file to take data-dir from.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Common {
    fn password(&self) -> anyhow::Result<String> {
        if let Some(password) = &self.password {
            return Ok(password.clone());
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let password = line
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(&line);
        Ok(password.to_owned())
    }

    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let from_file = match &self.config {
            Some(path) => config::data_dir_from_file(path)?,
            None => None,
        };
        Ok(from_file.unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR)))
    }
}

pub(crate) fn run(args: UserArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            UserCommand::Add {
                name,
                admin,
                common,
            } => {
                let password = common.password()?;
                let data_dir = common.data_dir()?;
                std::fs::create_dir_all(&data_dir).with_context(|| {
                    format!("cannot create data directory {}", data_dir.display())
                })?;
                let (accounts, store) = open(&data_dir).await?;
                accounts
                    .add_user(&name, &password, admin)
                    .await
                    .with_context(|| format!("cannot add user {name:?}"))?;
                close(accounts, store)?;
                let kind = if admin { "admin user" } else { "user" };
                println!("added {kind} {name} to {}", data_dir.display());
            }
            UserCommand::Passwd { name, common } => {
                let password = common.password()?;
                let data_dir = common.data_dir()?;
                if !data_dir.join("store").is_dir() {
                    bail!(
                        "there is no Herald store in {} (is the data directory right?)",
                        data_dir.display()
                    );
                }
                let (accounts, store) = open(&data_dir).await?;
                accounts
                    .set_password(&name, &password)
                    .await
                    .with_context(|| format!("cannot change the password of {name:?}"))?;
                close(accounts, store)?;
                println!("changed the password of {name} in {}", data_dir.display());
            }
        }
        Ok(())
    })
}

async fn open(data_dir: &std::path::Path) -> anyhow::Result<(Accounts, Arc<dyn Store>)> {
    let store_dir = data_dir.join("store");
    let store: Arc<dyn Store> = Arc::new(
        herald_store_fjall::FjallStore::open(&store_dir)
            .with_context(|| format!("cannot open the store in {}", store_dir.display()))?,
    );
    let accounts = Accounts::open(store.clone(), AccountsOptions::default())
        .await
        .context("cannot load the accounts")?;
    Ok((accounts, store))
}

/// Every change is already durable; the final sync mirrors `serve`'s clean shutdown.
fn close(accounts: Accounts, store: Arc<dyn Store>) -> anyhow::Result<()> {
    drop(accounts);
    store.sync().context("final sync of the store failed")
}
