//! `cargo xtask e2e`: everything, end to end, against real NATS and ClickHouse.
//! This is the README's test command and what `.ci/run` calls.

use std::process::Command;

use anyhow::bail;
use localenv::Layout;
use localenv::local::{self, Engine, Running};
use xshell::Shell;

use crate::flags;
use crate::steps::{Steps, libtest_totals, run_teed};
use crate::tools;

impl flags::E2e {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let layout = Layout::new(&sh.current_dir());
        let mut steps = Steps::new("e2e");
        let mut environment: Option<Running> = None;

        steps.run("tools", || {
            tools::install_all(sh, &layout)?;
            Ok("goose, nats-server, chDB venv".into())
        });
        steps.run("infrastructure up", || {
            let running =
                Running::start(&layout, Engine::parse(self.clickhouse.as_deref())?, false)?;
            let figure = format!(
                "{} {}",
                running.endpoints.nats_url(),
                running.endpoints.clickhouse_url()
            );
            environment = Some(running);
            Ok(figure)
        });
        steps.run("chDB endpoint tests", || chdb_endpoint_tests(&layout));
        let test_env = || environment.as_ref().expect("the environment is up");
        steps.run("migrations", || {
            cargo_tests(
                &layout,
                test_env(),
                &["-p", "ponix-writer", "--test", "migrations"],
            )
        });
        steps.run("workspace tests", || workspace_tests(&layout, test_env()));
        steps.run("struct-json round-trips", || {
            cargo_tests(
                &layout,
                test_env(),
                &["-p", "ponix-writer", "--test", "roundtrip"],
            )
        });
        steps.run("pipeline", || {
            cargo_tests(
                &layout,
                test_env(),
                &["-p", "ponix-writer", "--test", "pipeline"],
            )
        });

        if steps.failed() {
            local::dump_logs(&layout);
        }
        if let Some(mut running) = environment.take() {
            steps.run_always("teardown", || {
                let stopped = running.teardown()?;
                Ok(format!("stopped {}", stopped.join(", ")))
            });
        }
        steps.finish()
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

/// Integration-test targets that run as e2e steps of their own, so the
/// workspace step leaves them out.
const STEP_TARGETS: &[&str] = &["migrations", "pipeline", "roundtrip"];

/// Unit, property, doc and integration tests of every crate, except the
/// targets that are steps of their own.
fn workspace_tests(layout: &Layout, running: &Running) -> anyhow::Result<String> {
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
    let tests = cargo_tests(layout, running, &args)?;
    let docs = cargo_tests(layout, running, &["--workspace", "--doc"])?;
    Ok(format!("{tests}; doc tests: {docs}"))
}

/// The names of `tests/*.rs` and `tests/*/main.rs` targets in the workspace's crates.
fn integration_test_targets(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let mut targets = Vec::new();
    for krate in ["service", "testkit", "xtask", "xtask/localenv"] {
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
fn cargo_tests(layout: &Layout, running: &Running, args: &[&str]) -> anyhow::Result<String> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&layout.root)
        .args(["test", "--locked"])
        .args(args);
    for (key, value) in running.endpoints.env_vars(layout) {
        cargo.env(key, value);
    }
    cargo
        .env(testkit_require_var(), "1")
        .env("INSTA_UPDATE", "no");
    let output = run_teed(cargo)?;
    let (passed, failed, ignored) = libtest_totals(&output);
    if ignored > 0 {
        bail!("{ignored} test(s) were ignored; under e2e every test must run");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(format!("{passed} passed, {failed} failed"))
}

/// Mirrors `testkit::endpoints::REQUIRE_INFRA_VAR` (xtask does not link testkit).
fn testkit_require_var() -> &'static str {
    "PONIX_REQUIRE_INFRA"
}
