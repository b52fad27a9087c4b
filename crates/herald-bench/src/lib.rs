//! `herald-bench`: the load generator behind `docs/benchmarks.md`.
//!
//! It drives a running `herald serve` over its public protocols only (HTTP/1.1 and WebSocket on
//! loopback), the way real clients do, and reports throughput, HDR latency percentiles and
//! memory figures as a table or as JSON. `bench/docs.sh` builds Herald, starts it on ephemeral
//! ports and runs every scenario.
//!
//! What it is **not**: a test suite (nothing here asserts or fails on a slow result; the targets
//! are compared in `docs/benchmarks.md`), a micro-benchmark (criterion benches live next to the
//! code they measure, e.g. `cargo bench -p herald-store-fjall --bench group_commit`), or a
//! library for production clients (that will be `herald-client`). Being a tool, not a layer of
//! the server, it reports failures with `anyhow`.
//!
//! # Layout
//! - [`scenario`]: one module per scenario, each with clap `Options`, a `run` function and a
//!   serializable result that prints as a table. Later protocols (MQTT, SSE, hpfeeds) add
//!   modules here and a variant to the binary's subcommand enum.
//!   - [`scenario::docs_put`]: sequential durable PUTs from many keep-alive clients.
//!   - [`scenario::docs_fanout`]: change-to-WebSocket latency with many subscribers on one path.
//!   - [`scenario::ws_idle`]: server RSS per idle WebSocket subscriber.
//!   - [`scenario::listen_fanout`]: stream listen API (WebSocket or SSE) fan-out from MQTT
//!     publishers: deliveries/s, loss per seqnum and latency.
//!   - [`scenario::listen_idle`]: server RSS per idle stream listener.
//!   - [`scenario::idle`]: what the idle scenarios share (bounded set-up, RSS readings).
//!   - the MQTT, hpfeeds and stream-append scenarios, see [`scenario`].
//! - [`http`]: one HTTP/1.1 keep-alive connection per client (hyper, or reqwest to compare).
//! - [`ws`]: WebSocket client connections.
//! - [`sse`]: server-sent events client connections and the event stream parser.
//! - [`net`]: TCP connections, optionally from a chosen loopback source address, and how many
//!   source addresses a number of connections needs.
//! - [`pace`]: sleeping to a deadline finer than tokio's 1 ms timer, for even publishing.
//! - [`procfs`]: RSS, CPU time and open-file limits read from `/proc` (Linux only).
//! - [`report`]: latency summaries, error counts, CPU shares and table formatting.
//! - [`args`]: parsers for durations (`10s`), rates (`100/s`) and targets (`http://host:port`).
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use herald_bench::args::{Rate, Target, parse_duration};
//!
//! assert_eq!(parse_duration("1.5s")?, Duration::from_millis(1500));
//! assert_eq!("100/s".parse::<Rate>()?.per_second(), 100.0);
//! let target: Target = "http://127.0.0.1:3000".parse()?;
//! assert_eq!(target.authority(), "127.0.0.1:3000");
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! From a shell, against a server started with `herald serve --icepeak 127.0.0.1:3000`:
//! ```text
//! herald-bench docs-put --target http://127.0.0.1:3000 --api icepeak --clients 64 --duration 10s
//! herald-bench --json docs-fanout --target http://127.0.0.1:3000 --subscribers 1000 --rate 100/s
//! herald-bench ws-idle --target http://127.0.0.1:3000 --connections 10000 --pid "$(pidof herald)"
//! ```

pub mod args;
pub mod http;
pub mod net;
pub mod pace;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod sse;
pub mod ws;
