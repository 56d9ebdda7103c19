//! `cargo xtask dev`: the whole pipeline running locally, for a newcomer to watch.
//!
//! Infrastructure up (compose where a Docker engine answers, local processes
//! otherwise), then the writer, which runs the migrations and its demo producer.
//! Every few seconds a line shows the rows stored so far, queried from
//! ClickHouse. Ctrl-C stops the writer gracefully and tears everything down.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::{Engine, Running};
use localenv::net::{http_get, http_post_with_headers};
use localenv::writer::{Log, WriterProcess};
use xshell::{Shell, cmd};

use crate::choices::Backend;
use crate::compose::{self, ComposeBackend};
use crate::flags;
use crate::tools;

/// How often the row count is printed.
const REPORT_EVERY: Duration = Duration::from_secs(3);
/// `--until-rows` gives up after this long.
const UNTIL_ROWS_DEADLINE: Duration = Duration::from_secs(120);
const DEFAULT_INTERVAL_MS: u64 = 200;

/// The backend to run on: the one asked for; with none, compose where a Docker
/// engine answers, else local processes.
pub fn choose_backend(choice: Option<Backend>) -> Backend {
    match choice {
        Some(backend) => backend,
        None if compose::docker_engine_available() => Backend::Compose,
        None => Backend::Local,
    }
}

impl flags::Dev {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let layout = Layout::new(&sh.current_dir());
        let backend = choose_backend(self.backend);
        eprintln!("backend: {backend:?}");
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
        let stack = ComposeBackend::dev(layout);
        let up = stack.up_stack_args();
        eprintln!("starting the compose stack (nats, clickhouse, writer) ...");
        let started = cmd!(sh, "docker {up...}")
            .run()
            .context("`docker compose up` failed");
        let result = started.and_then(|()| {
            println!(
                "\n  NATS         {} (monitoring {})\n  ClickHouse   {}\n  writer       {}/healthz\n\
                 \nPress Ctrl-C to stop and tear everything down.\n",
                compose::NATS_URL,
                compose::NATS_MONITOR_URL,
                compose::CLICKHOUSE_URL,
                compose::WRITER_URL
            );
            let settings = compose::load_settings(&layout.root)?;
            let clickhouse = RowCounter {
                port: port_of(compose::CLICKHOUSE_URL)?,
                credentials: Some((
                    settings
                        .get("PONIX_CLICKHOUSE_USERNAME")
                        .cloned()
                        .unwrap_or_default(),
                    settings
                        .get("PONIX_CLICKHOUSE_PASSWORD")
                        .cloned()
                        .unwrap_or_default(),
                )),
            };
            let writer_port = port_of(compose::WRITER_URL)?;
            watch_rows_until_interrupted(&clickhouse, writer_port, self.until_rows, || Ok(()))
        });
        if result.is_err() {
            let _ = stack.save_logs(sh, layout);
        }
        stack.down(sh)?;
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

/// Counts the stored rows over ClickHouse's HTTP interface.
struct RowCounter {
    port: u16,
    /// The compose stack's ClickHouse has a user of its own; the local one is open.
    credentials: Option<(String, String)>,
}

impl RowCounter {
    fn stored_rows(&self) -> anyhow::Result<u64> {
        let headers: Vec<(&str, &str)> = match &self.credentials {
            Some((user, password)) => vec![
                ("X-ClickHouse-User", user.as_str()),
                ("X-ClickHouse-Key", password.as_str()),
            ],
            None => Vec::new(),
        };
        // FINAL: a redelivered message's second copy is not yet merged away.
        let response = http_post_with_headers(
            self.port,
            "/?database=ponix",
            &headers,
            "SELECT count() FROM processed_envelopes FINAL",
        )
        .context("counting the stored rows")?;
        if response.status != 200 {
            bail!("counting the stored rows: {}", response.body.trim());
        }
        response
            .body
            .trim()
            .parse()
            .context("parsing the row count")
    }
}

fn port_of(url: &str) -> anyhow::Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .with_context(|| format!("no port in {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_flag_is_validated() {
        assert_eq!(choose_backend(Some(Backend::Local)), Backend::Local);
    }

    #[test]
    fn ports_come_from_the_published_urls() {
        assert_eq!(port_of(compose::CLICKHOUSE_URL).unwrap(), 8123);
        assert_eq!(port_of(compose::WRITER_URL).unwrap(), 8080);
    }
}
