//! The docker CLI calls both container backends share: the pid Docker reports, and
//! the sweep of what an aborted test binary left behind, its containers and compose
//! projects (Drop removes them on a panic, but not when the binary is killed).

use std::process::Command;
use std::sync::Once;

use anyhow::{Context, bail};

/// The label on every container (and compose project) testkit starts, with
/// [`owner`] as its value. The key is shared with the harness's other test
/// containers (the writer's are `ponix.test=writer`), so one filter finds them all;
/// the sweep touches only values it wrote.
pub(super) const LABEL: &str = "ponix.test";
const OWNER_PREFIX: &str = "testkit-";

/// The label's value: this test binary's pid.
pub(super) fn owner() -> String {
    format!("{OWNER_PREFIX}{}", std::process::id())
}

/// Prefix of testkit's compose project names: `ponix-t-<pid>-<n>`.
pub(super) const PROJECT_PREFIX: &str = "ponix-t-";

/// What to run by hand after a test binary was killed mid-run on a container backend
/// (the next run sweeps testkit's; this removes every test container).
pub const STALE_CONTAINERS_HINT: &str =
    "docker rm -f -v $(docker ps -aq --filter label=ponix.test)";

/// ClickHouse's recommended open-file limit (compose.yaml's `CLICKHOUSE_NOFILE` default).
const CLICKHOUSE_NOFILE: u64 = 262_144;

/// The open-file limit to give ClickHouse: the recommended one, or this host's hard
/// limit where that is lower (runc refuses to start a container asking for more:
/// `error setting rlimit type 7`).
pub(super) fn clickhouse_nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| hard_nofile(&limits))
        .map_or(CLICKHOUSE_NOFILE, |hard| hard.min(CLICKHOUSE_NOFILE))
}

fn hard_nofile(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

/// Runs `docker args…` and returns its stdout; a failure quotes stderr.
pub(super) fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "running `docker {}`: is the docker CLI installed and on PATH?",
                args.join(" ")
            )
        })?;
    if !output.status.success() {
        bail!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The host pid of a running container's main process.
pub(super) fn container_pid(id: &str) -> anyhow::Result<u32> {
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", id])?;
    match pid.trim().parse::<u32>() {
        Ok(0) | Err(_) => bail!("container {id} is not running (State.Pid {:?})", pid.trim()),
        Ok(pid) => Ok(pid),
    }
}

/// Once per test binary: removes the containers and compose projects of test
/// binaries that are no longer running. Best effort: a failure here must not fail
/// the test that would start the next container (that start reports Docker's state).
pub(super) fn sweep_stale() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        if let Err(err) = sweep() {
            eprintln!("sweeping containers of earlier test runs: {err:#}");
        }
    });
}

fn sweep() -> anyhow::Result<()> {
    let listing = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        &format!(
            "{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}} {{{{.Label \"com.docker.compose.project\"}}}}"
        ),
    ])?;
    let mut containers = Vec::new();
    let mut projects = Vec::new();
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(id), Some(owner)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some(pid) = owner
            .strip_prefix(OWNER_PREFIX)
            .and_then(|pid| pid.parse().ok())
        else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        match fields
            .next()
            .filter(|project| project.starts_with(PROJECT_PREFIX))
        {
            Some(project) => projects.push(project.to_owned()),
            None => containers.push(id.to_owned()),
        }
    }
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        docker(&args)?;
    }
    projects.sort();
    projects.dedup();
    for project in projects {
        down_project(&project)?;
    }
    Ok(())
}

/// Takes a compose project down by name (the sweep of an aborted run's projects).
fn down_project(project: &str) -> anyhow::Result<()> {
    docker(&[
        "compose",
        "-p",
        project,
        "down",
        "--volumes",
        "--timeout",
        "5",
        "--remove-orphans",
    ])
    .map(drop)
}

/// Whether a process with this pid runs on this host (`/proc` where there is one;
/// elsewhere every owner counts as alive, and only the hint above helps).
fn alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.exists() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_the_hard_limit_of_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             unlimited            unlimited            processes\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(hard_nofile(limits), Some(20000));
        assert_eq!(
            hard_nofile("Max open files unlimited unlimited files"),
            None
        );
        assert!(clickhouse_nofile() <= CLICKHOUSE_NOFILE);
    }

    #[test]
    fn the_owner_label_names_this_binary() {
        assert_eq!(owner(), format!("testkit-{}", std::process::id()));
        assert!(alive(std::process::id()));
    }
}
