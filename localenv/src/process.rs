//! Processes that outlive the command that started them.
//!
//! A started process is recorded in a run directory as `<name>.pid` and
//! `<name>.argv` (one argument per line), so that a later command (or a test) can
//! find it, signal it, stop it, or start it again with the same arguments, the
//! same port and the same data directory.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// A process recorded in `run_dir`, with its output appended to `log`.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub name: String,
    pub pid: u32,
    pub argv: Vec<OsString>,
    pub run_dir: PathBuf,
    pub log: PathBuf,
}

impl Recorded {
    /// Starts `argv` in its own process group, so that a Ctrl-C meant for the
    /// harness does not reach it: the harness tears it down itself.
    pub fn spawn(
        name: &str,
        argv: Vec<OsString>,
        run_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;

        let (program, args) = argv.split_first().context("empty command line")?;
        for dir in [Some(run_dir), log.parent()].into_iter().flatten() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {}", Path::new(program).display()))?;
        let recorded = Recorded {
            name: name.to_owned(),
            pid: child.id(),
            argv,
            run_dir: run_dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        recorded.wait_until_exec_is_visible()?;
        recorded.write_record()?;
        Ok(recorded)
    }

    /// `spawn(2)` returns once the child has dropped the parent's memory, a moment
    /// before the kernel publishes the new command line: until then `/proc` shows
    /// an empty one, and `is_alive` would call the new process foreign (a health
    /// wait would report it as exited). A process that exits at once is left to
    /// the caller, which reads its log.
    fn wait_until_exec_is_visible(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + EXEC_VISIBLE_TIMEOUT;
        loop {
            let seen = look(self.pid);
            if matches!(seen, Seen::Gone) || seen.runs(&self.program()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Still our unreaped child, so the pid cannot have been recycled.
                let _ = signal(self.pid, Signal::SIGKILL as i32);
                bail!(
                    "{} (pid {}) did not show its command line within {EXEC_VISIBLE_TIMEOUT:?} of being started; killed it",
                    self.name,
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The process recorded under `name`, if it is still alive and still ours.
    pub fn find(name: &str, run_dir: &Path, log: &Path) -> anyhow::Result<Option<Self>> {
        let Ok(pid_text) = fs::read_to_string(pid_file(run_dir, name)) else {
            return Ok(None);
        };
        let pid = pid_text
            .trim()
            .parse()
            .with_context(|| format!("corrupt pid file for {name}"))?;
        let argv_text = fs::read_to_string(argv_file(run_dir, name))
            .with_context(|| format!("reading the recorded command line of {name}"))?;
        let recorded = Recorded {
            name: name.to_owned(),
            pid,
            argv: argv_text.lines().map(OsString::from).collect(),
            run_dir: run_dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        Ok(recorded.is_alive().then_some(recorded))
    }

    fn write_record(&self) -> anyhow::Result<()> {
        fs::write(
            pid_file(&self.run_dir, &self.name),
            format!("{}\n", self.pid),
        )?;
        let argv: String = self
            .argv
            .iter()
            .map(|arg| format!("{}\n", arg.to_string_lossy()))
            .collect();
        fs::write(argv_file(&self.run_dir, &self.name), argv)?;
        Ok(())
    }

    pub fn forget(&self) {
        let _ = fs::remove_file(pid_file(&self.run_dir, &self.name));
    }

    /// True when the pid is a live, non-zombie process running the recorded
    /// program, so that a recycled pid is never signalled.
    pub fn is_alive(&self) -> bool {
        process_matches(self.pid, &self.program())
    }

    fn program(&self) -> String {
        self.argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn freeze(&self) -> anyhow::Result<()> {
        signal(self.pid, Signal::SIGSTOP as i32).with_context(|| format!("freezing {}", self.name))
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.pid, Signal::SIGCONT as i32).with_context(|| format!("resuming {}", self.name))
    }

    pub fn kill(&self) -> anyhow::Result<()> {
        signal(self.pid, Signal::SIGKILL as i32)
            .with_context(|| format!("killing {}", self.name))?;
        self.wait_gone(Duration::from_secs(10))
    }

    /// SIGCONT (it may be frozen), SIGTERM, then SIGKILL once `timeout` passes.
    pub fn stop(&self, timeout: Duration) -> anyhow::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        let _ = signal(self.pid, Signal::SIGCONT as i32);
        signal(self.pid, Signal::SIGTERM as i32)
            .with_context(|| format!("stopping {}", self.name))?;
        if self.wait_gone(timeout).is_err() {
            eprintln!(
                "{} (pid {}) ignored SIGTERM for {timeout:?}; killing it",
                self.name, self.pid
            );
            self.kill()?;
        }
        Ok(())
    }

    /// Starts the same command line again (same port, same data) and records the new pid.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop(Duration::from_secs(15))?;
        let fresh = Recorded::spawn(&self.name, self.argv.clone(), &self.run_dir, &self.log)?;
        self.pid = fresh.pid;
        Ok(())
    }

    fn wait_gone(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.name,
                    self.pid
                );
            }
            // Polling the process table: a process that is not our child cannot be waited on.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The last `lines` lines of the process log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return format!("(no log at {})", path.display());
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn pid_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.pid"))
}

fn argv_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.argv"))
}

/// How long a freshly started process may take to show its own command line.
const EXEC_VISIBLE_TIMEOUT: Duration = Duration::from_secs(5);

fn process_matches(pid: u32, program: &str) -> bool {
    look(pid).runs(program)
}

enum Seen {
    /// No such pid, or only its zombie.
    Gone,
    /// `first_arg` is `None` where the platform does not tell (no procfs).
    Running { first_arg: Option<Vec<u8>> },
}

impl Seen {
    fn runs(&self, program: &str) -> bool {
        match self {
            Seen::Gone => false,
            Seen::Running { first_arg: None } => true,
            Seen::Running {
                first_arg: Some(first_arg),
            } => first_arg == program.as_bytes(),
        }
    }
}

fn look(pid: u32) -> Seen {
    reap_if_our_child(pid);
    if !Path::new("/proc/self").exists() {
        // No procfs (macOS): "the pid exists" is all there is to know.
        return match signal(pid, 0) {
            Ok(()) => Seen::Running { first_arg: None },
            Err(_) => Seen::Gone,
        };
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return Seen::Gone;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return Seen::Gone;
    }
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let first_arg = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
    Seen::Running {
        first_arg: Some(first_arg.to_vec()),
    }
}

/// Collects the exit status if `pid` is an exited child of ours, so it does not
/// linger as a zombie; a no-op for any other process (waitpid fails with ECHILD).
fn reap_if_our_child(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    }
}

/// Asks any process to shut down gracefully.
pub fn terminate(pid: u32) -> std::io::Result<()> {
    signal(pid, Signal::SIGTERM as i32)
}

/// kill(2): `signal` is a signal number, or 0 to ask only whether `pid` exists.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    let signal = match signal {
        0 => None,
        number => Some(Signal::try_from(number).map_err(std::io::Error::from)?),
    };
    nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(std::io::Error::from)
}

