//! The writer binary under measurement: started as a child process, watched through
//! `/readyz` and its consumer's backlog, and reaped with `wait4` so that its CPU time
//! and peak RSS come from the kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use localenv::net;
use localenv::process::log_tail;
use ponix_writer::sample::Payload;
use tokio::time::Instant;

use crate::clickhouse::Tables;
use crate::jetstream::Nats;
use crate::measure::{PHASE_DEADLINE, Progress, Rate, thousands};

/// How often the drain phase asks NATS for the consumer's backlog.
const BACKLOG_POLL: Duration = Duration::from_millis(50);
/// How often the latency phase looks for new rows. A row's latency is measured up to
/// the poll that first returned it, so it is overstated by up to this much.
pub const VISIBILITY_POLL: Duration = Duration::from_millis(20);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the kernel accounted to the writer process over its life.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_rss_bytes: u64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = self.peak_rss_bytes as f64 / (1024.0 * 1024.0);
        write!(f, "{:.1} s, {mib:.0} MiB", self.cpu.as_secs_f64())
    }
}

pub struct Drain {
    /// Start of the process until `/readyz` answered 200.
    pub ready: Duration,
    /// Ready until nothing was pending or unacknowledged.
    pub rate: Rate,
    pub usage: Usage,
    pub log: PathBuf,
}

pub struct Latency {
    pub published: u64,
    /// Publishes per second actually achieved.
    pub publish_rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub usage: Usage,
}

