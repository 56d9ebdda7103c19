//! The writer in its container image instead of a host process, chosen by
//! `PONIX_TEST_WRITER_IMAGE` (set by `cargo xtask e2e --backend compose`), so that the
//! same tests and drills run the image that ships.
//!
//! `docker run --network host`: the writer reaches the test's NATS and ClickHouse at
//! the same loopback addresses a host process would, and serves its HTTP port there.
//! Every value that is an existing absolute host path (migrations, CA files, creds)
//! is bind-mounted read-only at that path, so the variables need no rewriting; the
//! container runs as the caller's uid and gid, so it reads exactly the files a host
//! process could (test keys are 0600). Values travel as `-e NAME` with the value in
//! the docker CLI's environment: never on a command line that `ps` shows.
//!
//! The container's output is streamed into the writer's log by `docker logs -f`;
//! `docker wait` reports its exit code. Dropping the handle removes the container.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Layout;

/// The image to run the writer from, in place of the host binary.
pub const IMAGE_VAR: &str = "PONIX_TEST_WRITER_IMAGE";
/// The label every such container carries, so that strays can be found:
/// `docker ps -a --filter label=ponix.test.writer`.
pub const LABEL: &str = "ponix.test.writer";
/// testkit's owner label (the pid of the test process): its sweep removes the
/// containers of test processes that died without dropping their handles.
const OWNER_LABEL: &str = "ponix.test";

/// Names the run that started a container (`ponix.test.run=<value>` label), so that
/// the run can remove its containers after an interrupt killed the tests before
/// their handles dropped: `cargo xtask e2e --backend compose` sets it.
pub const RUN_VAR: &str = "PONIX_TEST_WRITER_RUN";
pub const RUN_LABEL: &str = "ponix.test.run";

/// How long `docker logs -f` may take to deliver the last lines after the exit.
const LOG_DRAIN: Duration = Duration::from_secs(10);

/// The image named by [`IMAGE_VAR`], when it is set and not empty.
pub fn image_from_env() -> Option<String> {
    std::env::var(IMAGE_VAR)
        .ok()
        .filter(|image| !image.trim().is_empty())
}

/// One `docker run -d` of the writer image, with its log follower and exit waiter.
pub struct Container {
    name: String,
    /// The writer's pid as the host sees it, where the host shares the engine's
    /// pid namespace (not Docker Desktop): for the RSS and CPU figures.
    host_pid: Option<u32>,
    logs: duct::Handle,
    waiter: duct::Handle,
    exit: Option<ExitStatus>,
}

