//! A Docker engine that answers: found, or installed and started.
//!
//! On a Debian machine as root (this project's CI machines, which come without a
//! running daemon) it installs Debian's `docker.io` when `dockerd` is missing and
//! starts `dockerd` detached, logging to `.tools/docker/dockerd.log`, with its pid in
//! `.tools/docker/dockerd.pid` so that `cargo xtask docker --stop` stops exactly the
//! daemon it started. Anywhere else it says what to install.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::find_on_path;
use localenv::net::wait_until;
use localenv::process::signal;
use xshell::{Shell, cmd};

use super::probe::docker_engine_available;

/// dockerd 20.10 came up in about 2 s here; a first start that sets up overlay2 and
/// the bridge network can take longer on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn pid_file(layout: &Layout) -> PathBuf {
    layout.docker_dir().join("dockerd.pid")
}

pub fn log_file(layout: &Layout) -> PathBuf {
    layout.docker_dir().join("dockerd.log")
}

/// What happened, for the step's one-line figure.
pub enum Engine {
    AlreadyRunning(String),
    Started { version: String, installed: bool },
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::AlreadyRunning(version) => write!(f, "dockerd {version} (already running)"),
            Engine::Started { version, installed } => write!(
                f,
                "dockerd {version} ({}started by xtask)",
                if *installed {
                    "docker.io installed, "
                } else {
                    ""
                }
            ),
        }
    }
}

pub fn ensure(sh: &Shell, layout: &Layout) -> anyhow::Result<Engine> {
    if docker_engine_available() {
        return Ok(Engine::AlreadyRunning(server_version(sh)?));
    }
    let can_manage = is_root() && Path::new("/etc/debian_version").exists();
    if !can_manage {
        bail!(
            "no Docker engine answers `docker info`, and this is not a Debian machine where \
             xtask runs as root and can install one: install Docker Engine (docs.docker.com/engine/install) \
             and start it, or use `--backend local`"
        );
    }
    let mut installed = false;
    if find_on_path("dockerd").is_none() {
        eprintln!("[docker] installing Debian's docker.io (dockerd, containerd, runc) ...");
        cmd!(sh, "apt-get update -qq")
            .run()
            .context("`apt-get update` failed; check that Debian's package mirror is reachable")?;
        cmd!(sh, "apt-get install -y -qq docker.io")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .context("installing docker.io with apt-get")?;
        installed = true;
    }
    if find_on_path("docker").is_none() {
        bail!(
            "dockerd is installed but the docker CLI is not on PATH: install docker.io or docker-ce-cli"
        );
    }
    start_dockerd(layout)?;
    Ok(Engine::Started {
        version: server_version(sh)?,
        installed,
    })
}

fn start_dockerd(layout: &Layout) -> anyhow::Result<()> {
    let dir = layout.docker_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = log_file(layout);
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!(
        "[docker] starting dockerd (log: {}) ...",
        log_path.display()
    );
    let child = Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("duplicating the dockerd log handle")?,
        )
        .stderr(log)
        // Its own process group: Ctrl-C in this terminal must not take the daemon down
        // with xtask, since later commands use it.
        .process_group(0)
        .spawn()
        .context("starting dockerd")?;
    let pid = child.id();
    fs::write(pid_file(layout), format!("{pid}\n"))
        .with_context(|| format!("writing {}", pid_file(layout).display()))?;
    wait_until("dockerd (docker info)", START_TIMEOUT, || {
        if signal(pid, 0).is_err() {
            bail!(
                "dockerd exited; its log ends with:\n{}",
                localenv::process::log_tail(&log_path, 20)
            );
        }
        if !docker_engine_available() {
            bail!("docker info does not answer yet");
        }
        Ok(())
    })
}

fn server_version(sh: &Shell) -> anyhow::Result<String> {
    let format = "{{.ServerVersion}}";
    let version = cmd!(sh, "docker info --format {format}")
        .quiet()
        .read()
        .context("asking the Docker engine for its version")?;
    Ok(version.trim().to_owned())
}

/// Stops the dockerd that [`ensure`] started (a daemon xtask did not start is left
/// running), and fails if any container is left: a leftover container is a harness
/// bug the operator should see.
pub fn stop(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    let leftovers = if docker_engine_available() {
        let format = "{{.Names}}";
        cmd!(sh, "docker ps --all --format {format}")
            .quiet()
            .read()
            .context("listing containers")?
    } else {
        String::new()
    };
    let leftovers: Vec<&str> = leftovers.lines().filter(|l| !l.trim().is_empty()).collect();
    let pid_path = pid_file(layout);
    let stopped = match fs::read_to_string(&pid_path) {
        Err(_) => "no dockerd started by xtask, so the engine was left running",
        Ok(text) => {
            let pid: u32 = text
                .trim()
                .parse()
                .with_context(|| format!("parsing {}", pid_path.display()))?;
            if signal(pid, 0).is_ok() {
                localenv::process::terminate(pid).context("sending SIGTERM to dockerd")?;
                wait_until("dockerd to exit", STOP_TIMEOUT, || {
                    if signal(pid, 0).is_ok() && !is_zombie(pid) {
                        bail!("dockerd (pid {pid}) still runs");
                    }
                    Ok(())
                })?;
            }
            fs::remove_file(&pid_path)
                .with_context(|| format!("removing {}", pid_path.display()))?;
            "dockerd stopped"
        }
    };
    if !leftovers.is_empty() {
        bail!(
            "{stopped}, but `docker ps -a` was not empty: {} container(s) left behind: {}",
            leftovers.len(),
            leftovers.join(", ")
        );
    }
    Ok(format!("`docker ps -a` was empty; {stopped}"))
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// `/proc/self` belongs to the effective uid; this keeps xtask free of a libc binding.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}
