//! The compose flavour of [`super::Managed`] (`PONIX_TEST_BACKEND=compose`): each
//! private instance is one service of `docker/compose.yaml` in a compose project of
//! its own (`ponix-t-<pid>-<n>`), brought up with `up --wait` on the file's
//! healthchecks, faulted with `stop`/`start`, `pause`/`unpause` and `kill`, and
//! removed with `down --volumes` on drop.
//!
//! The published host ports are free ports chosen here, passed as the file's
//! `*_HOST_PORT` variables, so that they survive stop and start. A small override
//! file keeps the instance what the tests expect of a private one: ClickHouse's user
//! `default` without a password (as the local chDB and the containers flavour; the
//! stack's own user is for the writer service, which tests don't start), no restart
//! policy (a killed instance stays down until the guard starts it), only the HTTP
//! port published, and the `ponix.test` label the sweep looks for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::{self, DATABASE, READY_TIMEOUT};
use localenv::net::{self, free_port, wait_until};

use super::docker::{self, LABEL, PROJECT_PREFIX};
use super::images::Images;
use super::process::scratch_dir;
use super::{Instance, Kind};

/// Seconds `docker compose stop` waits before SIGKILL, as the local flavour's stop.
const STOP_TIMEOUT_SECS: &str = "15";
/// Seconds `up --wait` waits for the healthchecks.
const UP_TIMEOUT_SECS: &str = "120";
const NATS_CONFIG: &str = "/etc/ponix-test/nats.conf";

#[derive(Debug)]
pub(super) struct Service {
    kind: Kind,
    project: String,
    port: u16,
    /// The override file (and a NATS configuration file), removed on drop.
    scratch: PathBuf,
    /// The host ports the compose file's variables publish.
    ports: Vec<(&'static str, u16)>,
    images: Images,
    id: String,
}

impl Service {
    /// Brings up the `kind` service in a new project and waits until it serves.
    pub(super) fn up(kind: Kind, nats_config: Option<&str>) -> anyhow::Result<Service> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        docker::sweep_stale();
        let project = format!(
            "{PROJECT_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let scratch = scratch_dir(&project)?;
        let port = free_port()?;
        let ports = match kind {
            Kind::Nats => vec![
                ("NATS_HOST_PORT", port),
                ("NATS_MONITOR_HOST_PORT", free_port()?),
            ],
            Kind::ClickHouse => vec![("CLICKHOUSE_HOST_PORT", port)],
        };
        let override_file = scratch.join("override.yaml");
        let config_file = match nats_config {
            Some(config) => {
                let file = scratch.join("nats.conf");
                std::fs::write(&file, config)
                    .with_context(|| format!("writing {}", file.display()))?;
                Some(file)
            }
            None => None,
        };
        std::fs::write(&override_file, override_yaml(kind, config_file.as_deref()))
            .with_context(|| format!("writing {}", override_file.display()))?;
        let mut service = Service {
            kind,
            project,
            port,
            scratch,
            ports,
            images: Images::resolve()?,
            id: String::new(),
        };
        // From here on, Drop takes the project down whatever fails.
        service
            .compose(&[
                "up",
                "-d",
                "--wait",
                "--wait-timeout",
                UP_TIMEOUT_SECS,
                service_name(kind),
            ])
            .with_context(|| {
                format!(
                    "bringing up {} in compose project {}",
                    kind.name(),
                    service.project
                )
            })?;
        service.id = service
            .compose(&["ps", "-q", service_name(kind)])?
            .trim()
            .to_owned();
        if service.id.is_empty() {
            bail!(
                "compose project {} has no {} container",
                service.project,
                kind.name()
            );
        }
        service.wait_ready()?;
        if kind == Kind::ClickHouse {
            local::create_database(port, DATABASE)?;
        }
        Ok(service)
    }

    /// `docker compose` with this project's name, files and variables, from the
    /// workspace root; returns stdout.
    fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let layout = Layout::workspace();
        let mut command = Command::new("docker");
        command
            .current_dir(&layout.root)
            .args([
                "compose",
                "-p",
                &self.project,
                "-f",
                "docker/compose.yaml",
                "-f",
            ])
            .arg(self.scratch.join("override.yaml"))
            .args(["--env-file", "pins.env"]);
        let local_images = localenv::images::images_env(&layout);
        if local_images.exists() {
            command.arg("--env-file").arg(local_images);
        }
        // The process environment wins over the env files: the images resolved as
        // the containers flavour does, and the ports chosen here.
        command
            .env("NATS_IMAGE", &self.images.nats)
            .env("CLICKHOUSE_IMAGE", &self.images.clickhouse)
            .envs(self.ports.iter().map(|(key, port)| (key, port.to_string())))
            .env("CLICKHOUSE_NOFILE", docker::clickhouse_nofile().to_string())
            .args(args);
        run(command, args)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let ready = match self.kind {
            Kind::Nats => wait_until(
                "nats-server (JetStream account info)",
                READY_TIMEOUT,
                || net::nats_jetstream_ready(self.port),
            ),
            Kind::ClickHouse => {
                wait_until("ClickHouse (/ping and SELECT 1)", READY_TIMEOUT, || {
                    local::clickhouse_ready(self.port)
                })
            }
        };
        ready.with_context(|| {
            format!(
                "{} of compose project {}; its log ends with:\n{}",
                self.kind.name(),
                self.project,
                self.log_tail(30)
            )
        })
    }
}

