//! `ponix-writer`: the command line, configuration from the environment, logging,
//! signals; the work is in the library ([`ponix_writer::commands::execute`], and
//! [`ponix_writer::check::run`] for `ponix-writer check`).
//!
//! Exit codes: 0 after a clean shutdown, 1 when the writer failed, 2 for a usage or
//! configuration error. `check` exits 0 when every item passed and 1 otherwise, a bad
//! variable included (it is one of the items); 2 for a usage error.

use std::io::Write as _;
use std::process::ExitCode;

use ponix_writer::check;
use ponix_writer::cli::{PonixWriter, PonixWriterCmd};
use ponix_writer::config::{self, Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // One rustls crypto provider for the whole process: async-nats builds its own TLS
    // client configuration from the process default, and where the dependency graph
    // enables rustls' aws-lc-rs feature beside ring (cargo unifies features: the test
    // build, through testcontainers, does), rustls cannot pick one and the first TLS
    // connection to NATS panicked. Err means one is installed already: keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = match PonixWriter::from_env() {
        Ok(flags) => flags,
        Err(error) if error.is_help() => {
            // The commands, then the variables that configure them all. A closed pipe
            // (`| head`) is not an error worth a panic.
            let _ = write!(std::io::stdout().lock(), "{error}\n{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("ponix-writer: {error}; see `ponix-writer --help`");
            return ExitCode::from(2);
        }
    };
    if flags.version {
        println!("ponix-writer {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }

    // check reports a bad configuration itself, item by item.
    if let PonixWriterCmd::Check(flags) = &flags.subcommand {
        return match flags.format.as_deref().unwrap_or("text").parse() {
            Ok(format) => run_check(format),
            Err(error) => {
                eprintln!("ponix-writer check: {error}; see `ponix-writer --help`");
                ExitCode::from(2)
            }
        };
    }

    let config = match Config::from_env() {
        Ok(config) => config,
        Err(errors) => {
            // One line per bad variable, naming it and the expected form.
            eprintln!("ponix-writer: {errors}");
            eprintln!("Run `ponix-writer --help` for every variable and its default.");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = init_tracing(&config) {
        eprintln!(
            "ponix-writer: invalid PONIX_LOG_LEVEL {:?}: {error}",
            config.log_level
        );
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let result = ponix_writer::commands::execute(flags.subcommand, config, shutdown).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "ponix-writer failed");
                // Also outside the log: PONIX_LOG_LEVEL may filter the event above out,
                // and a failed start must never exit silently.
                eprintln!("ponix-writer: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `ponix-writer check`: the report on stdout, and no log: the report is the whole
/// output, so that `--format json` stays parseable even where stderr is merged in.
fn run_check(format: check::Format) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ponix-writer check: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(check::run(Config::from_env()));
    // A closed pipe (`| head`) is not a failed check.
    let _ = write!(std::io::stdout().lock(), "{}", report.render(format));
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_tracing(config: &Config) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(&config.log_level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit at once, for an
/// operator who does not want to wait for the drain.
#[cfg(unix)]
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    // Both handlers are registered once, up front, so that no signal falls between
    // two registrations. Registration only fails without a signal driver, which
    // `enable_all` provides; without handlers the default disposition (terminate)
    // stays, which is the best remaining behaviour.
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "could not install signal handlers");
            return;
        }
    };
    let mut received = 0u32;
    loop {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        received += 1;
        if received == 1 {
            tracing::info!(
                signal = name,
                "shutting down: finishing the batches in flight"
            );
            shutdown.cancel();
        } else {
            tracing::warn!(signal = name, "second signal: exiting without draining");
            std::process::exit(130);
        }
    }
}

#[cfg(not(unix))]
async fn watch_signals(shutdown: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::info!("shutting down: finishing the batches in flight");
        shutdown.cancel();
    }
}
