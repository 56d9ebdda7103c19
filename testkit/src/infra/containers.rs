//! The testcontainers flavour of [`super::Managed`] (`PONIX_TEST_BACKEND=containers`):
//! the ClickHouse and NATS images of `testcontainers-modules`, with name and tag
//! from [`Images`], on a host port chosen here and mapped explicitly so that it
//! survives stop and start (the writer under test keeps its URL). Faults are the
//! container's: pause/unpause, stop/start, and `docker kill`.
//!
//! testcontainers is async, and its blocking runner would start a runtime inside
//! the tests' own: every call runs on this module's runtime, from a scoped thread,
//! so it works from plain threads and from any tokio test alike. The containers
//! carry the label `ponix.test=testkit-<pid>`; Drop removes them (panics included), and the
//! next run sweeps those of a killed binary.

use std::fmt;
use std::future::Future;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use localenv::local::{self, DATABASE, READY_TIMEOUT};
use localenv::net::{self, free_port, wait_until};
use testcontainers_modules::clickhouse::{CLICKHOUSE_PORT, ClickHouse};
use testcontainers_modules::nats::Nats;
use testcontainers_modules::testcontainers::core::ContainerPort;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
use tokio::io::AsyncReadExt;

use super::docker::{self, LABEL};
use super::images::{Images, split_reference};
use super::{Instance, Kind};

const NATS_PORT: u16 = 4222;
const NATS_CONFIG: &str = "/etc/ponix-test/nats.conf";
/// Seconds `docker stop` waits after SIGTERM before SIGKILL, as the local flavour's
/// stop timeout.
const STOP_TIMEOUT_SECS: i32 = 15;

pub(super) struct Container {
    kind: Kind,
    port: u16,
    id: String,
    image: String,
    handle: Option<Handle>,
}

/// The modules' images are distinct types; the faults are the same for both.
enum Handle {
    ClickHouse(ContainerAsync<ClickHouse>),
    Nats(ContainerAsync<Nats>),
}

macro_rules! on_handle {
    ($handle:expr, $container:ident => $body:expr) => {
        match $handle {
            Handle::ClickHouse($container) => $body,
            Handle::Nats($container) => $body,
        }
    };
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("id", &self.id)
            .field("image", &self.image)
            .finish()
    }
}

impl Container {
    /// Starts a private instance of `kind` and waits until it serves (for
    /// ClickHouse: the database `ponix` exists, user `default` without password).
    pub(super) fn start(kind: Kind, nats_config: Option<&str>) -> anyhow::Result<Container> {
        docker::sweep_stale();
        let images = Images::resolve()?;
        let port = free_port()?;
        let owner = docker::owner();
        let (image, handle) = match kind {
            Kind::ClickHouse => {
                let (name, tag) = split_reference(&images.clickhouse)?;
                let nofile = i64::try_from(docker::clickhouse_nofile()).unwrap_or(i64::MAX);
                let request = ClickHouse::default()
                    .with_name(name)
                    .with_tag(tag)
                    .with_mapped_port(port, CLICKHOUSE_PORT)
                    .with_env_var("CLICKHOUSE_DB", DATABASE)
                    // The official image otherwise locks `default` (no password) to
                    // localhost; the tests connect as it, as to the local chDB.
                    .with_env_var("CLICKHOUSE_SKIP_USER_SETUP", "1")
                    .with_ulimit("nofile", nofile, Some(nofile))
                    .with_label(LABEL, owner)
                    .with_startup_timeout(READY_TIMEOUT);
                let container =
                    block(request.start()).with_context(|| starting(kind, &images.clickhouse))?;
                (images.clickhouse, Handle::ClickHouse(container))
            }
            Kind::Nats => {
                let (name, tag) = split_reference(&images.nats)?;
                let mut cmd = vec!["-js", "-sd", "/data", "-m", "8222"];
                let mut request = Nats::default()
                    .with_name(name)
                    .with_tag(tag)
                    .with_mapped_port(port, ContainerPort::Tcp(NATS_PORT))
                    .with_label(LABEL, owner)
                    .with_startup_timeout(READY_TIMEOUT);
                if let Some(config) = nats_config {
                    // Copied in rather than bind-mounted: the Docker host need not
                    // see this machine's files.
                    request = request.with_copy_to(NATS_CONFIG, config.as_bytes().to_vec());
                    cmd.extend(["--config", NATS_CONFIG]);
                }
                let container = block(request.with_cmd(cmd).start())
                    .with_context(|| starting(kind, &images.nats))?;
                (images.nats, Handle::Nats(container))
            }
        };
        let id = on_handle!(&handle, c => c.id().to_owned());
        let container = Container {
            kind,
            port,
            id,
            image,
            handle: Some(handle),
        };
        container.wait_ready().with_context(|| {
            format!(
                "{} in container {} never served; its log ends with:\n{}",
                kind.name(),
                container.id,
                container.log_tail(30)
            )
        })?;
        if kind == Kind::ClickHouse {
            local::create_database(port, DATABASE)?;
        }
        Ok(container)
    }