/// utime + stime of a process (all its threads) from /proc, in seconds: `pid` is a
/// number or `self`. A zombie keeps its times until it is reaped. `None` without procfs.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ")".
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("localenv-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_or_foreign_pid_is_not_ours() {
        assert!(!process_matches(u32::MAX / 2, "/nonexistent"));
        assert!(!process_matches(
            std::process::id(),
            "/definitely/not/this/program"
        ));
    }

    /// Health waits check `is_alive` first: a process that only looks foreign
    /// because the kernel has not published its command line yet would be
    /// reported as "exited". Seen in CI; on a loaded machine (six `yes` burners on
    /// two cores) without the wait, this loop failed within 16 to 125 starts.
    #[test]
    fn a_process_is_ours_as_soon_as_spawn_returns() {
        let dir = scratch("fresh");
        let log = dir.join("sleeper.log");
        for attempt in 0..200 {
            let argv = vec![OsString::from("/bin/sleep"), OsString::from("300")];
            let sleeper = Recorded::spawn("sleeper", argv, &dir, &log).unwrap();
            let alive = sleeper.is_alive();
            sleeper.kill().unwrap();
            assert!(alive, "start {attempt}: pid {} looked foreign", sleeper.pid);
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn spawned_processes_can_be_found_frozen_restarted_and_stopped() {
        let dir = scratch("lifecycle");
        let log = dir.join("sleeper.log");
        let argv = vec![OsString::from("/bin/sleep"), OsString::from("300")];
        let mut sleeper = Recorded::spawn("sleeper", argv, &dir, &log).unwrap();

        let found = Recorded::find("sleeper", &dir, &log)
            .unwrap()
            .expect("recorded");
        assert_eq!(found.pid, sleeper.pid);

        sleeper.freeze().unwrap();
        sleeper.resume().unwrap();

        let first_pid = sleeper.pid;
        sleeper.restart().unwrap();
        assert_ne!(sleeper.pid, first_pid);
        assert!(sleeper.is_alive());
        let found = Recorded::find("sleeper", &dir, &log)
            .unwrap()
            .expect("re-recorded");
        assert_eq!(found.pid, sleeper.pid, "restart rewrites the pid file");

        sleeper.stop(Duration::from_secs(5)).unwrap();
        assert!(!sleeper.is_alive());
        assert!(Recorded::find("sleeper", &dir, &log).unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
