//! The writer process for tests on a Tokio runtime.
//!
//! [`WriterProcess`] is localenv's, the one type every test, drill, the bench and
//! `cargo xtask dev` run the writer with. Its own waits block a thread; these poll
//! the same checks ([`WriterProcess::readiness`], [`WriterProcess::try_exit`]) on a
//! Tokio timer instead, so a test's publishers and fault injectors keep running
//! while it waits.

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

pub use localenv::writer::{Log, Readiness, Usage, WriterProcess};

use crate::Endpoints;

const POLL: Duration = Duration::from_millis(20);

/// The `PONIX_*` variables that point a writer at `endpoints` (its migrations
/// included); a test adds its own on top.
pub fn endpoint_vars(endpoints: &Endpoints) -> Vec<(String, String)> {
    [
        ("PONIX_NATS_URL", endpoints.nats_url.clone()),
        ("PONIX_CLICKHOUSE_URL", endpoints.clickhouse_url.clone()),
        ("PONIX_CLICKHOUSE_USERNAME", endpoints.username.clone()),
        ("PONIX_CLICKHOUSE_PASSWORD", endpoints.password.clone()),
        (
            "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
            endpoints.goose_binary.display().to_string(),
        ),
        (
            "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
            endpoints.migrations_dir.display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// Waits until `/readyz` answers 200; fails at once if the writer exits first.
pub async fn wait_ready(writer: &mut WriterProcess, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match writer.readiness()? {
            Readiness::Ready => return Ok(()),
            Readiness::NotYet(why) if Instant::now() >= deadline => {
                bail!("{}", writer.not_ready_error(timeout, &why))
            }
            Readiness::NotYet(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits for the writer to exit by itself, for at most `timeout`.
pub async fn wait_exit(
    writer: &mut WriterProcess,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = writer.try_exit()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("{}", writer.still_running_error(timeout));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// SIGTERM, then the exit status (the writer must exit within `timeout`).
pub async fn terminate(
    writer: &mut WriterProcess,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    writer.signal_terminate()?;
    wait_exit(writer, timeout)
        .await
        .context("ponix-writer did not stop after SIGTERM")
}