    fn handle(&self) -> anyhow::Result<&Handle> {
        self.handle.as_ref().context("the container was removed")
    }

    /// The probes of the local flavour, against the mapped port.
    fn wait_ready(&self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Nats => wait_until(
                "nats-server (JetStream account info)",
                READY_TIMEOUT,
                || net::nats_jetstream_ready(self.port),
            ),
            Kind::ClickHouse => wait_until(
                "ClickHouse (/ping, SELECT 1 and the database)",
                READY_TIMEOUT,
                || {
                    local::clickhouse_ready(self.port)?;
                    database_exists(self.port)
                },
            ),
        }
    }
}

/// Once the database was created, a restarted ClickHouse must still have it.
fn database_exists(port: u16) -> anyhow::Result<()> {
    let exists = net::http_post(port, "/", &format!("EXISTS DATABASE {DATABASE}"))?;
    if exists.status == 200 && exists.body.trim() == "0" {
        // Not yet created (first start): creating it is the caller's step.
        return Ok(());
    }
    if exists.status != 200 || exists.body.trim() != "1" {
        bail!(
            "EXISTS DATABASE answered {} {:?}",
            exists.status,
            exists.body
        );
    }
    Ok(())
}

fn starting(kind: Kind, image: &str) -> String {
    format!(
        "starting a {} container from {image} (is Docker running, and the image there? `docker images`; \
         PONIX_TEST_{}_IMAGE chooses another)",
        kind.name(),
        match kind {
            Kind::Nats => "NATS",
            Kind::ClickHouse => "CLICKHOUSE",
        }
    )
}

impl Instance for Container {
    fn pid(&self) -> anyhow::Result<u32> {
        docker::container_pid(&self.id)
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn url(&self) -> String {
        self.kind.loopback_url(self.port)
    }

    fn freeze(&self) -> anyhow::Result<()> {
        on_handle!(self.handle()?, c => block(c.pause())).context("pausing the container")
    }

    fn resume(&self) -> anyhow::Result<()> {
        on_handle!(self.handle()?, c => block(c.unpause())).context("unpausing the container")
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        on_handle!(self.handle()?, c => block(c.stop_with_timeout(Some(STOP_TIMEOUT_SECS))))
            .context("stopping the container")
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        // testcontainers has no kill: the CLI sends SIGKILL, as a crash would.
        docker::docker(&["kill", "--signal", "KILL", &self.id])?;
        Ok(())
    }

    fn start(&mut self) -> anyhow::Result<()> {
        on_handle!(self.handle()?, c => block(c.start())).context("starting the container")?;
        self.wait_ready()
    }

    fn log_tail(&self, lines: usize) -> String {
        let Ok(handle) = self.handle() else {
            return String::new();
        };
        // nats-server logs to stderr, the chDB endpoint to both.
        let logs = on_handle!(handle, c => block(async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let _ = c.stdout(false).read_to_end(&mut out).await;
            let _ = c.stderr(false).read_to_end(&mut err).await;
            out.extend(err);
            out
        }));
        let text = String::from_utf8_lossy(&logs);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // rm() also removes a paused container (the force flag).
            let removed = on_handle!(handle, c => block(c.rm()));
            if let Err(err) = removed {
                eprintln!(
                    "could not remove container {} ({err:#}); remove it with `docker rm -f -v {}`",
                    self.id, self.id
                );
            }
        }
    }
}

/// Runs `future` to completion on the module's runtime, from a thread that is in no
/// runtime (so that callers inside a tokio test may block here).
fn block<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-containers")
            .enable_all()
            .build()
            .expect("building testkit's container runtime")
    });
    std::thread::scope(
        |scope| match scope.spawn(|| runtime.block_on(future)).join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        },
    )
}
