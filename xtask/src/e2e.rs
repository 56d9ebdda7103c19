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
        steps.run("workspace tests", || {
            let running = environment.as_ref().expect("the environment is up");
            workspace_tests(&layout, running)
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

fn workspace_tests(layout: &Layout, running: &Running) -> anyhow::Result<String> {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&layout.root)
        .args(["test", "--workspace", "--locked"]);
    for (key, value) in running.endpoints.env_vars(layout) {
        cargo.env(key, value);
    }
    // Nothing may be skipped under e2e: a test that cannot find its
    // infrastructure fails instead.
    cargo.env(testkit_require_var(), "1");
    let output = run_teed(cargo)?;
    let (passed, failed, ignored) = libtest_totals(&output);
    if ignored > 0 {
        bail!("{ignored} test(s) were ignored; under e2e every test must run");
    }
    Ok(format!(
        "{passed} passed, {failed} failed, {ignored} ignored"
    ))
}

/// Mirrors `testkit::endpoints::REQUIRE_INFRA_VAR` (xtask does not link testkit).
fn testkit_require_var() -> &'static str {
    "PONIX_REQUIRE_INFRA"
}
