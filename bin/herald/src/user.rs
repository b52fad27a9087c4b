//! `herald user`: manages the IorioDB-style user accounts of a data directory, offline.
//!
//! It opens the store directly, so it runs before the server starts (or while it is stopped);
//! while a server holds the data directory the store says it is in use and nothing changes.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{Accounts, AccountsOptions};
use herald_store::Store;

use crate::datadir::{self, DataDir};

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

    #[command(flatten)]
    dir: DataDir,
}

impl Common {
    fn password(&self) -> anyhow::Result<String> {
        match &self.password {
            Some(password) => Ok(password.clone()),
            None => datadir::read_stdin_line("password"),
        }
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
                let data_dir = common.dir.create()?;
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
                let data_dir = common.dir.existing()?;
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
    let store = datadir::open_store(data_dir)?;
    let accounts = Accounts::open(store.clone(), AccountsOptions::default())
        .await
        .context("cannot load the accounts")?;
    Ok((accounts, store))
}

fn close(accounts: Accounts, store: Arc<dyn Store>) -> anyhow::Result<()> {
    drop(accounts);
    datadir::close_store(store)
}