impl Container {
    /// Starts `image` with `args` and exactly `vars` as its `PONIX_*` environment;
    /// its output goes to `log`. Returns once the container runs.
    pub fn start(
        image: &str,
        args: &[&str],
        vars: &[(String, String)],
        log: &File,
    ) -> anyhow::Result<Container> {
        let name = unique_name();
        let mut run = RunCommand::new(&name, image, args, vars, current_user(), std::process::id());
        if let Ok(id) = std::env::var(RUN_VAR) {
            run.args
                .splice(1..1, ["--label".to_owned(), format!("{RUN_LABEL}={id}")]);
        }
        let output = duct::cmd("docker", &run.args)
            .full_env(run.cli_env())
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .context("running `docker run` for the writer image (is a Docker engine running?)")?;
        if !output.status.success() {
            bail!(
                "`docker run {image}` failed: {} (build the image with `cargo xtask image`, \
                 or unset {IMAGE_VAR} to run the host binary)",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // From here on the container exists: a failure below still removes it.
        // A header, so that a log tells which incarnations ran in which container.
        let _ = writeln!(
            &*log,
            "--- ponix-writer in container {name} from {image} ---"
        );
        let logs = duct::cmd!("docker", "logs", "--follow", &name)
            .stdin_null()
            .stdout_file(log.try_clone()?)
            .stderr_file(log.try_clone()?)
            .unchecked()
            .start();
        let waiter = duct::cmd!("docker", "wait", &name)
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .start();
        let (logs, waiter) = match (logs, waiter) {
            (Ok(logs), Ok(waiter)) => (logs, waiter),
            (logs, waiter) => {
                remove(&name);
                for handle in [logs, waiter].into_iter().flatten() {
                    let _ = handle.kill();
                }
                bail!("starting `docker logs` and `docker wait` for container {name}");
            }
        };
        Ok(Container {
            host_pid: host_pid(&name),
            name,
            logs,
            waiter,
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn host_pid(&self) -> Option<u32> {
        self.host_pid
    }

    /// The exit status once the container has stopped (its exit code, as
    /// `docker wait` reports it: 137 after a SIGKILL), with its log complete.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(status) = self.exit {
            return Ok(Some(status));
        }
        let Some(output) = self
            .waiter
            .try_wait()
            .context("asking `docker wait` whether the writer's container has stopped")?
        else {
            return Ok(None);
        };
        let code =
            parse_wait_output(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
                format!(
                    "`docker wait {}` failed: {}",
                    self.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })?;
        // `docker logs -f` ends with the container; its last lines may still be on the way.
        let _ = self.logs.wait_timeout(LOG_DRAIN);
        let status = ExitStatus::from_raw((code & 0xff) << 8);
        self.exit = Some(status);
        Ok(Some(status))
    }

    /// Sends `signal` (a name such as `TERM` or `KILL`) to the writer, PID 1 of the
    /// container; nothing when it has already stopped.
    pub fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        let output = duct::cmd!("docker", "kill", "--signal", signal, &self.name)
            .stdin_null()
            .stdout_null()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("running `docker kill --signal {signal} {}`", self.name))?;
        // A container that stopped in the meantime is not an error.
        if !output.status.success() && self.try_exit()?.is_none() {
            bail!(
                "`docker kill --signal {signal} {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove(&self.name);
        // Both end with the container; killed only if the engine did not answer.
        for handle in [&self.logs, &self.waiter] {
            if !matches!(handle.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
                let _ = handle.kill();
            }
        }
    }
}

/// `docker rm --force`: kills the container if it runs, and removes it.
fn remove(name: &str) {
    let _ = duct::cmd!("docker", "rm", "--force", "--volumes", name)
        .stdin_null()
        .stdout_null()
        .stderr_null()
        .unchecked()
        .run();
}

fn host_pid(name: &str) -> Option<u32> {
    let pid: u32 = duct::cmd!("docker", "inspect", "--format", "{{.State.Pid}}", name)
        .stdin_null()
        .stderr_null()
        .read()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid != 0 && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// `docker wait` prints the exit code on a line of its own.
fn parse_wait_output(stdout: &str) -> anyhow::Result<i32> {
    stdout
        .trim()
        .parse()
        .with_context(|| format!("unexpected `docker wait` output {stdout:?}"))
}

/// A name no other test, process or run shares.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "ponix-test-writer-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// This process's effective uid and gid: procfs shows them as `/proc/self`'s owner.
/// Without procfs (macOS, where Docker Desktop maps file access anyway) the image's
/// own user stays.
fn current_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|meta| (meta.uid(), meta.gid()))
        .ok()
}

/// The `docker run` command line and the values it passes by name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunCommand {
    args: Vec<String>,
    /// `NAME=value` for every `-e NAME`, set in the docker CLI's environment.
    values: Vec<(String, String)>,
}

impl RunCommand {
    fn new(
        name: &str,
        image: &str,
        args: &[&str],
        vars: &[(String, String)],
        user: Option<(u32, u32)>,
        owner: u32,
    ) -> RunCommand {
        let goose = Layout::workspace().goose();
        let values: Vec<(String, String)> = vars
            .iter()
            // The image carries the pinned goose (the same release as .tools/bin), built
            // for its own libc; a test's own goose (a failing stand-in) is kept.
            .filter(|(key, value)| {
                !(key == "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH" && Path::new(value) == goose)
            })
            .cloned()
            .collect();
        let mut run: Vec<String> = ["run", "--detach", "--network", "host", "--name", name]
            .map(str::to_owned)
            .into();
        run.extend([
            "--label".to_owned(),
            format!("{LABEL}=true"),
            "--label".to_owned(),
            format!("{OWNER_LABEL}={owner}"),
        ]);
        if let Some((uid, gid)) = user {
            run.extend(["--user".to_owned(), format!("{uid}:{gid}")]);
        }
        for path in host_paths(&values) {
            let path = path.display();
            run.extend([
                "--mount".into(),
                format!("type=bind,source={path},target={path},readonly"),
            ]);
        }
        for (key, _) in &values {
            run.extend(["--env".to_owned(), key.clone()]);
        }
        run.push(image.to_owned());
        run.extend(args.iter().map(|arg| (*arg).to_owned()));
        RunCommand { args: run, values }
    }

