//! RAII handles on ClickHouse and NATS instances, for tests and drills that
//! stop, freeze or restart them.
//!
//! A test that breaks its infrastructure should start a private instance
//! ([`Managed::private_clickhouse`], [`Managed::private_nats`]) so that tests
//! running beside it are not disturbed. The drills, which own the whole
//! environment, use private instances too; [`Managed::shared`] controls the
//! processes `cargo xtask up` started. The calls block briefly while they wait for
//! an instance to answer or to exit.
//!
//! `PONIX_TEST_BACKEND` chooses what a plain private instance is ([`Backend`]):
//! a local process (`local`, the default), a container started with testcontainers
//! (`containers`) or a service of its own `docker compose` project (`compose`). The
//! faults are those of the backend: signals, container pause/stop/kill, or the
//! compose commands. The TLS and secured instances and [`Managed::shared`] are
//! local processes on every backend: their tests need the `.tools` PKI files and
//! log lines of a process, and they exercise the writer's TLS, not the fault path.

mod compose;
mod containers;
mod docker;
mod images;
mod process;

use std::fmt;

use anyhow::bail;
use localenv::local::{CLICKHOUSE, NATS};

pub(crate) use process::scratch_dir;

use crate::endpoints::Endpoints;
use crate::pki::TestPki;

pub use docker::STALE_CONTAINERS_HINT;
pub use images::Images;

/// The environment variable that chooses the [`Backend`].
pub const BACKEND_VAR: &str = "PONIX_TEST_BACKEND";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nats,
    ClickHouse,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Nats => NATS,
            Kind::ClickHouse => CLICKHOUSE,
        }
    }

    /// The plain (non-TLS) URL of an instance of this kind published on loopback.
    pub(crate) fn loopback_url(self, port: u16) -> String {
        match self {
            Kind::Nats => format!("nats://127.0.0.1:{port}"),
            Kind::ClickHouse => format!("http://127.0.0.1:{port}"),
        }
    }
}

/// Where private instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// nats-server and the chDB endpoint from `.tools`, as processes of the test.
    #[default]
    Local,
    /// Docker containers started with testcontainers, one per instance.
    Containers,
    /// A `docker compose` project per instance, from `docker/compose.yaml`.
    Compose,
}

impl Backend {
    pub const CHOICES: &'static str = "local, containers or compose";

    /// The backend `PONIX_TEST_BACKEND` names; `local` when it is unset or empty.
    pub fn from_env() -> anyhow::Result<Backend> {
        Backend::parse(std::env::var(BACKEND_VAR).ok().as_deref())
    }

