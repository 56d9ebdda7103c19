//! The `main` of an integration-test binary (`harness = false`).
//!
//! Each test is an `async fn(Endpoints) -> anyhow::Result<()>` run on its own
//! Tokio runtime. Without endpoints, plain `cargo test` reports the tests as
//! ignored and says how to run them; with `PONIX_REQUIRE_INFRA=1` (set by
//! `cargo xtask e2e`) they fail instead, so nothing is skipped silently.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::endpoints::{Endpoints, HOW_TO_START, REQUIRE_INFRA_VAR};

pub type TestFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub struct Test {
    pub name: &'static str,
    pub body: fn(Endpoints) -> TestFuture,
}

/// Declares the integration tests of a binary and generates its `main`.
///
/// ```text
/// testkit::integration_tests!(batch_of_one_round_trips, dead_letters_invalid_messages);
/// ```
#[macro_export]
macro_rules! integration_tests {
    ($($test:path),+ $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::harness::run(vec![$(
                $crate::harness::Test {
                    name: stringify!($test),
                    body: |endpoints| ::std::boxed::Box::pin($test(endpoints)),
                }
            ),+])
        }
    };
}

pub fn run(tests: Vec<Test>) -> ExitCode {
    let args = Arguments::from_args();
    let required = std::env::var(REQUIRE_INFRA_VAR).is_ok_and(|value| value == "1");
    let endpoints = match Endpoints::discover().and_then(check_reachable) {
        Ok(found) => found,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let missing = endpoints.is_none();
    if missing && required {
        eprintln!(
            "error: {REQUIRE_INFRA_VAR}=1 but no NATS/ClickHouse endpoints were found: {HOW_TO_START}"
        );
    } else if missing {
        eprintln!(
            "note: {} integration tests are ignored: no NATS/ClickHouse endpoints were found \
             (PONIX_NATS_URL/PONIX_CLICKHOUSE_URL or .tools/run/endpoints.env). To run them, {HOW_TO_START}.",
            tests.len()
        );
    }

    let trials = tests
        .into_iter()
        .map(|test| {
            let endpoints = endpoints.clone();
            Trial::test(test.name, move || run_one(test.body, endpoints))
                .with_ignored_flag(missing && !required)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn run_one(body: fn(Endpoints) -> TestFuture, endpoints: Option<Endpoints>) -> Result<(), Failed> {
    let Some(endpoints) = endpoints else {
        return Err(format!("no NATS/ClickHouse endpoints: {HOW_TO_START}").into());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| format!("building a Tokio runtime: {err}"))?;
    runtime
        .block_on(body(endpoints))
        // `{:#}` prints the whole context chain without a backtrace.
        .map_err(|err| format!("{err:#}").into())
}

/// Endpoints read from a stale env file (the processes are gone) fail here with
/// the fix, rather than as a connection error in every test.
fn check_reachable(endpoints: Option<Endpoints>) -> anyhow::Result<Option<Endpoints>> {
    let Some(endpoints) = endpoints else {
        return Ok(None);
    };
    let port = endpoints.clickhouse_port()?;
    let answered =
        localenv::net::http_get(port, "/ping").is_ok_and(|response| response.status == 200);
    if !answered {
        anyhow::bail!(
            "ClickHouse at {} does not answer /ping; the endpoints may be stale: {HOW_TO_START}",
            endpoints.clickhouse_url
        );
    }
    Ok(Some(endpoints))
}
