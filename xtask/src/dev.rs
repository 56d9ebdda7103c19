//! `cargo xtask dev`: the whole pipeline running locally, for a newcomer to watch.
//!
//! Infrastructure up (compose where a Docker engine answers and the compose plugin
//! is installed, local processes otherwise; `--backend` chooses), then the writer,
//! which runs the migrations and its demo producer: a host process, or the stack's
//! container.
//! Every few seconds a line shows the rows stored so far, queried from
//! ClickHouse. Ctrl-C stops the writer gracefully and tears everything down.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::{Engine, Running};
use localenv::net::http_get;
use localenv::writer::{Log, WriterProcess};
use xshell::{Shell, cmd};

use crate::choices::Backend;
use crate::compose::{self, ComposeBackend};
use crate::flags;
use crate::stack::{RowCounter, Stack, writer_image};
use crate::tools;

/// How often the row count is printed.
const REPORT_EVERY: Duration = Duration::from_secs(3);
/// `--until-rows` gives up after this long.
const UNTIL_ROWS_DEADLINE: Duration = Duration::from_secs(120);
const DEFAULT_INTERVAL_MS: u64 = 200;

/// The backend to run on, and why: the one asked for; with none, compose where a
/// Docker engine answers and compose is installed, else local processes.
pub fn choose_backend(choice: Option<Backend>) -> (Backend, &'static str) {
    match choice {
        Some(backend) => (backend, "chosen with --backend"),
        None => match compose::default_backend_reason() {
            (true, why) => (Backend::Compose, why),
            (false, why) => (Backend::Local, why),
        },
    }
}

impl flags::Dev {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let layout = Layout::new(&sh.current_dir());
        let (backend, why) = choose_backend(self.backend);
        let name = match backend {
            Backend::Compose => "compose",
            Backend::Local => "local processes",
        };
        eprintln!("backend: {name} ({why}; `--backend local|compose` chooses)");
        match backend {
            Backend::Local => self.run_local(sh, &layout),
            Backend::Compose => self.run_compose(sh, &layout),
        }
    }

    fn run_local(&self, sh: &Shell, layout: &Layout) -> anyhow::Result<()> {
        tools::install_runtime(sh, layout)?;
        let engine = Engine::choose(self.clickhouse)?;
        let mut environment = Running::start(layout, engine, false)?;
        let result = self.run_writer(sh, layout, &environment);
        if result.is_err() {
            localenv::local::dump_logs(layout);
        }
        eprintln!("tearing down ...");
        environment.teardown()?;
        eprintln!("stopped; nothing is left running");
        result
    }

    fn run_writer(&self, sh: &Shell, layout: &Layout, environment: &Running) -> anyhow::Result<()> {
        eprintln!("building ponix-writer ...");
        cmd!(sh, "cargo build --quiet --package ponix-writer")
            .run()
            .context("building the writer")?;
        let binary = layout.root.join("target/debug/ponix-writer");
        let interval = self.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        let mut vars: Vec<(String, String)> = environment
            .endpoints
            .env_vars(layout)
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        vars.push(("PONIX_DEMO_INTERVAL_MS".into(), interval.to_string()));
        let log_path = layout.logs_dir().join("writer.log");
        let writer = WriterProcess::spawn(&binary, &vars, &log_path, Log::Truncate)?;
        let http_port = writer.http_port();

        let endpoints = &environment.endpoints;
        println!(
            "\nponix-writer is running with its demo producer (one envelope every {interval} ms).\n\
             \n  NATS         {}\n  ClickHouse   {}  (database ponix, table processed_envelopes)\n  \
             writer       http://127.0.0.1:{http_port}/healthz  /readyz  /metrics\n  logs         {}\n\
             \nPress Ctrl-C to stop and tear everything down.\n",
            endpoints.nats_url(),
            endpoints.clickhouse_url(),
            layout.logs_dir().display(),
        );
        let clickhouse = RowCounter {
            port: endpoints.clickhouse_port,
            credentials: None,
        };
        watch_rows(&clickhouse, self.until_rows, writer)
    }

    fn run_compose(&self, sh: &Shell, layout: &Layout) -> anyhow::Result<()> {
        let image = writer_image(sh, layout, None)?;
        let interval = self.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        eprintln!("starting the compose stack (nats, clickhouse, writer {image}) ...");
        let mut stack = Stack::up(
            sh,
            layout,
            ComposeBackend::dev(layout),
            image,
            interval,
            false,
        )?;
        let published = stack.published;
        println!(
            "\nponix-writer is running in its container with its demo producer (one envelope \
             every {interval} ms).\n\n  NATS         {} (monitoring {})\n  ClickHouse   {}  \
             (database ponix, table processed_envelopes)\n  writer       {}/healthz  /readyz  \
             /metrics\n  logs         docker compose -p {} logs -f\n\
             \nPress Ctrl-C to stop and tear everything down.\n",
            published.nats_url(),
            published.nats_monitor_url(),
            published.clickhouse_url(),
            published.writer_url(),
            compose::DEV_PROJECT,
        );
        let result = RowCounter::for_compose(layout, published.clickhouse).and_then(|counter| {
            watch_rows_until_interrupted(&counter, published.writer, self.until_rows, || Ok(()))
        });
        if result.is_err() {
            let _ = stack.backend.save_logs(sh, layout);
        }
        eprintln!("tearing down ...");
        stack.down(sh)?;
        eprintln!("stopped; nothing is left running");
        result
    }
}

