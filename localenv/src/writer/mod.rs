//! The `ponix-writer` binary as a child process: the one way the tests, the drills,
//! the bench and `cargo xtask dev` run it.
//!
//! The contract: the writer sees exactly the `PONIX_*` variables it is given (none
//! leak in from the caller's shell), listens on a free port of its own, and writes
//! its output to one log file. A handle that is dropped kills and reaps its process,
//! so a failing test or an interrupted command leaves nothing running.
//!
//! Everything here either returns at once or blocks with a deadline; async callers
//! poll [`WriterProcess::readiness`] and [`WriterProcess::try_exit`] themselves.
//!
//! With `PONIX_TEST_WRITER_IMAGE` set, the same handle runs the writer's container
//! image instead of the binary ([`container`]): signals become `docker kill`, the exit
//! status is the container's exit code, and the log is the container's output.

pub mod container;

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::net::{self, HttpResponse};
use crate::process::{self, log_tail};

/// How often the blocking waits look again.
const POLL: Duration = Duration::from_millis(20);
/// How many log lines an error quotes.
const TAIL: usize = 40;

/// Whether a new incarnation starts its log afresh or adds to it (a drill keeps one
/// log across every restart of the writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    Truncate,
    Append,
}

/// What `/readyz` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, or not answering yet: why, as far as the writer said.
    NotYet(String),
}

/// What the kernel accounted to the writer over its life. `None` where procfs cannot
/// tell (not Linux, or a container whose process the host cannot see). In a container
/// the CPU time is the last one read while it ran.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Option<Duration>,
    /// The peak resident set size (`VmHWM`), last read while the process ran.
    pub peak_rss_bytes: Option<u64>,
}

/// One running (or exited, not yet dropped) `ponix-writer`.
pub struct WriterProcess {
    runner: Runner,
    /// The process as the host sees it; 0 for a container the host cannot see into.
    pid: u32,
    http_port: u16,
    log: PathBuf,
    started: Instant,
    exit: Option<(ExitStatus, Usage)>,
    peak_rss_bytes: Option<u64>,
    /// The CPU time last read while it ran (a container's process is reaped by its
    /// shim, so there is no zombie to read it from at the end).
    last_cpu: Option<Duration>,
}

/// How the writer runs.
enum Runner {
    Host(Child),
    Container(Box<container::Container>),
}

impl WriterProcess {
    /// Starts `binary` with exactly `vars` as its `PONIX_*` environment, plus
    /// `PONIX_HTTP_ADDR` on a free local port. Returns at once.
    pub fn spawn<K: AsRef<str>, V: AsRef<str>>(
        binary: &Path,
        vars: &[(K, V)],
        log: &Path,
        mode: Log,
    ) -> anyhow::Result<WriterProcess> {
        Self::spawn_with_args(binary, &[], vars, log, mode)
    }