/// Starts the writer on the published backlog and times it until the consumer has
/// nothing pending or awaiting an ack (a message is acked only after its row
/// committed, so by then every row is stored).
pub async fn drain(
    binary: &Path,
    out_dir: &Path,
    nats: &Nats,
    messages: u64,
) -> anyhow::Result<Drain> {
    let log = out_dir.join("writer-drain.log");
    let mut writer = WriterProcess::spawn(binary, &log)?;
    let ready = writer.wait_ready().await?;
    let started = Instant::now();
    let mut progress = Progress::start();
    loop {
        let (pending, ack_pending) = nats.backlog().await?;
        if pending == 0 && ack_pending == 0 {
            break;
        }
        writer.require_running()?;
        if started.elapsed() > PHASE_DEADLINE {
            bail!(
                "the writer did not drain {messages} messages within {PHASE_DEADLINE:?} ({pending} pending, {ack_pending} unacknowledged); see {}",
                log.display()
            );
        }
        if progress.due() {
            println!(
                "  {} left ({:.0} rows/s so far)",
                thousands(pending + ack_pending),
                (messages - pending - ack_pending) as f64 / started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(BACKLOG_POLL).await;
    }
    let rate = Rate::new(messages, started.elapsed());
    let usage = writer.terminate().await?;
    Ok(Drain {
        ready,
        rate,
        usage,
        log,
    })
}

/// Starts a writer with nothing to do, publishes at `rate` per second for
/// `duration`, and measures for every envelope the time from its publish until a
/// query first returns its row.
#[allow(clippy::too_many_arguments)]
pub async fn latency(
    binary: &Path,
    out_dir: &Path,
    nats: &Nats,
    tables: &Tables,
    payload: Payload,
    backlog: u64,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let log = out_dir.join("writer-latency.log");
    let mut writer = WriterProcess::spawn(binary, &log)?;
    writer.wait_ready().await?;

    let expected = rate.saturating_mul(duration.as_secs());
    let publishing_failed = Arc::new(AtomicBool::new(false));
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    let publish_started = Instant::now();
    let publisher = {
        let failed = Arc::clone(&publishing_failed);
        let sent = &mut sent;
        async move {
            let result = nats
                .publish_paced(payload, backlog, rate, duration, |sequence, at| {
                    sent.push((sequence, at))
                })
                .await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        }
    };
    // The backlog used sequences 1..=backlog; the paced envelopes come after.
    let poller = async {
        let mut seen: HashMap<u64, Instant> =
            HashMap::with_capacity(usize::try_from(expected).unwrap_or(0));
        let mut floor = backlog;
        let mut ticker = tokio::time::interval(VISIBILITY_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        while (seen.len() as u64) < expected {
            ticker.tick().await;
            if publishing_failed.load(Ordering::Relaxed) {
                break;
            }
            if started.elapsed() > duration + PHASE_DEADLINE {
                bail!(
                    "only {} of {expected} rows became visible; see {}",
                    seen.len(),
                    log.display()
                );
            }
            let sequences = tables.sequences_above(floor).await?;
            let now = Instant::now();
            for sequence in sequences {
                seen.entry(sequence).or_insert(now);
            }
            while seen.contains_key(&(floor + 1)) {
                floor += 1;
            }
        }
        anyhow::Ok(seen)
    };
    let (published, seen) = tokio::join!(publisher, poller);
    let published = published?;
    let publish_rate = published as f64 / publish_started.elapsed().as_secs_f64().max(1e-9);
    let seen = seen?;
    let usage = writer.terminate().await?;

    let mut latencies: Vec<Duration> = Vec::with_capacity(sent.len());
    for (sequence, at) in &sent {
        let visible = seen.get(sequence).with_context(|| {
            format!("the row of stream sequence {sequence} never became visible")
        })?;
        latencies.push(visible.saturating_duration_since(*at));
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    if latencies.is_empty() {
        bail!("nothing was published in the latency phase");
    }
    Ok(Latency {
        published,
        publish_rate,
        p50: percentile(0.50),
        p99: percentile(0.99),
        max: *latencies.last().expect("non-empty"),
        usage,
    })
}

/// A running `ponix-writer`. Killed and reaped on drop unless it was terminated.
struct WriterProcess {
    pid: libc::pid_t,
    http_port: u16,
    log: PathBuf,
    started: Instant,
    reaped: bool,
}

impl WriterProcess {
    /// Starts the writer with this process's `PONIX_*` environment (the bench's
    /// configuration), its own HTTP port, and migrations off (they ran before the
    /// bench, and goose's memory would count in the writer's peak RSS).
    fn spawn(binary: &Path, log: &Path) -> anyhow::Result<WriterProcess> {
        let http_port = net::free_port()?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .env("PONIX_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // Dropping the handle neither kills nor waits; wait4 below reaps the child.
        drop(child);
        Ok(WriterProcess {
            pid,
            http_port,
            log: log.to_owned(),
            started: Instant::now(),
            reaped: false,
        })
    }

    /// Waits for `/readyz` to answer 200; returns the time since the start.
    async fn wait_ready(&mut self) -> anyhow::Result<Duration> {
        loop {
            self.require_running()?;
            let port = self.http_port;
            let answer =
                tokio::task::spawn_blocking(move || net::http_get(port, "/readyz")).await?;
            if matches!(answer, Ok(ref response) if response.status == 200) {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the writer was not ready within {READY_TIMEOUT:?}; its log ends with:\n{}",
                    log_tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn require_running(&mut self) -> anyhow::Result<()> {
        if let Some((status, _)) = self.try_reap()? {
            bail!(
                "the writer exited ({}) during the bench; its log ends with:\n{}",
                describe(status),
                log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// `wait4` without blocking: the exit status and usage once the process ended.
    // nix has no `wait4`, and the child's rusage is only to be had from it: the
    // bench's one unsafe block.
    #[allow(unsafe_code)]
    fn try_reap(&mut self) -> anyhow::Result<Option<(i32, Usage)>> {
        if self.reaped {
            bail!("the writer was already reaped");
        }
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter for wait4.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child with valid out-pointers.
        let pid = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        match pid {
            0 => Ok(None),
            pid if pid == self.pid => {
                self.reaped = true;
                Ok(Some((status, usage_of(&usage))))
            }
            _ => Err(std::io::Error::last_os_error()).context("waiting for the writer"),
        }
    }

    /// SIGTERM, then the usage once it exited (it must exit successfully).
    async fn terminate(mut self) -> anyhow::Result<Usage> {
        let high_water = self.high_water_rss();
        localenv::process::terminate(u32::try_from(self.pid).unwrap_or(0))
            .context("sending SIGTERM to the writer")?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some((status, usage)) = self.try_reap()? {
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    bail!(
                        "the writer exited ({}) after SIGTERM; its log ends with:\n{}",
                        describe(status),
                        log_tail(&self.log, 30)
                    );
                }
                return Ok(Usage {
                    peak_rss_bytes: high_water.unwrap_or(usage.peak_rss_bytes),
                    ..usage
                });
            }
            if Instant::now() > deadline {
                bail!("the writer did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl WriterProcess {
    /// The writer's own peak RSS so far (`VmHWM`), where /proc has it. Preferred to
    /// `wait4`'s `ru_maxrss`, which also counts the memory of the forked bench
    /// process before `exec` (the bench holds the ceiling's rows, so that would
    /// report the bench's size, not the writer's).
    fn high_water_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
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
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        if !self.reaped {
            // Our unreaped child, so the pid cannot have been recycled.
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

fn usage_of(usage: &libc::rusage) -> Usage {
    let seconds = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1_000);
    // Linux reports ru_maxrss in KiB, macOS in bytes.
    let unit: u64 = if cfg!(target_os = "macos") { 1 } else { 1_024 };
    Usage {
        cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_rss_bytes: (usage.ru_maxrss as u64).saturating_mul(unit),
    }
}

fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    }
}
