//! The writer binary as a child process that a drill can kill and restart,
//! and the metrics it served, summed over every incarnation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use testkit::writer::{self, Log, WriterProcess};

/// How long a drill's writer may take to become ready: its migrations run first,
/// on a machine the drill is loading.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One incarnation of `ponix-writer`, with the last metrics it served. Its output
/// is appended to the drill's log, so that the log covers every incarnation.
pub struct Writer {
    process: WriterProcess,
    pub http_port: u16,
    /// The last `/metrics` scrape of this incarnation.
    last_scrape: Metrics,
}

impl Writer {
    /// Starts the writer with exactly `vars` as its `PONIX_*` environment (the HTTP
    /// address is added), without waiting for anything.
    pub fn spawn(vars: &[(String, String)], log: &Path) -> anyhow::Result<Writer> {
        let binary = Path::new(env!("CARGO_BIN_EXE_ponix-writer"));
        let process = WriterProcess::spawn(binary, vars, log, Log::Append)?;
        Ok(Writer {
            http_port: process.http_port(),
            process,
            last_scrape: Metrics::default(),
        })
    }

    /// Starts the writer and waits until `/readyz` answers 200.
    pub async fn start(vars: &[(String, String)], log: &Path) -> anyhow::Result<Writer> {
        let mut writer = Writer::spawn(vars, log)?;
        writer.wait_ready().await?;
        Ok(writer)
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        writer::wait_ready(&mut self.process, READY_TIMEOUT).await
    }

    /// `/readyz`: the status and body, or `None` while it does not answer.
    pub fn readyz(&self) -> Option<(u16, String)> {
        self.process.readyz().ok().map(|r| (r.status, r.body))
    }

    /// Scrapes `/metrics` and keeps the result as this incarnation's latest.
    pub fn scrape(&mut self) -> anyhow::Result<&Metrics> {
        self.last_scrape = Metrics::parse(&self.process.metrics()?);
        Ok(&self.last_scrape)
    }

    /// The raw `/metrics` text, for a failure's evidence.
    pub fn metrics_text(&self) -> String {
        self.process
            .metrics()
            .unwrap_or_else(|e| format!("/metrics failed: {e:#}"))
    }

    /// Scrapes, but keeps the previous scrape if the writer does not answer.
    pub fn scrape_or_keep(&mut self) -> &Metrics {
        if let Ok(body) = self.process.metrics() {
            self.last_scrape = Metrics::parse(&body);
        }
        &self.last_scrape
    }

    /// SIGKILL, as a crash would; returns the metrics last scraped from it.
    pub async fn kill(mut self) -> anyhow::Result<Metrics> {
        self.process.kill().context("killing the writer")?;
        Ok(self.last_scrape)
    }

    /// SIGTERM, then the exit status (the writer must exit within `timeout`), and the
    /// metrics scraped just before.
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Metrics)> {
        self.scrape_or_keep();
        let status = writer::terminate(&mut self.process, timeout).await?;
        Ok((status, self.last_scrape))
    }

    /// The peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&mut self) -> anyhow::Result<u64> {
        self.process
            .peak_rss_bytes()
            .map(|bytes| bytes / 1024)
            .context("no VmHWM line in /proc/<pid>/status")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Prometheus text, as `series → value` (`name` or `name{labels}`).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    series: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        Metrics { series }
    }

    /// The sum over every series of the metric `name` whose labels contain `label`
    /// (for example `reason="retryable"`; empty matches all).
    pub fn sum(&self, name: &str, label: &str) -> u64 {
        let total: f64 = self
            .series
            .iter()
            .filter(|(series, _)| {
                let (series_name, labels) = series.split_once('{').unwrap_or((series, ""));
                series_name == name && labels.contains(label)
            })
            .map(|(_, value)| *value)
            .sum();
        total as u64
    }

    /// Adds another incarnation's counters.
    pub fn add(&mut self, other: &Metrics) {
        for (series, value) in &other.series {
            *self.series.entry(series.clone()).or_default() += value;
        }
    }
}

/// Metric names (the writer's prefix and the encoder's `_total` suffix included).
pub mod names {
    pub const REDELIVERIES: &str = "ponix_writer_redeliveries_total";
    pub const NAKS: &str = "ponix_writer_naks_total";
    pub const INSERTS: &str = "ponix_writer_inserts_total";
    pub const DEAD_LETTERED: &str = "ponix_writer_dead_lettered_total";
    pub const ACK_FAILURES: &str = "ponix_writer_ack_failures_total";
    pub const INSERT_RETRIES: &str = "ponix_writer_insert_retries_total";
    pub const ROWS_INSERTED: &str = "ponix_writer_rows_inserted_total";
    pub const BATCHES_HELD: &str = "ponix_writer_batches_held";
    pub const SECONDS_SINCE_LAST_INSERT: &str = "ponix_writer_seconds_since_last_insert";
}