    pub fn parse(value: Option<&str>) -> anyhow::Result<Backend> {
        Ok(match value.map(str::trim) {
            None | Some("") | Some("local") => Backend::Local,
            Some("containers") => Backend::Containers,
            Some("compose") => Backend::Compose,
            Some(other) => {
                bail!(
                    "{BACKEND_VAR}={other:?} is not a backend: choose {}",
                    Backend::CHOICES
                )
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Containers => "containers",
            Backend::Compose => "compose",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What every flavour of instance does; [`Managed`] adds the guards.
trait Instance: fmt::Debug + Send + Sync {
    /// The serving process's pid on this host: it changes when the instance restarts.
    fn pid(&self) -> anyhow::Result<u32>;
    fn port(&self) -> u16;
    fn url(&self) -> String;
    fn freeze(&self) -> anyhow::Result<()>;
    fn resume(&self) -> anyhow::Result<()>;
    /// Graceful stop; the data is kept for [`Instance::start`].
    fn stop(&mut self) -> anyhow::Result<()>;
    /// SIGKILL, as a crash would.
    fn kill(&mut self) -> anyhow::Result<()>;
    /// Start again on the same port and data, and wait until it answers.
    fn start(&mut self) -> anyhow::Result<()>;
    fn log_tail(&self, lines: usize) -> String;
}

/// A NATS or ClickHouse instance under a test's control.
#[derive(Debug)]
pub struct Managed {
    kind: Kind,
    backend: Backend,
    instance: Flavour,
}

#[derive(Debug)]
enum Flavour {
    Process(process::Local),
    // Boxed: testcontainers' handle is several times the size of the others.
    Container(Box<containers::Container>),
    Compose(compose::Service),
}

impl Managed {
    fn new(kind: Kind, backend: Backend, instance: Flavour) -> Managed {
        Managed {
            kind,
            backend,
            instance,
        }
    }

    fn private(kind: Kind, nats_config: Option<&str>) -> anyhow::Result<Managed> {
        let backend = Backend::from_env()?;
        let instance = match (backend, kind, nats_config) {
            (Backend::Local, Kind::ClickHouse, _) => {
                Flavour::Process(process::Local::private_clickhouse()?)
            }
            (Backend::Local, Kind::Nats, None) => Flavour::Process(process::Local::private_nats()?),
            (Backend::Local, Kind::Nats, Some(config)) => {
                Flavour::Process(process::Local::private_nats_with_config(config)?)
            }
            (Backend::Containers, _, _) => {
                Flavour::Container(Box::new(containers::Container::start(kind, nats_config)?))
            }
            (Backend::Compose, _, _) => Flavour::Compose(compose::Service::up(kind, nats_config)?),
        };
        Ok(Managed::new(kind, backend, instance))
    }

    /// A ClickHouse of the test's own, on the [`Backend`] `PONIX_TEST_BACKEND` chooses:
    /// free port, empty data, database `ponix` created, user `default` without a
    /// password. Removed on drop.
    pub fn private_clickhouse() -> anyhow::Result<Managed> {
        Managed::private(Kind::ClickHouse, None)
    }

    /// [`Managed::private_clickhouse`] serving HTTPS with `pki`'s server certificate;
    /// [`Managed::url`] is then `https://127.0.0.1:PORT`. Its readiness probe trusts
    /// `pki`'s CA and presents its client certificate, so it also passes once
    /// [`Managed::require_client_certificates`] made them required. A local process
    /// on every backend.
    pub fn private_clickhouse_tls(pki: &TestPki) -> anyhow::Result<Managed> {
        let local = process::Local::private_clickhouse_tls(pki)?;
        Ok(Managed::new(
            Kind::ClickHouse,
            Backend::Local,
            Flavour::Process(local),
        ))
    }

    /// Restarts a [`Managed::private_clickhouse_tls`] (same port, same data) so that
    /// it requires client certificates signed by `pki`'s CA.
    pub fn require_client_certificates(&mut self, pki: &TestPki) -> anyhow::Result<()> {
        match &mut self.instance {
            Flavour::Process(local) => local.require_client_certificates(pki),
            _ => bail!("only a ClickHouse serving TLS can require client certificates"),
        }
    }

    /// Like [`Managed::private_nats_with_config`], for configurations whose clients
    /// must authenticate in a way the plain probe cannot (TLS with client
    /// certificates, nkeys, operator mode): ready once the log says `Server is ready`.
    /// A local process on every backend.
    pub fn private_nats_secured(config: &str) -> anyhow::Result<Managed> {
        let local = process::Local::private_nats_secured(config)?;
        Ok(Managed::new(
            Kind::Nats,
            Backend::Local,
            Flavour::Process(local),
        ))
    }

    /// A JetStream-enabled nats-server of the test's own, on the [`Backend`]
    /// `PONIX_TEST_BACKEND` chooses. Removed on drop.
    pub fn private_nats() -> anyhow::Result<Managed> {
        Managed::private(Kind::Nats, None)
    }

    /// Like [`Managed::private_nats`], with `config` (nats-server configuration text,
    /// for example users) as its configuration file; the port, JetStream and store
    /// flags win over it. The readiness probe connects without credentials, so a
    /// configuration with users needs a `no_auth_user` the probe can use.
    pub fn private_nats_with_config(config: &str) -> anyhow::Result<Managed> {
        Managed::private(Kind::Nats, Some(config))
    }

    /// The process `cargo xtask up` started. It is left running on drop.
    pub fn shared(endpoints: &Endpoints, kind: Kind) -> anyhow::Result<Managed> {
        let local = process::Local::shared(endpoints, kind)?;
        Ok(Managed::new(kind, Backend::Local, Flavour::Process(local)))
    }

    fn instance(&self) -> &dyn Instance {
        match &self.instance {
            Flavour::Process(local) => local,
            Flavour::Container(container) => container.as_ref(),
            Flavour::Compose(service) => service,
        }
    }

    fn instance_mut(&mut self) -> &mut dyn Instance {
        match &mut self.instance {
            Flavour::Process(local) => local,
            Flavour::Container(container) => container.as_mut(),
            Flavour::Compose(service) => service,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where this instance runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The serving process's pid on this host (for a container, its main process as
    /// Docker reports it): it changes when the instance is restarted.
    ///
    /// # Panics
    /// When Docker cannot say (the container is gone): a test asking for the pid
    /// of an instance it removed is broken.
    pub fn pid(&self) -> u32 {
        match self.instance().pid() {
            Ok(pid) => pid,
            Err(err) => panic!("the pid of {}: {err:#}", self.kind.name()),
        }
    }

    pub fn port(&self) -> u16 {
        self.instance().port()
    }

    pub fn url(&self) -> String {
        self.instance().url()
    }

    /// The instance keeps its sockets but answers nothing until the guard drops:
    /// SIGSTOP for a process, `pause` for a container.
    pub fn freeze(&self) -> anyhow::Result<Frozen<'_>> {
        self.instance().freeze()?;
        Ok(Frozen { managed: self })
    }

    /// SIGTERM (`docker stop`) and wait for exit. The guard starts it again (same
    /// port, same data) when dropped, or explicitly with [`Stopped::start`].
    pub fn stop(&mut self) -> anyhow::Result<Stopped<'_>> {
        self.instance_mut().stop()?;
        Ok(Stopped {
            managed: Some(self),
        })
    }

    /// SIGKILL, as a crash would; the guard restarts it like [`Managed::stop`]'s.
    pub fn kill(&mut self) -> anyhow::Result<Stopped<'_>> {
        self.instance_mut().kill()?;
        Ok(Stopped {
            managed: Some(self),
        })
    }

    /// Stop, start again on the same port and data, and wait until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?.start()
    }

    /// The end of the instance's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.instance().log_tail(lines)
    }
}

/// Resumes the frozen instance when dropped.
#[must_use = "the instance is resumed when the guard drops"]
pub struct Frozen<'a> {
    managed: &'a Managed,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.managed.instance().resume() {
            eprintln!("could not resume {}: {err:#}", self.managed.kind.name());
        }
    }
}