    /// [`WriterProcess::spawn`] with command-line arguments: a subcommand such as
    /// `migrate`. With `PONIX_TEST_WRITER_IMAGE` set, runs that image instead of
    /// `binary`.
    pub fn spawn_with_args<K: AsRef<str>, V: AsRef<str>>(
        binary: &Path,
        args: &[&str],
        vars: &[(K, V)],
        log: &Path,
        mode: Log,
    ) -> anyhow::Result<WriterProcess> {
        let http_port = net::free_port()?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log_file = File::options()
            .create(true)
            .write(true)
            .append(mode == Log::Append)
            .truncate(mode == Log::Truncate)
            .open(log)
            .with_context(|| format!("opening the writer's log {}", log.display()))?;
        if let Some(image) = container::image_from_env() {
            let mut all: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
                .collect();
            all.push(("PONIX_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")));
            let container = container::Container::start(&image, args, &all, &log_file)?;
            return Ok(WriterProcess {
                pid: container.host_pid().unwrap_or(0),
                runner: Runner::Container(Box::new(container)),
                http_port,
                log: log.to_owned(),
                started: Instant::now(),
                exit: None,
                peak_rss_bytes: None,
                last_cpu: None,
            });
        }
        let mut command = command(binary, std::env::vars_os(), vars, http_port);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = command.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build -p ponix-writer`)",
                binary.display()
            )
        })?;
        Ok(WriterProcess {
            pid: child.id(),
            runner: Runner::Host(child),
            http_port,
            log: log.to_owned(),
            started: Instant::now(),
            exit: None,
            peak_rss_bytes: None,
            last_cpu: None,
        })
    }

    /// The host pid (0 for a container whose process the host cannot see).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the errors call it: its pid, or its container.
    fn who(&self) -> String {
        match &self.runner {
            Runner::Host(_) => format!("pid {}", self.pid),
            Runner::Container(container) => format!("container {}", container.name()),
        }
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// The exit status once the process has ended; reaps it, after reading the CPU
    /// time its zombie still shows.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some((status, _)) = self.exit {
            return Ok(Some(status));
        }
        self.note_peak_rss();
        let (status, cpu) = match &mut self.runner {
            Runner::Host(child) => {
                if !has_exited(child)? {
                    return Ok(None);
                }
                let cpu = process::cpu_seconds(&self.pid.to_string()).map(Duration::from_secs_f64);
                (child.wait().context("reaping the writer")?, cpu)
            }
            Runner::Container(container) => {
                if self.pid != 0 {
                    let cpu = process::cpu_seconds(&self.pid.to_string());
                    self.last_cpu = cpu.map(Duration::from_secs_f64).or(self.last_cpu);
                }
                match container.try_exit()? {
                    Some(status) => (status, self.last_cpu),
                    None => return Ok(None),
                }
            }
        };
        let usage = Usage {
            cpu,
            peak_rss_bytes: self.peak_rss_bytes,
        };
        self.exit = Some((status, usage));
        Ok(Some(status))
    }

    /// What the kernel accounted to the process, once it has exited.
    pub fn usage(&self) -> Option<Usage> {
        self.exit.map(|(_, usage)| usage)
    }

    /// One look at `/readyz`. An error means the process has exited, and quotes its log.
    pub fn readiness(&mut self) -> anyhow::Result<Readiness> {
        if let Some(status) = self.try_exit()? {
            bail!(
                "ponix-writer exited with {status} before it was ready; its log ends with:\n{}",
                self.log_tail(TAIL)
            );
        }
        Ok(match net::http_get(self.http_port, "/readyz") {
            Ok(response) if response.status == 200 => Readiness::Ready,
            Ok(response) => {
                Readiness::NotYet(format!("{} {}", response.status, response.body.trim()))
            }
            Err(err) => Readiness::NotYet(err.to_string()),
        })
    }

    /// Blocks until `/readyz` answers 200; the time since the start. Fails at once if
    /// the process exits, and with the end of its log after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.readiness()? {
                Readiness::Ready => return Ok(self.started.elapsed()),
                Readiness::NotYet(why) if Instant::now() >= deadline => {
                    bail!("{}", self.not_ready_error(timeout, &why))
                }
                Readiness::NotYet(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// The error for a writer that was not ready within `timeout`.
    pub fn not_ready_error(&self, timeout: Duration, why: &str) -> String {
        format!(
            "ponix-writer was not ready within {timeout:?} (last /readyz: {why}); its log ends with:\n{}",
            self.log_tail(TAIL)
        )
    }

    /// `/readyz`, whatever it answers.
    pub fn readyz(&self) -> anyhow::Result<HttpResponse> {
        net::http_get(self.http_port, "/readyz")
    }

    /// A scrape of `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let response = net::http_get(self.http_port, "/metrics")
            .with_context(|| format!("scraping the writer's /metrics ({})", self.who()))?;
        Ok(response.body)
    }

    /// SIGTERM, without waiting.
    pub fn signal_terminate(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGTERM, then blocks until the process exits (within `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal_terminate()?;
        self.wait_exit(timeout)
            .context("ponix-writer did not stop after SIGTERM")
    }

    /// SIGKILL, as a crash would (`docker kill` for a container), and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10))
    }

    /// Blocks until the process exits by itself, for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{}", self.still_running_error(timeout));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The error for a writer that did not exit within `timeout`.
    pub fn still_running_error(&self, timeout: Duration) -> String {
        format!(
            "ponix-writer ({}) did not exit within {timeout:?}; its log ends with:\n{}",
            self.who(),
            self.log_tail(TAIL)
        )
    }

    /// The peak resident set size so far, where procfs tells.
    pub fn peak_rss_bytes(&mut self) -> Option<u64> {
        self.note_peak_rss();
        self.peak_rss_bytes
    }

    fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        match &mut self.runner {
            // Our unreaped child: the pid cannot have been recycled.
            Runner::Host(_) => process::signal(self.pid, signal as i32)
                .with_context(|| format!("sending {signal} to ponix-writer (pid {})", self.pid)),
            Runner::Container(container) => {
                container.signal(signal.as_str().trim_start_matches("SIG"))
            }
        }
    }

    /// `VmHWM` is gone once the process is a zombie, so it is read on every look.
    fn note_peak_rss(&mut self) {
        if self.pid == 0 {
            return;
        }
        if let Some(bytes) = peak_rss_bytes(self.pid) {
            self.peak_rss_bytes = Some(bytes);
        }
    }
}

/// True once the process has ended, without reaping it (`WNOWAIT`), so that its
/// zombie's CPU times can still be read.
#[cfg(target_os = "linux")]
fn has_exited(child: &mut Child) -> anyhow::Result<bool> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let status = waitid(
        Id::Pid(nix::unistd::Pid::from_raw(child.id() as i32)),
        flags,
    )
    .context("asking whether the writer has exited")?;
    Ok(!matches!(status, WaitStatus::StillAlive))
}

#[cfg(not(target_os = "linux"))]
fn has_exited(child: &mut Child) -> anyhow::Result<bool> {
    Ok(child.try_wait()?.is_some())
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        // A container removes itself when its handle drops.
        if let (Runner::Host(child), None) = (&mut self.runner, self.exit) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The writer's command line and environment: `parent`'s variables but its
/// `PONIX_*` ones, then `vars`, then the HTTP address.
fn command<K: AsRef<str>, V: AsRef<str>>(
    binary: &Path,
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    vars: &[(K, V)],
    http_port: u16,
) -> Command {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(
            parent
                .into_iter()
                .filter(|(key, _)| !key.to_string_lossy().starts_with("PONIX_")),
        )
        .envs(vars.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .env("PONIX_HTTP_ADDR", format!("127.0.0.1:{http_port}"));
    command
}

/// `VmHWM` from `/proc/<pid>/status`, in bytes.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("localenv-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A stand-in for the writer: a shell that prints its environment and then
    /// burns CPU until it is told to stop.
    fn shell_writer(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-writer");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_writer_sees_only_the_variables_it_is_given() {
        let parent = [
            ("PATH", "/usr/bin:/bin"),
            ("PONIX_CLICKHOUSE_PASSWORD", "from the developer's shell"),
            ("PONIX_HTTP_ADDR", "0.0.0.0:80"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let command = command(
            Path::new("/bin/true"),
            parent,
            &[("PONIX_NATS_URL", "nats://x:1")],
            4321,
        );
        let mut env: Vec<(String, Option<String>)> = command
            .get_envs()
            .map(|(k, v)| {
                let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
                (text(k), v.map(text))
            })
            .collect();
        env.sort();
        let set = |k: &str, v: &str| (k.to_owned(), Some(v.to_owned()));
        assert_eq!(
            env,
            [
                set("PATH", "/usr/bin:/bin"),
                set("PONIX_HTTP_ADDR", "127.0.0.1:4321"),
                set("PONIX_NATS_URL", "nats://x:1"),
            ]
        );
    }

    #[test]
    fn the_spawned_process_gets_that_environment_and_its_port() {
        let dir = scratch("env");
        let binary = shell_writer(&dir, "env | grep '^PONIX_' | sort");
        let log = dir.join("w.log");
        let mut writer = WriterProcess::spawn(
            &binary,
            &[("PONIX_NATS_URL", "nats://x:1")],
            &log,
            Log::Truncate,
        )
        .unwrap();
        assert!(writer.wait_exit(Duration::from_secs(10)).unwrap().success());
        let printed = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            printed,
            format!(
                "PONIX_HTTP_ADDR=127.0.0.1:{}\nPONIX_NATS_URL=nats://x:1\n",
                writer.http_port()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn appending_keeps_earlier_incarnations() {
        let dir = scratch("append");
        let binary = shell_writer(&dir, "echo ran");
        let log = dir.join("w.log");
        for mode in [Log::Truncate, Log::Append, Log::Append] {
            let mut writer = WriterProcess::spawn::<&str, &str>(&binary, &[], &log, mode).unwrap();
            writer.wait_exit(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\nran\nran\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_exit_before_ready_fails_the_wait_at_once_with_the_log() {
        let dir = scratch("exit");
        let binary = shell_writer(&dir, "echo 'config error: PONIX_X is bad'; exit 3");
        let mut writer =
            WriterProcess::spawn::<&str, &str>(&binary, &[], &dir.join("w.log"), Log::Truncate)
                .unwrap();
        let err = writer
            .wait_ready(Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("PONIX_X is bad"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn terminate_reports_the_exit_and_the_cpu_the_process_used() {
        let dir = scratch("cpu");
        // Busy until SIGTERM, so that its CPU time is above zero ticks.
        let binary = shell_writer(&dir, "trap 'exit 0' TERM\necho busy\nwhile :; do :; done");
        let log = dir.join("w.log");
        let mut writer =
            WriterProcess::spawn::<&str, &str>(&binary, &[], &log, Log::Truncate).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while process::cpu_seconds(&writer.pid().to_string()).unwrap_or_default() < 0.05 {
            assert!(Instant::now() < deadline, "the busy loop used no CPU");
            std::thread::sleep(POLL);
        }
        assert!(writer.peak_rss_bytes().is_some_and(|bytes| bytes > 0));
        let status = writer.terminate(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{status}");
        let usage = writer.usage().expect("exited");
        assert!(
            usage
                .cpu
                .is_some_and(|cpu| cpu >= Duration::from_millis(50)),
            "{usage:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dropped_handle_kills_its_process() {
        let dir = scratch("drop");
        let binary = shell_writer(&dir, "exec sleep 300");
        let writer =
            WriterProcess::spawn::<&str, &str>(&binary, &[], &dir.join("w.log"), Log::Truncate)
                .unwrap();
        let pid = writer.pid();
        drop(writer);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} outlived its handle"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
