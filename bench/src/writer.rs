//! The writer binary under measurement: started as a child process, watched through
//! `/readyz` and its consumer's backlog; its CPU time and peak RSS come from the
//! kernel through localenv's [`WriterProcess`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use localenv::writer::{Log, WriterProcess};
use ponix_writer::sample::Payload;
use tokio::time::Instant;

use crate::clickhouse::Tables;
use crate::jetstream::Nats;
use crate::measure::{PHASE_DEADLINE, Progress, Rate, thousands};

/// How often the drain phase asks NATS for the consumer's backlog.
const BACKLOG_POLL: Duration = Duration::from_millis(50);
/// How often the latency phase looks for new rows. A row's latency is measured up to
/// the poll that first returned it, so it is overstated by up to this much.
pub const VISIBILITY_POLL: Duration = Duration::from_millis(20);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the kernel accounted to the writer process over its life.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_bytes: u64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = self.peak_rss_bytes as f64 / (1024.0 * 1024.0);
        write!(f, "{:.1} s, {mib:.0} MiB", self.cpu.as_secs_f64())
    }
}

pub struct Drain {
    /// Start of the process until `/readyz` answered 200.
    pub ready: Duration,
    /// Ready until nothing was pending or unacknowledged.
    pub rate: Rate,
    pub usage: Usage,
    pub log: PathBuf,
}

pub struct Latency {
    pub published: u64,
    /// Publishes per second actually achieved.
    pub publish_rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub usage: Usage,
}

/// Starts the writer on the published backlog and times it until the consumer has
/// nothing pending or awaiting an ack (a message is acked only after its row
/// committed, so by then every row is stored).
pub async fn drain(
    binary: &Path,
    out_dir: &Path,
    nats: &Nats,
    messages: u64,
) -> anyhow::Result<Drain> {
    let log = out_dir.join("writer-drain.log");
    let mut writer = spawn(binary, &log)?;
    let ready = writer.wait_ready(READY_TIMEOUT)?;
    let started = Instant::now();
    let mut progress = Progress::start();
    loop {
        let (pending, ack_pending) = nats.backlog().await?;
        if pending == 0 && ack_pending == 0 {
            break;
        }
        require_running(&mut writer)?;
        if started.elapsed() > PHASE_DEADLINE {
            bail!(
                "the writer did not drain {messages} messages within {PHASE_DEADLINE:?} ({pending} pending, {ack_pending} unacknowledged); see {}",
                log.display()
            );
        }
        if progress.due() {
            println!(
                "  {} left ({:.0} rows/s so far)",
                thousands(pending + ack_pending),
                (messages - pending - ack_pending) as f64 / started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(BACKLOG_POLL).await;
    }
    let rate = Rate::new(messages, started.elapsed());
    let usage = terminate(&mut writer)?;
    Ok(Drain {
        ready,
        rate,
        usage,
        log,
    })
}

/// Starts a writer with nothing to do, publishes at `rate` per second for
/// `duration`, and measures for every envelope the time from its publish until a
/// query first returns its row.
#[allow(clippy::too_many_arguments)]
pub async fn latency(
    binary: &Path,
    out_dir: &Path,
    nats: &Nats,
    tables: &Tables,
    payload: Payload,
    backlog: u64,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let log = out_dir.join("writer-latency.log");
    let mut writer = spawn(binary, &log)?;
    writer.wait_ready(READY_TIMEOUT)?;

    let expected = rate.saturating_mul(duration.as_secs());
    let publishing_failed = Arc::new(AtomicBool::new(false));
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let publish_started = Instant::now();
    let publisher = {
        let failed = Arc::clone(&publishing_failed);
        let sent = &mut sent;
        async move {
            let result = nats
                .publish_paced(payload, backlog, rate, duration, |sequence, at| {
                    sent.push((sequence, at))
                })
                .await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        }
    };
    // The backlog used sequences 1..=backlog; the paced envelopes come after.
    let poller = async {
        let mut seen: HashMap<u64, Instant> =
            HashMap::with_capacity(usize::try_from(expected).unwrap_or(0));
        let mut floor = backlog;
        let mut ticker = tokio::time::interval(VISIBILITY_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        while (seen.len() as u64) < expected {
            ticker.tick().await;
            if publishing_failed.load(Ordering::Relaxed) {
                break;
            }
            if started.elapsed() > duration + PHASE_DEADLINE {
                bail!(
                    "only {} of {expected} rows became visible; see {}",
                    seen.len(),
                    log.display()
                );
            }
            let sequences = tables.sequences_above(floor).await?;
            let now = Instant::now();
            for sequence in sequences {
                seen.entry(sequence).or_insert(now);
            }
            while seen.contains_key(&(floor + 1)) {
                floor += 1;
            }
        }
        anyhow::Ok(seen)
    };
    let (published, seen) = tokio::join!(publisher, poller);
    let published = published?;
    let publish_rate = published as f64 / publish_started.elapsed().as_secs_f64().max(1e-9);
    let seen = seen?;
    let usage = terminate(&mut writer)?;

    let mut latencies: Vec<Duration> = Vec::with_capacity(sent.len());
    for (sequence, at) in &sent {
        let visible = seen.get(sequence).with_context(|| {
            format!("the row of stream sequence {sequence} never became visible")
        })?;
        latencies.push(visible.saturating_duration_since(*at));
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    if latencies.is_empty() {
        bail!("nothing was published in the latency phase");
    }
    Ok(Latency {
        published,
        publish_rate,
        p50: percentile(0.50),
        p99: percentile(0.99),
        max: *latencies.last().expect("non-empty"),
        usage,
    })
}

/// Starts the writer with this process's `PONIX_*` environment (the bench's
/// configuration), and migrations off: they ran before the bench, and goose's memory
/// would count in the writer's peak RSS.
fn spawn(binary: &Path, log: &Path) -> anyhow::Result<WriterProcess> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key.starts_with("PONIX_"))
        .collect();
    vars.push(("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED".into(), "false".into()));
    WriterProcess::spawn(binary, &vars, log, Log::Truncate)
}

/// Fails with the end of the log if the writer has exited.
fn require_running(writer: &mut WriterProcess) -> anyhow::Result<()> {
    if let Some(status) = writer.try_exit()? {
        bail!(
            "the writer exited ({status}) during the bench; its log ends with:\n{}",
            writer.log_tail(30)
        );
    }
    Ok(())
}

/// SIGTERM, then what the kernel accounted to the writer (it must exit successfully).
fn terminate(writer: &mut WriterProcess) -> anyhow::Result<Usage> {
    let status = writer.terminate(EXIT_TIMEOUT)?;
    if !status.success() {
        bail!(
            "the writer exited ({status}) after SIGTERM; its log ends with:\n{}",
            writer.log_tail(30)
        );
    }
    let usage = writer.usage().context("the writer has exited")?;
    Ok(Usage {
        cpu: usage
            .cpu
            .context("the writer's CPU time (the bench reads it from Linux's /proc)")?,
        peak_rss_bytes: usage.peak_rss_bytes.unwrap_or(0),
    })
}
