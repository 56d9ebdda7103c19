//! The healthcheck check: NATS and ClickHouse containers on a private network, the
//! built image run against them with the stack's settings, its HEALTHCHECK polled
//! until `healthy`, then GET /readyz through an ephemeral host port. Plain
//! `docker run` rather than docker/compose.yaml, so that the check depends on no
//! compose file's ports or names. Everything is removed by a guard, on error and
//! panic too; the writer's log is shown when the check fails.
//!
//! Setting values (the password included) reach the containers through the docker
//! CLI's environment (`--env NAME`), so no command line or plan shows them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::Shell;

use super::cmd::Cmd;

/// The images the writer runs against: pins.env, overlaid by .tools/docker/images.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackImages {
    pub nats: String,
    pub clickhouse: String,
}

/// What the ClickHouse container's entrypoint reads to create the user and database.
pub const CLICKHOUSE_SETTINGS: &[&str] = &[
    "CLICKHOUSE_DB",
    "CLICKHOUSE_USER",
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT",
];
/// The writer's own port in the image (PONIX_HTTP_ADDR).
const WRITER_PORT: &str = "8080/tcp";
/// NATS and ClickHouse healthy (first start of ClickHouse included).
const INFRA_DEADLINE: Duration = Duration::from_secs(180);
/// The image's HEALTHCHECK probes every 10 s after a start period of up to 60 s.
const WRITER_DEADLINE: Duration = Duration::from_secs(150);
const READY_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);
const LABEL: &str = "ponix.xtask=image-check";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub network: String,
    pub nats: String,
    pub clickhouse: String,
    pub writer: String,
    pub network_create: Cmd,
    pub nats_run: Cmd,
    pub clickhouse_run: Cmd,
    pub writer_run: Cmd,
    /// Names (not values) of the settings the writer gets.
    pub writer_settings: Vec<String>,
}

impl Stack {
    pub fn new(
        run_id: &str,
        images: &StackImages,
        reference: &str,
        writer_settings: &[String],
    ) -> Stack {
        let network = format!("ponix-image-{run_id}");
        let nats = format!("{network}-nats");
        let clickhouse = format!("{network}-clickhouse");
        let writer = format!("{network}-writer");
        let container = |name: &str, alias: Option<&str>| {
            let mut command = Cmd::docker(&["run", "--detach", "--name", name, "--network"])
                .arg(&network)
                .arg("--label")
                .arg(LABEL);
            if let Some(alias) = alias {
                command = command.arg("--network-alias").arg(alias);
            }
            command
        };
        let health = |probe: &'static str| {
            [
                "--health-cmd",
                probe,
                "--health-interval",
                "1s",
                "--health-timeout",
                "3s",
                "--health-retries",
                "120",
            ]
        };
        // Like docker/compose.yaml's services: JetStream with the monitor port for
        // the probe; ClickHouse probed on its own address, not on the temporary
        // loopback-only server its entrypoint runs on first start.
        let nats_run = container(&nats, Some("nats"))
            .args(health(
                "wget -q --spider 'http://127.0.0.1:8222/healthz?js-enabled-only=true'",
            ))
            .arg(&images.nats)
            .args(["-js", "-sd", "/data", "-m", "8222"]);
        // No `--ulimit nofile` as compose.yaml sets: where the engine's own hard limit
        // is lower (a container host inside a container), runc refuses to start the
        // container, and ClickHouse only warns without it.
        let mut clickhouse_run = container(&clickhouse, Some("clickhouse")).args(health(
            "wget --quiet --tries=1 --timeout=2 --spider \"http://$(hostname):8123/ping\"",
        ));
        for name in CLICKHOUSE_SETTINGS {
            clickhouse_run = clickhouse_run.arg("--env").arg(*name);
        }
        let clickhouse_run = clickhouse_run.arg(&images.clickhouse);
        // As compose runs it: no capabilities, no privilege escalation.
        let mut writer_run = container(&writer, None)
            .args(["--publish", "127.0.0.1::8080"])
            .args(["--cap-drop", "ALL"])
            .args(["--security-opt", "no-new-privileges:true"])
            .args(["--env", "PONIX_NATS_URL=nats://nats:4222"])
            .args(["--env", "PONIX_CLICKHOUSE_URL=http://clickhouse:8123"]);
        let writer_settings: Vec<String> = writer_settings
            .iter()
            .filter(|name| !matches!(name.as_str(), "PONIX_NATS_URL" | "PONIX_CLICKHOUSE_URL"))
            .cloned()
            .collect();
        for name in &writer_settings {
            writer_run = writer_run.arg("--env").arg(name);
        }
        let writer_run = writer_run.arg(reference);
        Stack {
            network_create: Cmd::docker(&["network", "create", "--label", LABEL]).arg(&network),
            network,
            nats,
            clickhouse,
            writer,
            nats_run,
            clickhouse_run,
            writer_run,
            writer_settings,
        }
    }

    /// Every command line, in order, for the plan.
    pub fn commands(&self) -> Vec<Cmd> {
        vec![
            self.network_create.clone(),
            self.nats_run.clone(),
            self.clickhouse_run.clone(),
            status(&self.nats),
            status(&self.clickhouse),
            self.writer_run.clone(),
            status(&self.writer),
            Cmd::docker(&["port"]).arg(&self.writer).arg(WRITER_PORT),
            self.remove(),
            Cmd::docker(&["network", "rm"]).arg(&self.network),
        ]
    }

    fn remove(&self) -> Cmd {
        Cmd::docker(&["rm", "--force", "--volumes"]).args([
            &self.writer,
            &self.clickhouse,
            &self.nats,
        ])
    }
}

