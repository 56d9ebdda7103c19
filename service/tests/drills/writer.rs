//! The writer binary as a child process that a drill can kill and restart,
//! and the metrics it served, summed over every incarnation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use testkit::localenv::{net, process};
use tokio::process::{Child, Command};

/// One run of `ponix-writer`. Its output is appended to the drill's log, so that the
/// log covers every incarnation.
pub struct Writer {
    child: Child,
    pid: u32,
    pub http_port: u16,
    log: PathBuf,
    /// The last `/metrics` scrape of this incarnation.
    last_scrape: Metrics,
}

impl Writer {
    /// Starts the writer with exactly `vars` as its `PONIX_*` environment (the HTTP
    /// address is added), without waiting for anything.
    pub fn spawn(vars: &[(String, String)], log: &PathBuf) -> anyhow::Result<Writer> {
        let http_port = net::free_port()?;
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_ponix-writer"));
        for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("PONIX_")) {
            command.env_remove(key);
        }
        command.envs(vars.iter().map(|(k, v)| (k, v)));
        command.env("PONIX_HTTP_ADDR", format!("127.0.0.1:{http_port}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting ponix-writer")?;
        let pid = child.id().context("the writer exited at once")?;
        Ok(Writer {
            child,
            pid,
            http_port,
            log: log.clone(),
            last_scrape: Metrics::default(),
        })
    }

    /// Starts the writer and waits until `/readyz` answers 200.
    pub async fn start(vars: &[(String, String)], log: &PathBuf) -> anyhow::Result<Writer> {
        let mut writer = Writer::spawn(vars, log)?;
        writer.wait_ready().await?;
        Ok(writer)
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        crate::support::writer::wait_until_ready(
            &mut self.child,
            self.http_port,
            &self.log,
            Duration::from_secs(90),
        )
        .await
    }

    /// `/readyz`: the status and body, or `None` while it does not answer.
    pub fn readyz(&self) -> Option<(u16, String)> {
        net::http_get(self.http_port, "/readyz")
            .ok()
            .map(|r| (r.status, r.body))
    }

    /// Scrapes `/metrics` and keeps the result as this incarnation's latest.
    pub fn scrape(&mut self) -> anyhow::Result<&Metrics> {
        let body = net::http_get(self.http_port, "/metrics")
            .with_context(|| format!("scraping the writer's /metrics (pid {})", self.pid))?
            .body;
        self.last_scrape = Metrics::parse(&body);
        Ok(&self.last_scrape)
    }

    /// Scrapes, but keeps the previous scrape if the writer does not answer.
    pub fn scrape_or_keep(&mut self) -> &Metrics {
        if let Ok(response) = net::http_get(self.http_port, "/metrics") {
            self.last_scrape = Metrics::parse(&response.body);
        }
        &self.last_scrape
    }

    /// SIGKILL, as a crash would; returns the metrics last scraped from it.
    pub async fn kill(mut self) -> anyhow::Result<Metrics> {
        self.child.start_kill().context("killing the writer")?;
        self.child.wait().await?;
        Ok(self.last_scrape)
    }

    /// SIGTERM, then the exit status (the writer must exit within `timeout`), and the
    /// metrics scraped just before.
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Metrics)> {
        self.scrape_or_keep();
        process::terminate(self.pid)?;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok((status?, self.last_scrape)),
            Err(_) => bail!(
                "ponix-writer did not exit within {timeout:?} of SIGTERM:\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// `VmHWM` from /proc/<pid>/status: the peak resident set size, in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM line in /proc/<pid>/status")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log, lines)
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
