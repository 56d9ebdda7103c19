//! `cargo xtask e2e`: everything, end to end, against real NATS and ClickHouse.
//! This is the README's test command and what `.ci/run` calls.

use std::process::Command;

use anyhow::bail;
use localenv::Layout;
use localenv::local::{self, Engine, Running};
use xshell::Shell;

use crate::bench;
use crate::choices::{Backend, Payload};
use crate::compose::{self, ComposeBackend};
use crate::container_tests;
use crate::dev::choose_backend;
use crate::drill;
use crate::flags;
use crate::fuzz;
use crate::lint;
use crate::steps::{Steps, libtest_totals, run_teed};
use crate::tools;

impl flags::E2e {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let layout = Layout::new(&sh.current_dir());
        let mut steps = Steps::new("e2e");
        let mut infra: Option<Infra> = None;

        steps.run("tools", || {
            tools::install_all(sh, &layout)?;
            Ok("goose, nats-server, chDB venv, linters".into())
        });
        steps.run("deploy-file lint", || lint::run_checks(sh, &layout));
        steps.run("image plan (dry run)", || {
            let plan = flags::Image {
                name: None,
                registry: None,
                platform: None,
                push: false,
                dry_run: true,
            };
            plan.run(sh)?;
            Ok("tags and commands printed above".into())
        });
        steps.run("infrastructure up", || {
            let started = Infra::start(sh, &layout, &self)?;
            let figure = started.describe();
            infra = Some(started);
            Ok(figure)
        });
        steps.run("chDB endpoint tests", || chdb_endpoint_tests(&layout));
        let env = || {
            infra
                .as_ref()
                .expect("the infrastructure is up")
                .env_vars(&layout)
        };
        let package_test = |target: &str| {
            let totals = cargo_tests(&layout, &env()?, &["-p", "ponix-writer", "--test", target])?;
            Ok(totals.require_some()?.to_string())
        };
        steps.run("migrations", || package_test("migrations"));
        steps.run("workspace tests", || workspace_tests(&layout, &env()?));
        steps.run("struct-json round-trips", || package_test("roundtrip"));
        steps.run("pipeline", || package_test("pipeline"));
        // The fault tests once more, their private instances in testcontainers.
        steps.run("integration tests (containers)", || {
            if !compose::docker_engine_available() {
                return Ok("skipped: no Docker engine answers (`docker info`)".into());
            }
            container_tests::run(&layout, &env()?, "containers")
        });
        steps.run("drills", || {
            drill::run_all(sh, &layout, &env()?, DRILL_MESSAGES)
        });
        steps.run("fuzz (short run)", || {
            fuzz::short_run(sh, &layout, FUZZ_SECONDS)
        });

        if let Some(mut infra) = infra.take() {
            if steps.failed() {
                infra.dump_logs(sh, &layout);
            }
            steps.run_always("teardown", || infra.teardown(sh));
        }
        // After teardown: the bench starts a fresh local environment of its own.
        steps.run("bench (smoke run)", || {
            bench::run_bench(
                sh,
                &layout,
                &bench::Options {
                    messages: BENCH_MESSAGES,
                    payload: Payload::Medium,
                    latency_seconds: BENCH_LATENCY_SECONDS,
                    engine: Engine::choose(self.clickhouse)?,
                },
            )
        });
        steps.finish()
    }
}

/// The infrastructure e2e runs against: local processes, or a compose project.
enum Infra {
    Local(Running),
    Compose {
        backend: ComposeBackend,
        torn_down: bool,
    },
}