fn status(container: &str) -> Cmd {
    Cmd::docker(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
        container,
    ])
}

/// Removes the stack's containers and network when dropped.
struct Guard<'a> {
    stack: &'a Stack,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        for command in [
            self.stack.remove(),
            Cmd::docker(&["network", "rm"]).arg(&self.stack.network),
        ] {
            let output = Command::new(command.program)
                .args(&command.args)
                .stdin(Stdio::null())
                .output();
            match output {
                Ok(output) if output.status.success() => {}
                Ok(output) => {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    // Containers that were never created are not a teardown problem.
                    if !stderr.contains("No such") && !stderr.trim().is_empty() {
                        eprintln!("[image] teardown: `{command}` failed: {}", stderr.trim());
                    }
                }
                Err(err) => eprintln!("[image] teardown: `{command}` could not run: {err}"),
            }
        }
    }
}

/// Runs the stack and returns what was observed; the error of a failed check
/// comes after the writer's log has been shown.
pub fn run(
    sh: &Shell,
    layout: &Layout,
    stack: &Stack,
    settings: &[(String, String)],
) -> anyhow::Result<String> {
    let _guard = Guard { stack };
    let with_settings = |command: &Cmd| {
        let mut command = command.to_xshell(sh).quiet();
        for (key, value) in settings {
            command = command.env(key, value);
        }
        command
    };
    for name in CLICKHOUSE_SETTINGS
        .iter()
        .copied()
        .chain(stack.writer_settings.iter().map(String::as_str))
    {
        if !settings.iter().any(|(key, _)| key == name) {
            bail!("docker/.env.example has no {name}: the stack needs it");
        }
    }
    let start = |what: &str, command: &Cmd| -> anyhow::Result<()> {
        let output = with_settings(command)
            .ignore_status()
            .output()
            .with_context(|| format!("running `{command}`"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "starting {what} failed: {} (command: `{command}`)",
            stderr.trim()
        )
    };
    start("the network", &stack.network_create)?;
    start("NATS", &stack.nats_run)?;
    start("ClickHouse", &stack.clickhouse_run)?;
    wait_healthy(sh, &[&stack.nats, &stack.clickhouse], INFRA_DEADLINE)
        .inspect_err(|_| dump_logs(sh, layout, &[&stack.nats, &stack.clickhouse]))?;

    let started = Instant::now();
    let result = start("the writer", &stack.writer_run)
        .and_then(|()| wait_healthy(sh, &[&stack.writer], WRITER_DEADLINE))
        .and_then(|()| {
            let healthy_after = started.elapsed();
            let address = published_address(sh, &stack.writer)?;
            wait_ready(address)?;
            Ok(format!(
                "healthy after {:.0} s; GET /readyz 200 on {address}",
                healthy_after.as_secs_f64()
            ))
        });
    if result.is_err() {
        dump_logs(sh, layout, &[&stack.writer]);
    }
    result
}

/// Polls until every container's healthcheck says `healthy`; fails at once when
/// one stops or turns `unhealthy`, and at the deadline.
fn wait_healthy(sh: &Shell, containers: &[&str], deadline: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pending: Vec<&str> = containers.to_vec();
    loop {
        let mut still = Vec::new();
        for container in pending {
            let state = status(container).read(sh)?;
            match state.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["running", "healthy"] => {}
                ["running", "starting"] => still.push(container),
                ["running"] => bail!("{container} has no healthcheck"),
                _ => bail!("{container} is `{}` (its log follows)", state.trim()),
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if localenv::interrupt::interrupted() {
            bail!("interrupted while waiting for {}", still.join(", "));
        }
        if started.elapsed() > deadline {
            bail!(
                "{} not healthy after {} s (still `starting`; its log follows)",
                still.join(", "),
                deadline.as_secs()
            );
        }
        pending = still;
        thread::sleep(POLL);
    }
}

/// The host address `-p 127.0.0.1::8080` got, from `docker port`.
fn published_address(sh: &Shell, writer: &str) -> anyhow::Result<SocketAddr> {
    let printed = Cmd::docker(&["port", writer, WRITER_PORT]).read(sh)?;
    let line = printed
        .lines()
        .find(|line| line.starts_with("127.0.0.1:"))
        .with_context(|| format!("`docker port {writer}` printed {printed:?}"))?;
    line.trim()
        .parse()
        .with_context(|| format!("`docker port {writer}` printed {line:?}, not an address"))
}

/// GET /readyz until it answers 200.
fn wait_ready(address: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let last = http_status(address, "/readyz");
        if let Ok(200) = last {
            return Ok(());
        }
        if started.elapsed() > READY_DEADLINE {
            let last = match last {
                Ok(code) => format!("HTTP {code}"),
                Err(err) => format!("{err:#}"),
            };
            bail!(
                "GET http://{address}/readyz did not answer 200 within {} s (last: {last})",
                READY_DEADLINE.as_secs()
            );
        }
        thread::sleep(POLL);
    }
}

/// The status code of a plain HTTP/1.0 GET.
fn http_status(address: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head)?;
    parse_status(&String::from_utf8_lossy(&head[..read]))
}

