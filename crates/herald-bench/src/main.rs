//! `herald-bench`: runs one benchmark scenario against a live Herald server and prints the
//! result as a table, or as JSON with `--json`. See the `herald_bench` library documentation
//! and `docs/benchmarks.md`.

use std::fmt::Display;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_bench::scenario::{
    docs_fanout, docs_put, hpfeeds_fanout, listen_fanout, listen_idle, mqtt_fanout, mqtt_idle,
    mqtt_publish, streams_append, ws_idle,
};
use serde::Serialize;

/// Load generator for Herald's benchmarks. Loopback targets only make sense: the scenarios
/// open thousands of connections and send as fast as the server answers.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
struct Cli {
    /// Print the result as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Also write the JSON result to this file (the table still goes to stdout).
    #[arg(long, global = true, value_name = "FILE")]
    json_out: Option<std::path::PathBuf>,
    /// Worker threads of the load generator's runtime. [default: one per CPU]
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Durable document PUTs from concurrent keep-alive clients: writes/s and latency.
    DocsPut(docs_put::Options),
    /// Change-to-WebSocket latency with many subscribers on one path.
    DocsFanout(docs_fanout::Options),
    /// Server RSS per idle WebSocket subscriber.
    WsIdle(ws_idle::Options),
    /// Durable event appends to IorioDB-compatible streams: events/s and latency.
    StreamsAppend(streams_append::Options),
    /// hpfeeds publish-to-subscriber fan-out: deliveries/s, loss and latency.
    HpfeedsFanout(hpfeeds_fanout::Options),
    /// MQTT publish-to-subscriber fan-out: deliveries/s, loss and latency.
    MqttFanout(mqtt_fanout::Options),
    /// MQTT QoS 1 publishes from many publishers: acknowledged publishes/s and ack latency.
    MqttPublish(mqtt_publish::Options),
    /// Broker RSS per idle, subscribed MQTT connection.
    MqttIdle(mqtt_idle::Options),
    /// Stream listen API (WebSocket or SSE) fan-out from MQTT publishers: deliveries/s, loss
    /// and latency.
    ListenFanout(listen_fanout::Options),
    /// Server RSS per idle stream listener (WebSocket or SSE).
    ListenIdle(listen_idle::Options),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("herald-bench");
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        match &cli.scenario {
            Scenario::DocsPut(o) => emit(&docs_put::run(o).await?, &cli),
            Scenario::DocsFanout(o) => emit(&docs_fanout::run(o).await?, &cli),
            Scenario::WsIdle(o) => emit(&ws_idle::run(o).await?, &cli),
            Scenario::StreamsAppend(o) => emit(&streams_append::run(o).await?, &cli),
            Scenario::HpfeedsFanout(o) => emit(&hpfeeds_fanout::run(o).await?, &cli),
            Scenario::MqttFanout(o) => emit(&mqtt_fanout::run(o).await?, &cli),
            Scenario::MqttPublish(o) => emit(&mqtt_publish::run(o).await?, &cli),
            Scenario::MqttIdle(o) => emit(&mqtt_idle::run(o).await?, &cli),
            Scenario::ListenFanout(o) => emit(&listen_fanout::run(o).await?, &cli),
            Scenario::ListenIdle(o) => emit(&listen_idle::run(o).await?, &cli),
        }
    })
}

fn emit(report: &(impl Serialize + Display), cli: &Cli) -> anyhow::Result<()> {
    let json = serde_json::to_string(report)?;
    if let Some(path) = &cli.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if cli.json {
        println!("{json}");
    } else {
        print!("{report}");
    }
    Ok(())
}