/// Starts the stopped instance again when dropped.
#[must_use = "the instance is started again when the guard drops"]
pub struct Stopped<'a> {
    managed: Option<&'a mut Managed>,
}

impl Stopped<'_> {
    /// Starts the instance and waits until it answers.
    pub fn start(mut self) -> anyhow::Result<()> {
        match self.managed.take() {
            Some(managed) => managed.instance_mut().start(),
            None => Ok(()),
        }
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(managed) = self.managed.take()
            && let Err(err) = managed.instance_mut().start()
        {
            eprintln!("could not start {} again: {err:#}", managed.kind.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_defaults_to_local_processes() {
        assert_eq!(Backend::parse(None).unwrap(), Backend::Local);
        assert_eq!(Backend::parse(Some("")).unwrap(), Backend::Local);
        assert_eq!(Backend::parse(Some("local")).unwrap(), Backend::Local);
    }

    #[test]
    fn the_backend_names_parse_back() {
        for backend in [Backend::Local, Backend::Containers, Backend::Compose] {
            assert_eq!(Backend::parse(Some(backend.name())).unwrap(), backend);
        }
        assert_eq!(
            Backend::parse(Some(" compose\n")).unwrap(),
            Backend::Compose
        );
    }

    #[test]
    fn an_unknown_backend_is_an_error_naming_the_choices() {
        let err = Backend::parse(Some("docker")).unwrap_err().to_string();
        assert!(err.contains("PONIX_TEST_BACKEND=\"docker\""), "{err}");
        assert!(err.contains("local, containers or compose"), "{err}");
        assert!(Backend::parse(Some("Containers")).is_err());
    }
}
