//! The writer binary for the integration tests: testkit's [`WriterProcess`],
//! pointed at the test endpoints, with its output in `.tools/logs/<name>.log`.

use std::time::Duration;

use anyhow::Context;

use testkit::Endpoints;
use testkit::localenv::Layout;
use testkit::writer::{Log, endpoint_vars};
pub use testkit::writer::{WriterProcess, terminate, wait_exit, wait_ready};

/// How long a writer may take to become ready (it runs the migrations first).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `ponix-writer` against `endpoints`, with `vars` on top (they win), and
/// waits until `/readyz` answers 200.
pub async fn start(
    name: &str,
    endpoints: &Endpoints,
    vars: &[(&str, String)],
) -> anyhow::Result<WriterProcess> {
    let mut writer = spawn(name, endpoints, vars)?;
    wait_ready(&mut writer, READY_TIMEOUT).await?;
    Ok(writer)
}

/// [`start`] without waiting for anything.
pub fn spawn(
    name: &str,
    endpoints: &Endpoints,
    vars: &[(&str, String)],
) -> anyhow::Result<WriterProcess> {
    let mut all = endpoint_vars(endpoints);
    all.push(("PONIX_LOG_LEVEL".into(), "info,ponix_writer=debug".into()));
    all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let log = Layout::workspace().logs_dir().join(format!("{name}.log"));
    WriterProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_ponix-writer")),
        &all,
        &log,
        Log::Truncate,
    )
}

/// Runs `ponix-writer <args>` (a one-shot command such as `migrate`) against
/// `endpoints` with `vars` on top, until it exits (within `timeout`): its exit code and
/// everything it printed.
pub async fn run_command(
    name: &str,
    endpoints: &Endpoints,
    args: &[&str],
    vars: &[(&str, String)],
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let mut all = endpoint_vars(endpoints);
    all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let log = Layout::workspace().logs_dir().join(format!("{name}.log"));
    let mut command = WriterProcess::spawn_with_args(
        std::path::Path::new(env!("CARGO_BIN_EXE_ponix-writer")),
        args,
        &all,
        &log,
        Log::Truncate,
    )?;
    let status = wait_exit(&mut command, timeout).await?;
    let output =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok((status.code(), output))
}

/// The sum of every sample of the metric `name` the writer serves now.
pub fn metric_sum(writer: &WriterProcess, name: &str) -> anyhow::Result<f64> {
    Ok(super::metrics::metric(&writer.metrics()?, name, &[]))
}