    /// The docker CLI's environment: the caller's, less its `PONIX_*` variables, plus
    /// the writer's values (so that `-e NAME` picks exactly these up).
    fn cli_env(&self) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(key, _)| !key.starts_with("PONIX_"))
            .chain(self.values.iter().cloned())
            .collect()
    }
}

/// Every value that names an existing absolute path, each once, sorted.
fn host_paths(vars: &[(String, String)]) -> BTreeSet<PathBuf> {
    vars.iter()
        .map(|(_, value)| PathBuf::from(value))
        .filter(|path| path.is_absolute() && path.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn run_uses_the_host_network_a_label_and_the_callers_user() {
        let run = RunCommand::new(
            "w1",
            "ponix-writer:dev",
            &["migrate"],
            &vars(&[("PONIX_NATS_URL", "nats://127.0.0.1:4222")]),
            Some((1000, 1001)),
            4242,
        );
        assert_eq!(
            run.args,
            [
                "run",
                "--detach",
                "--network",
                "host",
                "--name",
                "w1",
                "--label",
                "ponix.test.writer=true",
                "--label",
                "ponix.test=4242",
                "--user",
                "1000:1001",
                "--env",
                "PONIX_NATS_URL",
                "ponix-writer:dev",
                "migrate"
            ]
        );
        assert_eq!(
            run.values,
            vars(&[("PONIX_NATS_URL", "nats://127.0.0.1:4222")])
        );
    }

    #[test]
    fn secrets_stay_off_the_command_line() {
        let run = RunCommand::new(
            "w2",
            "img",
            &[],
            &vars(&[("PONIX_CLICKHOUSE_PASSWORD", "Sup3rS3cret")]),
            None,
            1,
        );
        assert!(
            !run.args.iter().any(|arg| arg.contains("Sup3rS3cret")),
            "{:?}",
            run.args
        );
        assert!(
            run.cli_env()
                .contains(&("PONIX_CLICKHOUSE_PASSWORD".into(), "Sup3rS3cret".into()))
        );
    }

    #[test]
    fn existing_host_paths_are_mounted_read_only_at_the_same_place() {
        let layout = Layout::workspace();
        let migrations = layout.migrations_dir().display().to_string();
        let run = RunCommand::new(
            "w3",
            "img",
            &[],
            &vars(&[
                ("PONIX_CLICKHOUSE_MIGRATIONS_DIR", &migrations),
                ("PONIX_NATS_CA_FILE", "/nonexistent/ca.pem"),
                ("PONIX_NATS_URL", "nats://127.0.0.1:4222"),
                (
                    "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
                    &layout.goose().display().to_string(),
                ),
            ]),
            None,
            1,
        );
        let mounts: Vec<&String> = run
            .args
            .iter()
            .zip(run.args.iter().skip(1))
            .filter(|(flag, _)| *flag == "--mount")
            .map(|(_, mount)| mount)
            .collect();
        assert_eq!(
            mounts,
            [&format!(
                "type=bind,source={migrations},target={migrations},readonly"
            )]
        );
        // The pinned goose is the image's own.
        assert!(
            !run.values
                .iter()
                .any(|(key, _)| key == "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH"),
            "{:?}",
            run.values
        );
    }

    #[test]
    fn a_tests_own_goose_is_kept_and_mounted() {
        let script = Layout::workspace()
            .root
            .join("service/tests/support/failing-goose");
        let script = script.display().to_string();
        let run = RunCommand::new(
            "w4",
            "img",
            &[],
            &vars(&[("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH", &script)]),
            None,
            1,
        );
        assert!(run.args.contains(&format!(
            "type=bind,source={script},target={script},readonly"
        )));
        assert_eq!(run.values.len(), 1);
    }

    #[test]
    fn wait_output_is_the_exit_code() {
        assert_eq!(parse_wait_output("137\n").unwrap(), 137);
        assert_eq!(parse_wait_output("0").unwrap(), 0);
        assert!(parse_wait_output("").is_err());
        assert!(parse_wait_output("Error response from daemon").is_err());
        let status = ExitStatus::from_raw((137 & 0xff) << 8);
        assert_eq!(status.code(), Some(137));
    }

    #[test]
    fn names_are_unique() {
        assert_ne!(unique_name(), unique_name());
    }
}
