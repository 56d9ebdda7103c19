//! The writer binary as a child process, configured only through its
//! environment, with its output in `.tools/logs/<name>.log`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use testkit::Endpoints;
use testkit::localenv::{Layout, net};
use tokio::process::{Child, Command};

use super::wait_for;

/// `ponix-writer` set up for `endpoints`, its HTTP endpoint on `http_port` (0: any),
/// and no other `PONIX_*` variable: nothing leaks in from the developer's shell.
pub fn writer_command(endpoints: &Endpoints, http_port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ponix-writer"));
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("PONIX_")) {
        command.env_remove(key);
    }
    command
        .env("PONIX_NATS_URL", &endpoints.nats_url)
        .env("PONIX_CLICKHOUSE_URL", &endpoints.clickhouse_url)
        .env("PONIX_CLICKHOUSE_USERNAME", &endpoints.username)
        .env("PONIX_CLICKHOUSE_PASSWORD", &endpoints.password)
        .env(
            "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
            &endpoints.goose_binary,
        )
        .env("PONIX_CLICKHOUSE_MIGRATIONS_DIR", &endpoints.migrations_dir)
        .env("PONIX_HTTP_ADDR", format!("127.0.0.1:{http_port}"));
    command
}

pub struct WriterProcess {
    child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

impl WriterProcess {
    /// Starts `ponix-writer` against `endpoints`, with `vars` on top (they win),
    /// and waits until `/readyz` answers 200.
    pub async fn start(
        name: &str,
        endpoints: &Endpoints,
        vars: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut writer = Self::spawn(name, endpoints, vars)?;
        writer.wait_ready().await?;
        Ok(writer)
    }

    /// [`WriterProcess::start`] without waiting for anything.
    pub fn spawn(
        name: &str,
        endpoints: &Endpoints,
        vars: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let http_port = net::free_port()?;
        let logs = Layout::workspace().logs_dir();
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;

        let mut command = writer_command(endpoints, http_port);
        command.env("PONIX_LOG_LEVEL", "info,ponix_writer=debug");
        for (key, value) in vars {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting ponix-writer")?;
        Ok(WriterProcess {
            child,
            http_port,
            log,
        })
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        wait_until_ready(
            &mut self.child,
            self.http_port,
            &self.log,
            Duration::from_secs(60),
        )
        .await
    }

    /// SIGTERM, then the exit status (the writer must exit within `timeout`).
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().context("the writer already exited")?;
        testkit::localenv::process::terminate(pid)?;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "ponix-writer did not exit within {timeout:?} of SIGTERM:\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// Waits for the writer to exit by itself, for at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "ponix-writer did not exit within {timeout:?}:\n{}",
                self.log_tail(40)
            ),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        testkit::localenv::process::log_tail(&self.log, lines)
    }

    /// `/readyz`: the status and body.
    pub fn readyz(&self) -> anyhow::Result<(u16, String)> {
        let response = net::http_get(self.http_port, "/readyz")?;
        Ok((response.status, response.body))
    }

    /// A scrape of `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(net::http_get(self.http_port, "/metrics")?.body)
    }
}

/// Waits until the writer's `/readyz` answers 200. Fails at once if the process exits
/// first, and with the end of its log if it is not ready within `timeout`.
pub async fn wait_until_ready(
    child: &mut Child,
    http_port: u16,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let result = wait_for("ponix-writer /readyz", timeout, || {
        let exited = child.try_wait();
        async move {
            if let Some(status) = exited? {
                bail!("ponix-writer exited with {status} before it was ready");
            }
            Ok(match net::http_get(http_port, "/readyz") {
                Ok(response) if response.status == 200 => Ok(()),
                Ok(response) => Err(format!("{} {}", response.status, response.body.trim())),
                Err(err) => Err(err.to_string()),
            })
        }
    })
    .await;
    result.with_context(|| {
        format!(
            "the writer's log ends with:\n{}",
            testkit::localenv::process::log_tail(log, 40)
        )
    })
}
