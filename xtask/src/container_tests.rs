//! The integration tests that start private NATS and ClickHouse instances, run once
//! more with those instances on a container backend of testkit
//! (`PONIX_TEST_BACKEND=containers` or `compose`): the same fault tests, with the
//! faults done the container way. A step of `cargo xtask e2e` ([`run`]).
//!
//! The images are testkit's choice: `PONIX_TEST_NATS_IMAGE` and
//! `PONIX_TEST_CLICKHOUSE_IMAGE` when set (they pass through), otherwise
//! `.tools/docker/images.env` over `pins.env`.

use std::process::Command;

use anyhow::bail;
use localenv::Layout;

use crate::steps::{libtest_totals, run_teed};

/// The test targets whose tests call `testkit::infra::Managed::private_*`.
pub const TARGETS: &[&str] = &["integration", "lease", "streams"];

/// Runs [`TARGETS`] with `backend` (`containers` or `compose`) against the shared
/// endpoints in `env`; returns the step's figure.
pub fn run(layout: &Layout, env: &[(&'static str, String)], backend: &str) -> anyhow::Result<String> {
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
    Ok(format!("{passed} passed, {failed} failed ({backend} backend)"))
}
