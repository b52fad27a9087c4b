//! The data directory as the offline tools (`herald user`, `herald hpfeeds`) and `serve` find
//! and open it: `--data-dir`, else the `--config` file's `data-dir`, else `./herald-data`; the
//! embedded store lives in `DIR/store`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use herald_store::Store;

use crate::config;

/// Where the data directory is.
#[derive(Debug, Args)]
pub(crate) struct DataDir {
    /// Data directory of the server (the store is DIR/store). [default: the config file's
    /// data-dir, else ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// A `herald serve` TOML configuration file to take data-dir from.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl DataDir {
    /// The data directory.
    pub(crate) fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let from_file = match &self.config {
            Some(path) => config::data_dir_from_file(path)?,
            None => None,
        };
        Ok(from_file.unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR)))
    }

    /// The data directory, created if missing.
    pub(crate) fn create(&self) -> anyhow::Result<PathBuf> {
        let data_dir = self.resolve()?;
        create(&data_dir)?;
        Ok(data_dir)
    }

    /// The data directory, which must hold a store already.
    pub(crate) fn existing(&self) -> anyhow::Result<PathBuf> {
        let data_dir = self.resolve()?;
        if !data_dir.join("store").is_dir() {
            bail!(
                "there is no Herald store in {} (is the data directory right?)",
                data_dir.display()
            );
        }
        Ok(data_dir)
    }
}

/// Creates `data_dir` if it is missing.
pub(crate) fn create(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))
}

/// Opens the embedded store of `data_dir` (in `DIR/store`).
pub(crate) fn open_store(data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let store_dir = data_dir.join("store");
    Ok(Arc::new(
        herald_store_fjall::FjallStore::open(&store_dir)
            .with_context(|| format!("cannot open the store in {}", store_dir.display()))?,
    ))
}

/// Syncs the store once more before an offline tool exits. Every change is already durable;
/// this mirrors `serve`'s clean shutdown. Call it after dropping the engine handles.
pub(crate) fn close_store(store: Arc<dyn Store>) -> anyhow::Result<()> {
    store.sync().context("final sync of the store failed")
}

/// The next line of standard input, without its line ending (`what` names it in errors).
pub(crate) fn read_stdin_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    let value = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    Ok(value.to_owned())
}
