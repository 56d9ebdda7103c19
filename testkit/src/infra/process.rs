//! The local-process flavour of [`super::Managed`]: nats-server and the chDB endpoint
//! started from `.tools`, faults by signals (SIGSTOP/SIGCONT, SIGTERM, SIGKILL). It
//! is the default backend and the only one for the TLS and secured instances and for
//! the shared processes of `cargo xtask up`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::{self, CLICKHOUSE, DATABASE, NATS, READY_TIMEOUT};
use localenv::net::{free_port, wait_until};
use localenv::process::Recorded;

use super::{Instance, Kind};
use crate::endpoints::{Endpoints, HOW_TO_START};
use crate::pki::{TestPki, https_request};

const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A NATS or ClickHouse process under a test's control.
#[derive(Debug)]
pub(super) struct Local {
    kind: Kind,
    port: u16,
    process: Recorded,
    /// Set for private instances: their scratch directory, removed on drop
    /// together with the process.
    scratch: Option<PathBuf>,
    readiness: Readiness,
}

/// How a process shows that it serves.
#[derive(Debug, Clone)]
enum Readiness {
    /// The plain probes of `localenv` (NATS JetStream info, ClickHouse `/ping`).
    Plain,
    /// ClickHouse over TLS: `/ping` and `SELECT 1` with this client configuration.
    Https(Arc<rustls::ClientConfig>),
    /// nats-server's log says `Server is ready` (its clients must authenticate in ways
    /// the plain probe cannot).
    LogLine,
}

impl Local {
    pub(super) fn private_clickhouse() -> anyhow::Result<Local> {
        let layout = Layout::workspace();
        let scratch = scratch_dir("clickhouse")?;
        let port = free_port()?;
        let argv = local::chdb_argv(&layout, port, &scratch.join("data"))?;
        let managed = Local::spawn_private(Kind::ClickHouse, port, argv, scratch)?;
        local::create_database(port, DATABASE)?;
        Ok(managed)
    }

    pub(super) fn private_clickhouse_tls(pki: &TestPki) -> anyhow::Result<Local> {
        let layout = Layout::workspace();
        let scratch = scratch_dir("clickhouse-tls")?;
        let port = free_port()?;
        let mut argv = local::chdb_argv(&layout, port, &scratch.join("data"))?;
        argv.extend([
            "--tls-cert".into(),
            pki.server.cert.clone().into(),
            "--tls-key".into(),
            pki.server.key.clone().into(),
        ]);
        let probe = Arc::new(pki.client_config(Some(&pki.client))?);
        let log = scratch.join(format!("{CLICKHOUSE}.log"));
        let process = Recorded::spawn(CLICKHOUSE, argv, &scratch, &log)?;
        let managed = Local {
            kind: Kind::ClickHouse,
            port,
            process,
            scratch: Some(scratch),
            readiness: Readiness::Https(Arc::clone(&probe)),
        };
        managed.wait_ready()?;
        let (status, body) = https_request(
            port,
            &probe,
            "POST",
            "/",
            &format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"),
        )
        .context("creating the database over TLS")?;
        if status != 200 {
            bail!("creating database {DATABASE} failed: {}", body.trim());
        }
        Ok(managed)
    }

    pub(super) fn require_client_certificates(&mut self, pki: &TestPki) -> anyhow::Result<()> {
        if !matches!(self.readiness, Readiness::Https(_)) {
            bail!("only a ClickHouse serving TLS can require client certificates");
        }
        self.process.stop(STOP_TIMEOUT)?;
        self.process
            .argv
            .extend(["--tls-client-ca".into(), pki.ca.clone().into()]);
        self.start()
    }

    pub(super) fn private_nats_secured(config: &str) -> anyhow::Result<Local> {
        let (scratch, port, argv) = nats_with_config_file(config)?;
        let log = scratch.join(format!("{NATS}.log"));
        let process = Recorded::spawn(NATS, argv, &scratch, &log)?;
        let managed = Local {
            kind: Kind::Nats,
            port,
            process,
            scratch: Some(scratch),
            readiness: Readiness::LogLine,
        };
        managed.wait_ready()?;
        Ok(managed)
    }

    pub(super) fn private_nats() -> anyhow::Result<Local> {
        let layout = Layout::workspace();
        let scratch = scratch_dir("nats")?;
        let port = free_port()?;
        let argv = local::nats_argv(&layout, port, &scratch.join("store"))?;
        Local::spawn_private(Kind::Nats, port, argv, scratch)
    }

