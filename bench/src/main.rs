//! `ponix-bench`: the end-to-end benchmark that `cargo xtask bench` builds (release)
//! and runs against a fresh local NATS and ClickHouse. It is not a test: it asserts
//! nothing about time, only that every row arrived (a bench that lost rows would
//! report a rate for work it did not do).
//!
//! One run, one data set: envelope `i` is [`sample::envelope`]`(payload, i)`, so the
//! phases below measure identical rows.
//!
//! 1. **publish** N envelopes to the stream (the backlog).
//! 2. **JetStream ceiling**: a consumer that fetches and acks the backlog the way the
//!    writer does (same batch size, byte limit and ack strategy) and inserts nothing.
//! 3. **ClickHouse ceiling**: the same N rows, built in memory beforehand, inserted
//!    through the writer's own [`Store`] in batches of the writer's batch size and
//!    with its insert concurrency, into a scratch copy of the table. No NATS.
//! 4. **drain**: the writer binary started on the backlog; time from ready until the
//!    consumer has nothing pending or unacknowledged, then its CPU time and peak RSS
//!    (read from its exited, not yet reaped process after SIGTERM). The table must then hold exactly N rows.
//! 5. **latency**: the table emptied, a new writer, envelopes published at a fixed
//!    rate; a poller sees each row appear. Latency is publish → first poll that saw it.
//!
//! The writer and both ceilings read the same `PONIX_*` configuration, so a knob set
//! in the environment (`PONIX_NATS_BATCH_SIZE=5000 cargo xtask bench`) changes the
//! writer and the ceilings alike.

mod clickhouse;
mod jetstream;
mod measure;
mod report;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ponix_writer::config::Config;
use ponix_writer::sample::Payload;

use crate::measure::{CpuClocks, thousands};
use crate::report::Report;

/// Command-line arguments; `cargo xtask bench` passes them.
struct Args {
    messages: u64,
    writer: PathBuf,
    out_dir: PathBuf,
    payload: Payload,
    latency_rate: u64,
    latency_seconds: u64,
    commit: String,
    nats_pid: Option<u32>,
    clickhouse_pid: Option<u32>,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut args = Args {
            messages: 1_000_000,
            writer: PathBuf::new(),
            out_dir: PathBuf::from("target/bench"),
            payload: Payload::Medium,
            latency_rate: 10_000,
            latency_seconds: 30,
            commit: "unknown".to_owned(),
            nats_pid: None,
            clickhouse_pid: None,
        };
        let mut iter = std::env::args().skip(1);
        while let Some(flag) = iter.next() {
            let mut value = || iter.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--messages" => args.messages = number(&flag, &value()?)?,
                "--writer" => args.writer = PathBuf::from(value()?),
                "--out-dir" => args.out_dir = PathBuf::from(value()?),
                "--latency-rate" => args.latency_rate = number(&flag, &value()?)?,
                "--latency-seconds" => args.latency_seconds = number(&flag, &value()?)?,
                "--commit" => args.commit = value()?,
                "--nats-pid" => args.nats_pid = Some(u32::try_from(number(&flag, &value()?)?)?),
                "--clickhouse-pid" => {
                    args.clickhouse_pid = Some(u32::try_from(number(&flag, &value()?)?)?)
                }
                "--payload" => {
                    let name = value()?;
                    args.payload = Payload::ALL
                        .into_iter()
                        .find(|p| p.name() == name)
                        .with_context(|| {
                            format!("--payload {name:?}: expected small, medium or large")
                        })?;
                }
                other => {
                    bail!("unknown argument {other:?} (ponix-bench is run by `cargo xtask bench`)")
                }
            }
        }
        if !args.writer.is_file() {
            bail!(
                "--writer {:?} is not a file: build it with `cargo build --release -p ponix-writer` (or run `cargo xtask bench`)",
                args.writer
            );
        }
        if args.messages == 0 || args.latency_rate == 0 || args.latency_seconds == 0 {
            bail!("--messages, --latency-rate and --latency-seconds must be at least 1");
        }
        Ok(args)
    }
}

fn number(flag: &str, text: &str) -> anyhow::Result<u64> {
    text.replace(['_', ','], "")
        .parse()
        .with_context(|| format!("{flag} {text:?}: expected a whole number"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    // The writer's own configuration: the ceilings use its batch size, byte limit and
    // insert settings, so that they measure the same work.
    let config = Config::from_env().map_err(|error| anyhow::anyhow!("{error}"))?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let mut report = Report::new(&args, &config);
    println!(
        "bench: {} {} envelopes ({} bytes each on the wire), batch size {}, batch wait {:?}",
        thousands(args.messages),
        args.payload.name(),
        report.envelope_bytes,
        config.nats.batch_size,
        config.nats.batch_wait,
    );

    phase("migrations (goose up)");
    let dsn = ponix_writer::migrate::goose_dsn(&config.migrations, &config.clickhouse);
    ponix_writer::migrate::run(
        &config.migrations,
        &config.clickhouse.table,
        &dsn,
        &[config.clickhouse.password.expose()],
    )
    .await
    .context("running the migrations before the bench")?;
    let store = clickhouse::Tables::new(&config.clickhouse);
    store.require_empty().await?;

    let nats = jetstream::Nats::connect(
        &config.nats,
        &ponix_writer::store::Store::new(&config.clickhouse),
    )
    .await?;

    phase(&format!("publish {} envelopes", thousands(args.messages)));
    report.publish = Some(nats.publish_backlog(args.payload, args.messages).await?);

    let clocks = CpuClocks::new(args.nats_pid, args.clickhouse_pid);
    phase("JetStream ceiling: fetch and ack with no insert");
    let before = clocks.read();
    report.consume_ceiling = Some(nats.consume_ceiling(args.messages).await?);
    report.cpu.push(("JetStream ceiling", clocks.since(before)));

    phase("ClickHouse ceiling: the same rows through the writer's Store, no NATS");
    let (rate, spent) = store
        .insert_ceiling(args.payload, args.messages, config.nats.batch_size, &clocks)
        .await?;
    report.insert_ceiling = Some(rate);
    report.cpu.push(("ClickHouse ceiling", spent));

    phase("writer: drain the backlog");
    let before = clocks.read();
    let drain = writer::drain(&args.writer, &args.out_dir, &nats, args.messages).await?;
    report.cpu.push(("drain", clocks.since(before)));
    let stored = store.count_final().await?;
    if stored != args.messages {
        bail!(
            "the writer drained the consumer but the table holds {stored} rows (FINAL), not {}: see {}",
            args.messages,
            drain.log.display()
        );
    }
    report.drain = Some(drain);

    phase(&format!(
        "latency: {}/s for {} s into an emptied table",
        thousands(args.latency_rate),
        args.latency_seconds
    ));
    store.truncate().await?;
    report.latency = Some(
        writer::latency(
            &args.writer,
            &args.out_dir,
            &nats,
            &store,
            args.payload,
            args.messages,
            args.latency_rate,
            Duration::from_secs(args.latency_seconds),
        )
        .await?,
    );

    let dead_letters = nats.dead_letters().await?;
    if dead_letters != 0 {
        bail!("{dead_letters} envelopes were dead-lettered; every bench envelope is valid");
    }

    println!();
    print!("{}", report.table());
    let written = report.write_json(&args.out_dir)?;
    println!("\nbench: results in {}", written.display());
    println!("bench summary: {}", report.summary());
    Ok(())
}

fn phase(what: &str) {
    println!("bench: {what} ...");
}
