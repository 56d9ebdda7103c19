//! Whether a Docker engine answers here, and which CLI plugins are installed: how
//! `dev` chooses its backend, and what `lint` and `image` may run.

use std::time::Duration;

/// How long a probe may take: `docker info` against a dead socket can hang.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// True when a Docker engine answers `docker info` within a few seconds. False when
/// the CLI is missing, no daemon runs, or it does not answer in time.
pub fn docker_engine_available() -> bool {
    probe(&["info", "--format", "{{.ServerVersion}}"])
}

/// True when the compose plugin is installed (no engine needed to answer).
pub fn compose_available() -> bool {
    probe(&["compose", "version"])
}

/// True when the buildx plugin is installed (no engine needed to answer).
pub fn buildx_available() -> bool {
    probe(&["buildx", "version"])
}

/// Which backend a command gets when none is asked for, and why (printed).
pub fn default_backend_reason() -> (bool, &'static str) {
    if !docker_engine_available() {
        (
            false,
            "no Docker engine answers `docker info`, so local processes",
        )
    } else if !compose_available() {
        (
            false,
            "a Docker engine answers but the compose plugin is missing, so local processes",
        )
    } else {
        (true, "a Docker engine answers and compose is installed")
    }
}

/// Runs `docker args` with its output discarded; true when it exits 0 in time.
fn probe(args: &[&str]) -> bool {
    run_with_timeout("docker", args, PROBE_TIMEOUT)
}

pub fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> bool {
    let Ok(handle) = duct::cmd(program, args)
        .stdin_null()
        .stdout_null()
        .stderr_null()
        .unchecked()
        .start()
    else {
        return false;
    };
    match handle.wait_timeout(timeout) {
        Ok(Some(output)) => output.status.success(),
        _ => {
            let _ = handle.kill();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_no_engine() {
        assert!(!run_with_timeout(
            "/nonexistent/docker",
            &["info"],
            Duration::from_secs(1)
        ));
        assert!(!run_with_timeout("false", &[], Duration::from_secs(5)));
        assert!(run_with_timeout("true", &[], Duration::from_secs(5)));
        assert!(!run_with_timeout(
            "sleep",
            &["5"],
            Duration::from_millis(200)
        ));
    }
}