impl Infra {
    fn start(sh: &Shell, layout: &Layout, flags: &flags::E2e) -> anyhow::Result<Infra> {
        match choose_backend(flags.backend) {
            Backend::Local => {
                let engine = Engine::choose(flags.clickhouse)?;
                Ok(Infra::Local(Running::start(layout, engine, false)?))
            }
            Backend::Compose => {
                let backend = ComposeBackend::e2e(layout);
                // Built before `up`, so that a failed start is torn down too.
                let mut infra = Infra::Compose {
                    backend: backend.clone(),
                    torn_down: false,
                };
                if let Err(err) = backend.up(sh, compose::INFRA_SERVICES) {
                    infra.dump_logs(sh, layout);
                    let _ = infra.teardown(sh);
                    return Err(err);
                }
                Ok(infra)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Infra::Local(running) => format!(
                "local: {} {}",
                running.endpoints.nats_url(),
                running.endpoints.clickhouse_url()
            ),
            Infra::Compose { backend, .. } => {
                format!(
                    "compose project {}: {} {}",
                    backend.project,
                    compose::NATS_URL,
                    compose::CLICKHOUSE_URL
                )
            }
        }
    }

    fn env_vars(&self, layout: &Layout) -> anyhow::Result<Vec<(&'static str, String)>> {
        match self {
            Infra::Local(running) => Ok(running.endpoints.env_vars(layout)),
            Infra::Compose { backend, .. } => backend.env_vars(layout),
        }
    }

    fn dump_logs(&self, sh: &Shell, layout: &Layout) {
        if let Infra::Compose { backend, .. } = self
            && let Err(err) = backend.save_logs(sh, layout)
        {
            eprintln!("collecting the compose logs failed: {err:#}");
        }
        // Writers started by the tests log under .tools/logs with either backend.
        local::dump_logs(layout);
    }

    fn teardown(&mut self, sh: &Shell) -> anyhow::Result<String> {
        match self {
            Infra::Local(running) => Ok(format!("stopped {}", running.teardown()?.join(", "))),
            Infra::Compose { backend, torn_down } => {
                *torn_down = true;
                backend.down(sh)?;
                Ok(format!(
                    "compose project {} removed with its volumes",
                    backend.project
                ))
            }
        }
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        // Local teardown is `Running`'s own drop guard; compose needs a shell.
        if let Infra::Compose {
            backend,
            torn_down: false,
        } = self
            && let Ok(sh) = Shell::new()
        {
            let _ = backend.down(&sh);
        }
    }
}

fn chdb_endpoint_tests(layout: &Layout) -> anyhow::Result<String> {
    let mut pytest = Command::new(layout.venv_python());
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(layout.chdb_server_dir());
    let output = run_teed(pytest)?;
    let summary = output
        .lines()
        .rev()
        .find(|line| line.contains(" passed"))
        .unwrap_or("no summary")
        .trim_matches(|c: char| c == '=' || c.is_whitespace())
        .to_owned();
    Ok(summary)
}

/// Envelopes per drill under e2e: enough for every fault to land mid-stream, small
/// enough for CI; `cargo xtask drill all` defaults to 10,000.
const DRILL_MESSAGES: u64 = 2_000;
/// A short fuzz run; `cargo xtask fuzz --seconds N` runs longer ones.
const FUZZ_SECONDS: u64 = 60;
/// The bench as a smoke test: it must build from a clean clone, run every phase and
/// account for every row. Its figures are printed, never asserted.
const BENCH_MESSAGES: u64 = 20_000;
const BENCH_LATENCY_SECONDS: u64 = 5;

/// Integration-test targets that run as e2e steps of their own, so the
/// workspace step leaves them out.
const STEP_TARGETS: &[&str] = &["drills", "migrations", "pipeline", "roundtrip"];

/// Unit, property, doc and integration tests of every crate, except the
/// targets that are steps of their own.
fn workspace_tests(layout: &Layout, env: &[(&'static str, String)]) -> anyhow::Result<String> {
    let mut args = vec![
        "--workspace".to_owned(),
        "--lib".to_owned(),
        "--bins".to_owned(),
    ];
    for target in integration_test_targets(layout)? {
        if !STEP_TARGETS.contains(&target.as_str()) {
            args.extend(["--test".to_owned(), target]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tests = cargo_tests(layout, env, &args)?;
    let docs = cargo_tests(layout, env, &["--workspace", "--doc"])?;
    Ok(format!("{}; doc tests: {}", tests.require_some()?, docs))
}

/// The names of `tests/*.rs` and `tests/*/main.rs` targets in the workspace's crates.
fn integration_test_targets(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let mut targets = Vec::new();
    for krate in ["service", "testkit", "bench", "xtask", "localenv"] {
        let Ok(entries) = std::fs::read_dir(layout.root.join(krate).join("tests")) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let is_target =
                path.extension().is_some_and(|ext| ext == "rs") || path.join("main.rs").is_file();
            if let (true, Some(stem)) = (is_target, path.file_stem()) {
                targets.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    targets.sort();
    Ok(targets)
}

/// `cargo test ARGS` with the endpoints in the environment, nothing allowed to
/// be skipped, and snapshots checked but never written.
fn cargo_tests(
    layout: &Layout,
    env: &[(&'static str, String)],
    args: &[&str],
) -> anyhow::Result<Totals> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&layout.root)
        .args(["test", "--locked"])
        .args(args);
    cargo.envs(env.iter().map(|(key, value)| (*key, value)));
    cargo
        .env(testkit_require_var(), "1")
        .env("INSTA_UPDATE", "no");
    let output = run_teed(cargo)?;
    let (passed, failed, ignored) = libtest_totals(&output);
    if ignored > 0 {
        bail!("{ignored} test(s) were ignored; under e2e every test must run");
    }
    Ok(Totals { passed, failed })
}

/// What a `cargo test` run reported.
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// A step whose tests all vanished (a renamed target, a filter typo) must not pass.
    fn require_some(self) -> anyhow::Result<Self> {
        if self.passed == 0 {
            bail!("no test ran");
        }
        Ok(self)
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// Mirrors `testkit::endpoints::REQUIRE_INFRA_VAR` (xtask does not link testkit).
fn testkit_require_var() -> &'static str {
    "PONIX_REQUIRE_INFRA"
}
