//! The integration tests that start private NATS and ClickHouse instances, run once
//! more with those instances on a container backend of testkit
//! (`PONIX_TEST_BACKEND=containers` or `compose`): the same fault tests, with the
//! faults done the container way. A step of `cargo xtask e2e` ([`run`]), and with
//! the drills on that backend, `cargo xtask test-containers` (GitHub Actions' e2e
//! workflow, `.ci/run`).
//!
//! The images are testkit's choice: `PONIX_TEST_NATS_IMAGE` and
//! `PONIX_TEST_CLICKHOUSE_IMAGE` when set (they pass through), otherwise
//! `.tools/docker/images.env` over `pins.env`.

use std::process::Command;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::{self, Engine, Running};
use xshell::Shell;

use crate::choices::TestBackend;
use crate::drill;
use crate::flags;
use crate::steps::{Steps, libtest_totals, run_teed};
use crate::tools;

/// Envelopes per drill, as under e2e.
const DRILL_MESSAGES: u64 = 2_000;

impl flags::TestContainers {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let layout = Layout::new(&sh.current_dir());
        let backend = self.backend.unwrap_or(TestBackend::Containers);
        if backend == TestBackend::Local {
            bail!(
                "test-containers runs on `containers` or `compose`; the local backend is `cargo xtask e2e`'s"
            );
        }
        let messages = self.messages.unwrap_or(DRILL_MESSAGES);
        let mut steps = Steps::new("test-containers");
        let mut running: Option<Running> = None;
        steps.run("tools", || {
            tools::install_runtime(sh, &layout)?;
            Ok("goose, nats-server, chDB venv".into())
        });
        // The shared endpoints the integration tests also use stay local processes.
        steps.run("shared endpoints up (local)", || {
            let started = Running::start(&layout, Engine::choose(None)?, false)?;
            let figure = format!(
                "{} {}",
                started.endpoints.nats_url(),
                started.endpoints.clickhouse_url()
            );
            running = Some(started);
            Ok(figure)
        });
        let env = || {
            running
                .as_ref()
                .map(|running| running.endpoints.env_vars(&layout))
                .context("the shared endpoints are not up")
        };
        steps.run(&format!("integration tests ({})", backend.as_str()), || {
            run(&layout, &env()?, backend.as_str())
        });
        steps.run(&format!("drills ({})", backend.as_str()), || {
            let mut env = env()?;
            env.push(("PONIX_TEST_BACKEND", backend.as_str().to_owned()));
            drill::run_all(&layout, &env, messages)
        });
        if let Some(mut running) = running.take() {
            if steps.failed() {
                local::dump_logs(&layout);
            }
            steps.run_always("teardown", || {
                Ok(format!("stopped {}", running.teardown()?.join(", ")))
            });
        }
        steps.run_always("no container left", no_container_left);
        steps.finish()
    }
}

/// testkit labels its containers `ponix.test=testkit-<pid>` and removes them on drop;
/// any still there once its test binaries exited is a leak: named, then removed.
fn no_container_left() -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(["ps", "-a", "--filter", "label=ponix.test", "--format"])
        .arg("{{.ID}} {{.Label \"ponix.test\"}} {{.Names}}")
        .output()
        .context("listing containers (`docker ps`)")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let left: Vec<&str> = listing
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|v| v.starts_with("testkit-"))
        })
        .collect();
    if left.is_empty() {
        return Ok("none".into());
    }
    for line in &left {
        if let Some(id) = line.split_whitespace().next() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
    }
    bail!(
        "testkit left {} container(s) behind (now removed): {}",
        left.len(),
        left.join("; ")
    )
}

/// The test targets whose tests call `testkit::infra::Managed::private_*`.
pub const TARGETS: &[&str] = &["integration", "lease", "streams"];

/// Runs [`TARGETS`] with `backend` (`containers` or `compose`) against the shared
/// endpoints in `env`; returns the step's figure.
pub fn run(
    layout: &Layout,
    env: &[(&'static str, String)],
    backend: &str,
) -> anyhow::Result<String> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&layout.root)
        .args(["test", "--locked", "-p", "ponix-writer"]);
    for target in TARGETS {
        cargo.args(["--test", target]);
    }
    cargo.envs(env.iter().map(|(key, value)| (*key, value)));
    cargo
        .env("PONIX_TEST_BACKEND", backend)
        .env("PONIX_REQUIRE_INFRA", "1")
        .env("INSTA_UPDATE", "no");
    let output = run_teed(cargo)?;
    let (passed, failed, ignored) = libtest_totals(&output);
    if ignored > 0 {
        bail!("{ignored} test(s) were ignored; under e2e every test must run");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(format!(
        "{passed} passed, {failed} failed ({backend} backend)"
    ))
}