/// Waits for the writer, watches the rows until Ctrl-C (or `until_rows`), then stops
/// the writer gracefully. An early error drops `writer`, which kills it.
fn watch_rows(
    clickhouse: &RowCounter,
    until_rows: Option<u64>,
    mut writer: WriterProcess,
) -> anyhow::Result<()> {
    writer.wait_ready(Duration::from_secs(120))?;
    eprintln!("writer ready: migrations applied, consuming");

    let writer_port = writer.http_port();
    let result = watch_rows_until_interrupted(clickhouse, writer_port, until_rows, || match writer
        .try_exit(
    )? {
        Some(status) => bail!(
            "ponix-writer exited with {status}:\n{}",
            writer.log_tail(30)
        ),
        None => Ok(()),
    });

    // SIGTERM: the writer finishes its in-flight batch and exits.
    if let Err(err) = writer.terminate(Duration::from_secs(40)) {
        eprintln!("{err:#}; killing it");
        writer.kill()?;
    }
    result
}

/// Prints the stored-row count every few seconds until Ctrl-C, or until
/// `until_rows` rows are stored.
fn watch_rows_until_interrupted(
    clickhouse: &RowCounter,
    writer_port: u16,
    until_rows: Option<u64>,
    mut check_writer: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut previous = 0;
    let mut next_report = Instant::now();
    while !localenv::interrupt::interrupted() {
        check_writer()?;
        if Instant::now() >= next_report {
            let rows = clickhouse.stored_rows()?;
            let ready = http_get(writer_port, "/readyz")
                .map(|r| r.status == 200)
                .unwrap_or(false);
            println!(
                "[{:>5.0}s] rows stored: {rows} (+{} since the last line){}",
                started.elapsed().as_secs_f64(),
                rows.saturating_sub(previous),
                if ready { "" } else { "  writer NOT ready" }
            );
            previous = rows;
            next_report = Instant::now() + REPORT_EVERY;
            if let Some(target) = until_rows {
                if rows >= target {
                    println!("{rows} rows stored: done");
                    return Ok(());
                }
                if started.elapsed() > UNTIL_ROWS_DEADLINE {
                    bail!("only {rows} of {target} rows stored after {UNTIL_ROWS_DEADLINE:?}");
                }
            }
        }
        // A short tick keeps Ctrl-C responsive between reports.
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\ninterrupted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_flag_wins_over_the_probe() {
        assert_eq!(choose_backend(Some(Backend::Local)).0, Backend::Local);
        assert_eq!(choose_backend(Some(Backend::Compose)).0, Backend::Compose);
    }
}
