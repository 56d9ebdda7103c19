//! What each command of the binary does, once the command line ([`crate::cli`]) and
//! the configuration are read: the writer itself ([`crate::run::run`]), `migrate`
//! ([`crate::run::migrate`]), and the `dead-letters` commands, which print their
//! report on stdout (logs go to stderr, as always).

use std::future::Future;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::cli::{DeadLetters, DeadLettersCmd, PonixWriterCmd};
use crate::config::Config;
use crate::{dead_letters, run};

/// Runs `command` until it is done or, for the one-shot commands, interrupted.
pub async fn execute(
    command: PonixWriterCmd,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match command {
        // The writer drains on shutdown by itself.
        PonixWriterCmd::Run(_) => run::run(config, shutdown).await,
        PonixWriterCmd::Migrate(_) => until_interrupted(&shutdown, run::migrate(&config)).await,
        PonixWriterCmd::DeadLetters(command) => {
            until_interrupted(&shutdown, dead_letters(&config, command)).await
        }
        // The binary runs check before the configuration is read (check reports a bad
        // one item by item), without logging: see `check::run`.
        PonixWriterCmd::Check(_) => bail!("`check` runs through ponix_writer::check::run"),
    }
}

/// A one-shot command stops where it is on SIGTERM or Ctrl-C: goose is killed with
/// its future, a replay leaves the dead letters it has not reached in place, and
/// each can simply be run again.
async fn until_interrupted(
    shutdown: &CancellationToken,
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::select! {
        result = work => result,
        () = shutdown.cancelled() => bail!("interrupted; run the command again to complete it"),
    }
}

async fn dead_letters(config: &Config, command: DeadLetters) -> anyhow::Result<()> {
    let nats = run::connect(config).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let stream = &config.nats.dead_letter_stream;
    let output = match command.subcommand {
        DeadLettersCmd::Summary(_) => {
            let counts = dead_letters::summary(&js, &config.nats).await?;
            dead_letters::render_summary(stream, &counts)
        }
        DeadLettersCmd::Show(show) => dead_letters::show(&js, &config.nats, show.sequence).await?,
        DeadLettersCmd::Replay(flags) => {
            let selection = flags.selection()?;
            dead_letters::replay(&js, &config.nats, &selection, flags.dry_run)
                .await?
                .render()
        }
    };
    // A closed pipe (`| head`) is not a failure of the command.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), output.as_bytes());
    // Flushes what is buffered before the process exits.
    if let Err(error) = nats.drain().await {
        tracing::warn!(%error, "draining the NATS connection failed");
    }
    Ok(())
}