fn parse_status(head: &str) -> anyhow::Result<u16> {
    head.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {head:?}"))
}

/// The containers' logs: saved to .tools/logs/, the last lines printed.
fn dump_logs(sh: &Shell, layout: &Layout, containers: &[&str]) {
    for container in containers {
        let output = Cmd::docker(&["logs", "--timestamps", container])
            .to_xshell(sh)
            .quiet()
            .ignore_status()
            .output();
        let Ok(output) = output else {
            eprintln!("[image] could not read the log of {container}");
            continue;
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let path = layout.logs_dir().join(format!("{container}.log"));
        let saved = fs::create_dir_all(layout.logs_dir())
            .and_then(|()| fs::write(&path, &text))
            .map(|()| format!(" (all of it in {})", path.display()))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!(
            "----- docker logs {container}: last {} lines{saved} -----",
            tail.len()
        );
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        Stack::new(
            "42",
            &StackImages {
                nats: "ponix-local/nats:2.15.0".into(),
                clickhouse: "ponix-local/clickhouse:chdb-26.9.0".into(),
            },
            "ponix-writer:abc",
            &[
                "PONIX_CLICKHOUSE_PASSWORD".into(),
                "PONIX_NATS_URL".into(),
                "PONIX_LOG_LEVEL".into(),
            ],
        )
    }

    #[test]
    fn everything_lives_on_a_private_network_under_this_run_s_names() {
        let stack = stack();
        assert_eq!(
            stack.network_create.to_string(),
            "docker network create --label ponix.xtask=image-check ponix-image-42"
        );
        let nats = stack.nats_run.to_string();
        assert!(
            nats.starts_with(
                "docker run --detach --name ponix-image-42-nats --network ponix-image-42 \
                 --label ponix.xtask=image-check --network-alias nats --health-cmd "
            ),
            "{nats}"
        );
        assert!(
            nats.ends_with(" ponix-local/nats:2.15.0 -js -sd /data -m 8222"),
            "{nats}"
        );
        let clickhouse = stack.clickhouse_run.to_string();
        assert!(clickhouse.contains(" --network-alias clickhouse "));
        assert!(clickhouse.ends_with(
            " --env CLICKHOUSE_DB --env CLICKHOUSE_USER --env CLICKHOUSE_PASSWORD \
             --env CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT ponix-local/clickhouse:chdb-26.9.0"
        ));
    }

    #[test]
    fn the_writer_gets_an_ephemeral_port_and_settings_by_name_only() {
        let writer = stack().writer_run.to_string();
        assert!(writer.contains(" --publish 127.0.0.1::8080 "), "{writer}");
        assert!(writer.contains(" --cap-drop ALL --security-opt no-new-privileges:true "));
        assert!(writer.contains(" --env PONIX_NATS_URL=nats://nats:4222 "));
        assert!(writer.contains(" --env PONIX_CLICKHOUSE_URL=http://clickhouse:8123 "));
        // The stack's own address wins over the setting of the same name.
        assert_eq!(writer.matches("PONIX_NATS_URL").count(), 1, "{writer}");
        assert!(
            writer.ends_with(
                " --env PONIX_CLICKHOUSE_PASSWORD --env PONIX_LOG_LEVEL ponix-writer:abc"
            )
        );
    }

    #[test]
    fn the_plan_ends_by_removing_everything() {
        let commands: Vec<String> = stack().commands().iter().map(Cmd::to_string).collect();
        assert_eq!(
            commands[commands.len() - 2..],
            [
                "docker rm --force --volumes ponix-image-42-writer ponix-image-42-clickhouse ponix-image-42-nats",
                "docker network rm ponix-image-42",
            ]
        );
        assert!(commands.contains(&"docker port ponix-image-42-writer 8080/tcp".to_owned()));
    }

    #[test]
    fn http_status_lines_are_parsed() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r\n").unwrap(), 200);
        assert_eq!(
            parse_status("HTTP/1.0 503 Service Unavailable").unwrap(),
            503
        );
        assert!(parse_status("SSH-2.0").is_err());
        assert!(parse_status("").is_err());
    }
}