fn service_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Nats => "nats",
        Kind::ClickHouse => "clickhouse",
    }
}

fn run(mut command: Command, args: &[&str]) -> anyhow::Result<String> {
    let output = command.output().context(
        "running `docker compose`: is the docker CLI with its compose plugin installed? (`docker compose version`)",
    )?;
    if !output.status.success() {
        bail!(
            "`docker compose {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The override of one service: see the module's doc for why each line.
fn override_yaml(kind: Kind, nats_config: Option<&Path>) -> String {
    let owner = docker::owner();
    let name = service_name(kind);
    let mut yaml = format!(
        "services:\n  {name}:\n    restart: \"no\"\n    labels:\n      {LABEL}: \"{owner}\"\n"
    );
    match (kind, nats_config) {
        (Kind::ClickHouse, _) => yaml.push_str(
            "    environment:\n      CLICKHOUSE_USER: default\n      CLICKHOUSE_PASSWORD: \"\"\n      \
             CLICKHOUSE_SKIP_USER_SETUP: \"1\"\n      CLICKHOUSE_DB: ponix\n    \
             ports: !override\n      - \"127.0.0.1:${CLICKHOUSE_HOST_PORT:?}:8123\"\n",
        ),
        (Kind::Nats, Some(file)) => yaml.push_str(&format!(
            "    command: [\"-js\", \"-sd\", \"/data\", \"-m\", \"8222\", \"--config\", \"{NATS_CONFIG}\"]\n    \
             volumes:\n      - \"{}:{NATS_CONFIG}:ro\"\n",
            file.display()
        )),
        (Kind::Nats, None) => {}
    }
    yaml
}

impl Instance for Service {
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
        self.compose(&["pause", service_name(self.kind)]).map(drop)
    }

    fn resume(&self) -> anyhow::Result<()> {
        self.compose(&["unpause", service_name(self.kind)])
            .map(drop)
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.compose(&[
            "stop",
            "--timeout",
            STOP_TIMEOUT_SECS,
            service_name(self.kind),
        ])
        .map(drop)
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.compose(&["kill", "--signal", "SIGKILL", service_name(self.kind)])
            .map(drop)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.compose(&["start", service_name(self.kind)])?;
        self.wait_ready()
    }

    fn log_tail(&self, lines: usize) -> String {
        let lines = lines.to_string();
        let args = [
            "logs",
            "--no-color",
            "--no-log-prefix",
            "--tail",
            &lines,
            service_name(self.kind),
        ];
        self.compose(&args)
            .unwrap_or_else(|err| format!("(no logs: {err:#})"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let args = ["down", "--volumes", "--timeout", "5", "--remove-orphans"];
        if let Err(err) = self.compose(&args) {
            eprintln!(
                "could not take down compose project {} ({err:#}); run `docker compose -p {} down --volumes`",
                self.project, self.project
            );
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clickhouse_override_publishes_only_the_chosen_http_port() {
        let yaml = override_yaml(Kind::ClickHouse, None);
        assert!(
            yaml.contains(
                "ports: !override\n      - \"127.0.0.1:${CLICKHOUSE_HOST_PORT:?}:8123\"\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("CLICKHOUSE_USER: default"), "{yaml}");
        assert!(yaml.contains("restart: \"no\""), "{yaml}");
        assert!(
            yaml.contains(&format!("ponix.test: \"testkit-{}\"", std::process::id())),
            "{yaml}"
        );
    }

    #[test]
    fn a_nats_configuration_is_mounted_and_named_on_the_command_line() {
        let yaml = override_yaml(Kind::Nats, Some(Path::new("/tmp/x/nats.conf")));
        assert!(
            yaml.contains("\"/tmp/x/nats.conf:/etc/ponix-test/nats.conf:ro\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("\"--config\", \"/etc/ponix-test/nats.conf\"]"),
            "{yaml}"
        );
        assert!(!override_yaml(Kind::Nats, None).contains("command"));
    }
}
