//! The writer binary for the integration tests: testkit's [`WriterProcess`],
//! pointed at the test endpoints, with its output in `.tools/logs/<name>.log`.

use std::time::Duration;

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
