//! `herald`: the Herald server and its tools.
//!
//! This binary is the only place for command-line parsing, configuration loading, signals,
//! tracing setup and `anyhow`. Subcommands:
//! - `serve`: run the server (see `herald serve --help`);
//! - `token`: mint a JWT with an Icepeak-style path whitelist;
//! - `user`: add users and change passwords in a data directory, offline.

use clap::{Parser, Subcommand};

mod config;
mod datadir;
mod hpfeeds_cli;
mod http1;
mod limit;
mod serve;
mod tls_listener;
mod token;
mod user;

/// Herald: one real-time data hub for JSON documents, event streams and pub/sub.
#[derive(Debug, Parser)]
#[command(name = "herald", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    ///
    /// Every option can also be set with an environment variable (shown below) or a key of the
    /// same name (without the leading dashes) in the TOML file given by --config. Precedence:
    /// command-line flags, then environment, then the file, then built-in defaults.
    Serve(Box<config::ServeArgs>),
    /// Mint a JSON Web Token granting access to path prefixes (like icepeak-token-gen).
    Token(token::TokenArgs),
    /// Manage the user accounts (IorioDB-style logins) of a data directory.
    ///
    /// Works offline, on the store directly: run it before `herald serve` starts or while it is
    /// stopped (a running server keeps the store locked).
    User(user::UserArgs),
    /// Manage the hpfeeds identities (ident, secret, channels) of a data directory.
    ///
    /// Works offline, on the store directly, like `herald user`.
    Hpfeeds(hpfeeds_cli::HpfeedsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Token(args) => token::run(args),
        Command::User(args) => user::run(args),
        Command::Hpfeeds(args) => hpfeeds_cli::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
