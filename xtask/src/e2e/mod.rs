//! `cargo xtask e2e`: everything, end to end, against real NATS and ClickHouse.
//! This is the README's test command and what `.ci/run` calls.
//!
//! `--backend local` (the default) runs every check against local processes;
//! `--backend compose` runs the short compose pass ([`compose_pass`]): the stack
//! from docker/compose.yaml, the writer in its container.

mod compose_pass;

use std::process::Command;

use anyhow::bail;
use localenv::Layout;
use localenv::local::{self, Engine, Running};
use xshell::Shell;

use crate::bench;
use crate::choices::{Backend, Payload};
use crate::container_tests;
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
        // Not chosen by whether Docker answers: a test command that quietly skips
        // half its checks on a machine without Docker would pass for the wrong reason.
        match self.backend {
            None => {
                eprintln!(
                    "backends: local processes, then compose and testcontainers \
                     (`--backend local` or `--backend compose` runs one pass)"
                );
                let mut steps = Steps::new("e2e");
                self.local_pass(sh, &layout, &mut steps, true);
                // The image the local pass's image step built and checked.
                let image = format!("ponix-writer:{}", crate::image::workspace_version(&layout)?);
                compose_pass::add_steps(sh, &layout, &mut steps, Some(image));
                self.closing_steps(sh, &layout, &mut steps);
                steps.finish()
            }
            Some(Backend::Local) => {
                eprintln!("backend: local processes (no Docker needed)");
                let mut steps = Steps::new("e2e");
                self.local_pass(sh, &layout, &mut steps, false);
                self.closing_steps(sh, &layout, &mut steps);
                steps.finish()
            }
            Some(Backend::Compose) => {
                eprintln!("backend: compose (docker/compose.yaml, the writer in its container)");
                let mut steps = Steps::new("e2e (compose)");
                compose_pass::add_steps(sh, &layout, &mut steps, None);
                steps.finish()
            }
        }
    }

    /// Everything against local processes; with `containers`, first the Docker
    /// host and the writer image (built and checked), and the fault tests once more
    /// with their private instances in testcontainers.
    fn local_pass(&self, sh: &Shell, layout: &Layout, steps: &mut Steps, containers: bool) {
        let layout = layout.clone();
        let mut infra: Option<Infra> = None;

        steps.run("tools", || {
            tools::install_all(sh, &layout)?;
            Ok("goose, nats-server, chDB venv, linters".into())
        });
        steps.run("deploy-file lint", || lint::run_checks(sh, &layout));
        if containers {
            steps.run("docker host", || crate::docker::ensure_host(sh, &layout));
            steps.run("image (build and checks)", || {
                let image = flags::Image {
                    name: None,
                    registry: None,
                    platform: None,
                    push: false,
                    dry_run: false,
                    from_host: false,
                    from_source: false,
                };
                image.run(sh)?;
                Ok(format!(
                    "ponix-writer:{}: every check passed (table above)",
                    crate::image::workspace_version(&layout)?
                ))
            });
        } else {
            // Without Docker, the plan at least: its tags and commands are computed.
            steps.run("image plan (dry run)", || {
                let plan = flags::Image {
                    name: None,
                    registry: None,
                    platform: None,
                    push: false,
                    dry_run: true,
                    from_host: false,
                    from_source: false,
                };
                plan.run(sh)?;
                Ok("tags and commands printed above".into())
            });
        }
        steps.run("infrastructure up", || {
            let started = Infra::start(&layout, self)?;
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
        let package_test = |target: &str| writer_test(&layout, &env()?, target);
        steps.run("migrations", || package_test("migrations"));
        steps.run("workspace tests", || workspace_tests(&layout, &env()?));
        steps.run("struct-json round-trips", || package_test("roundtrip"));
        steps.run("pipeline", || package_test("pipeline"));
        if containers {
            // The fault tests once more, their private instances in testcontainers.
            steps.run("integration tests (containers)", || {
                container_tests::run(&layout, &env()?, "containers")
            });
        }
        steps.run("drills", || {
            drill::run_all(&layout, &env()?, DRILL_MESSAGES)
        });
        if let Some(mut infra) = infra.take() {
            if steps.failed() {
                local::dump_logs(&layout);
            }
            steps.run_always("teardown", || infra.teardown());
        }
    }

    /// The fuzz run and the bench smoke run, after every pass is torn down (the bench
    /// starts a fresh local environment of its own).
    fn closing_steps(&self, sh: &Shell, layout: &Layout, steps: &mut Steps) {
        let layout = layout.clone();
        steps.run("fuzz (short run)", || {
            fuzz::short_run(sh, &layout, FUZZ_SECONDS)
        });

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
    }
}

/// The local processes the local pass runs against.
struct Infra(Running);

impl Infra {
    fn start(layout: &Layout, flags: &flags::E2e) -> anyhow::Result<Infra> {
        let engine = Engine::choose(flags.clickhouse)?;
        Ok(Infra(Running::start(layout, engine, false)?))
    }

    fn describe(&self) -> String {
        format!(
            "local: {} {}",
            self.0.endpoints.nats_url(),
            self.0.endpoints.clickhouse_url()
        )
    }

    fn env_vars(&self, layout: &Layout) -> anyhow::Result<Vec<(&'static str, String)>> {
        Ok(self.0.endpoints.env_vars(layout))
    }

    fn teardown(&mut self) -> anyhow::Result<String> {
        Ok(format!("stopped {}", self.0.teardown()?.join(", ")))
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

/// One integration-test target of the writer as a step: at least one test must run.
fn writer_test(
    layout: &Layout,
    env: &[(&'static str, String)],
    target: &str,
) -> anyhow::Result<String> {
    let totals = cargo_tests(layout, env, &["-p", "ponix-writer", "--test", target])?;
    Ok(totals.require_some()?.to_string())
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