    pub(super) fn private_nats_with_config(config: &str) -> anyhow::Result<Local> {
        let (scratch, port, argv) = nats_with_config_file(config)?;
        Local::spawn_private(Kind::Nats, port, argv, scratch)
    }

    fn spawn_private(
        kind: Kind,
        port: u16,
        argv: Vec<OsString>,
        scratch: PathBuf,
    ) -> anyhow::Result<Local> {
        let log = scratch.join(format!("{}.log", kind.name()));
        let process = Recorded::spawn(kind.name(), argv, &scratch, &log)?;
        let managed = Local {
            kind,
            port,
            process,
            scratch: Some(scratch),
            readiness: Readiness::Plain,
        };
        managed.wait_ready()?;
        Ok(managed)
    }

    pub(super) fn shared(endpoints: &Endpoints, kind: Kind) -> anyhow::Result<Local> {
        let run_dir = endpoints.run_dir.clone().with_context(|| {
            format!("the endpoints were not started by `cargo xtask up`, so their processes cannot be controlled: {HOW_TO_START}")
        })?;
        let layout = Layout::workspace();
        let log = local::log_file(&layout, kind.name());
        let process = Recorded::find(kind.name(), &run_dir, &log)?
            .with_context(|| format!("{} is not running: {HOW_TO_START}", kind.name()))?;
        let port = match kind {
            Kind::Nats => endpoints.nats_port()?,
            Kind::ClickHouse => endpoints.clickhouse_port()?,
        };
        Ok(Local {
            kind,
            port,
            process,
            scratch: None,
            readiness: Readiness::Plain,
        })
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        match (&self.readiness, self.kind) {
            (Readiness::Plain, Kind::Nats) => local::wait_nats_ready(&self.process, self.port),
            (Readiness::Plain, Kind::ClickHouse) => {
                local::wait_clickhouse_ready(&self.process, self.port)
            }
            (Readiness::Https(config), _) => wait_until(
                "ClickHouse over TLS (/ping and SELECT 1)",
                READY_TIMEOUT,
                || {
                    self.ensure_alive()?;
                    let ping = https_request(self.port, config, "GET", "/ping", "")?;
                    let select = https_request(self.port, config, "POST", "/", "SELECT 1")?;
                    if ping != (200, "Ok.\n".to_owned()) || select != (200, "1\n".to_owned()) {
                        bail!("/ping answered {ping:?}, SELECT 1 answered {select:?}");
                    }
                    Ok(())
                },
            ),
            (Readiness::LogLine, _) => {
                wait_until("nats-server (Server is ready)", READY_TIMEOUT, || {
                    self.ensure_alive()?;
                    if !self.process.log_tail(200).contains("Server is ready") {
                        bail!("not ready yet");
                    }
                    Ok(())
                })
            }
        }
    }

    fn ensure_alive(&self) -> anyhow::Result<()> {
        if !self.process.is_alive() {
            bail!(
                "{} exited; its log ends with:\n{}",
                self.kind.name(),
                self.process.log_tail(20)
            );
        }
        Ok(())
    }
}

impl Instance for Local {
    fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.process.pid)
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn url(&self) -> String {
        match (self.kind, &self.readiness) {
            (Kind::ClickHouse, Readiness::Https(_)) => format!("https://127.0.0.1:{}", self.port),
            (kind, _) => kind.loopback_url(self.port),
        }
    }

    fn freeze(&self) -> anyhow::Result<()> {
        self.process.freeze()
    }

    fn resume(&self) -> anyhow::Result<()> {
        self.process.resume()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.process.stop(STOP_TIMEOUT)
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    fn start(&mut self) -> anyhow::Result<()> {
        if self.process.is_alive() {
            bail!("{} is already running", self.kind.name());
        }
        self.process.restart()?;
        self.wait_ready()
    }

    fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(scratch) = self.scratch.take() {
            let _ = self.process.kill();
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// A private nats-server's scratch directory, port and command line, with `config`
/// written to its configuration file (the port, JetStream and store flags win).
fn nats_with_config_file(config: &str) -> anyhow::Result<(PathBuf, u16, Vec<std::ffi::OsString>)> {
    let scratch = scratch_dir("nats")?;
    let port = free_port()?;
    let file = scratch.join("nats.conf");
    std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
    let mut argv = local::nats_argv(&Layout::workspace(), port, &scratch.join("store"))?;
    argv.push("--config".into());
    argv.push(file.into());
    Ok((scratch, port, argv))
}

pub(crate) fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Layout::workspace()
        .tools_dir()
        .join("scratch")
        .join(format!(
            "{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
