//! Wiring and lifecycle: start-up in a fixed order, consume, shut down within bounds.
//!
//! Start-up, each step gated on the one before:
//!
//! 1. bind the HTTP endpoint (so `/healthz` answers and `/readyz` explains what the
//!    writer is waiting for, even during a long migration);
//! 2. connect to NATS and ping ClickHouse, concurrently, retrying until the start-up
//!    timeout;
//! 3. run the migrations under the migration lease, waiting for it while another
//!    replica holds it (nothing has been consumed yet; a failure ends the process);
//! 4. clear clickhouse-rs' cached table schemas, which the migrations may have changed;
//! 5. ensure the streams and the durable consumer (see [`crate::streams`]: a stream
//!    that would reuse stored sequences, or a consumer whose AckWait or MaxDeliver
//!    differs, ends the start-up);
//! 6. log the effective configuration (the password shows as `***`);
//! 7. consume, and run the demo producer if configured.
//!
//! Shutdown (the token is cancelled, by SIGTERM/SIGINT in `main`): no new pulls (one
//! already under way is read to its end); the batches in flight finish (insert then
//! ack) within 3/4 of the shutdown timeout, or are NAKed; acks are flushed; the HTTP server stops last. If all that
//! has not happened within the shutdown timeout, `run` returns an error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::Consumer;
use crate::consumer::watchdog::{CONNECT_ATTEMPT_TIMEOUT, PING_INTERVAL};
use crate::health::Health;
use crate::http;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::{demo, lag, migrate, streams};

/// How long the NATS connection may drain once the shutdown deadline has passed.
const HARD_DEADLINE_DRAIN: Duration = Duration::from_secs(2);

/// Runs the writer until `shutdown` is cancelled, or until start-up fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());

    // The HTTP server outlives the consumer, so that probes keep answering while the
    // last batch drains; it has its own token, cancelled on the way out.
    let http_stop = CancellationToken::new();
    let (http_addr, serve) = http::bind(
        config.http_addr,
        Arc::clone(&health),
        Arc::clone(&metrics),
        http_stop.clone(),
    )
    .await
    .with_context(|| format!("binding the HTTP endpoint on {}", config.http_addr))?;
    tracing::info!(addr = %http_addr, "serving /healthz, /readyz and /metrics");
    let http_task = tokio::spawn(serve);

    let result = run_writer(&config, &shutdown, &health, &metrics).await;

    http_stop.cancel();
    match http_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "HTTP server failed"),
        Err(error) => tracing::warn!(%error, "HTTP server task failed"),
    }
    result
}

async fn run_writer(
    config: &Config,
    shutdown: &CancellationToken,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let Some(started) = until_shutdown(shutdown, start(config, health)).await else {
        tracing::info!("shutdown requested during start-up; exiting");
        return Ok(());
    };
    let Started {
        nats,
        store,
        js,
        pull,
    } = started?;

    let demo_task = config.demo_interval.map(|interval| {
        tokio::spawn(demo::run(
            js.clone(),
            config.nats.subject.clone(),
            interval,
            shutdown.clone(),
        ))
    });

    let lag_task = tokio::spawn(lag::watch(
        pull.clone(),
        Arc::clone(metrics),
        lag::REFRESH_EVERY,
        shutdown.clone(),
    ));

    let consumer = Consumer::new(
        js,
        pull,
        config.nats.clone(),
        store,
        Arc::clone(metrics),
        Arc::clone(health),
        config.shutdown_timeout.mul_f64(0.75),
    );
    let mut consuming = std::pin::pin!(consumer.run(shutdown.clone()));
    // A hard bound on the shutdown, whatever the consumer is doing.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    let stopped_by = Instant::now();
    tokio::select! {
        result = &mut consuming => result.context("consumer failed")?,
        () = deadline => {
            // The acks of every batch that did settle may still sit in the client's
            // buffer: drain briefly, so that they are not redelivered as well.
            match tokio::time::timeout(HARD_DEADLINE_DRAIN, nats.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "draining the NATS connection failed"),
                Err(_) => tracing::warn!("draining the NATS connection timed out"),
            }
            bail!(
                "shutdown did not complete within {:?}; unacknowledged messages will be redelivered after AckWait",
                config.shutdown_timeout
            )
        }
    }

    lag_task.abort();
    if let Some(task) = demo_task
        && let Err(error) = task.await
    {
        tracing::warn!(%error, "demo producer task failed");
    }
    // Drain: flushes what is buffered (acks included) and closes the connection.
    let remaining = config
        .shutdown_timeout
        .saturating_sub(stopped_by.elapsed())
        .max(Duration::from_millis(100));
    match tokio::time::timeout(remaining, nats.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "draining the NATS connection failed"),
        Err(_) => tracing::warn!("draining the NATS connection timed out"),
    }
    tracing::info!("shutdown complete");
    Ok(())
}

struct Started {
    nats: async_nats::Client,
    store: Store,
    js: jetstream::Context,
    pull: jetstream::consumer::PullConsumer,
}

async fn start(config: &Config, health: &Health) -> anyhow::Result<Started> {
    let deadline = Instant::now() + config.startup_timeout;
    let (nats, store) = connect_both(config, deadline).await?;
    health.set_nats(nats.clone());
    health.set_clickhouse_answered();

    let js = jetstream::new(nats.clone());
    let dsn = migrate::goose_dsn(&config.migrations, &config.clickhouse);
    migrate::run_exclusively(
        &config.migrations,
        &js,
        &config.clickhouse,
        deadline,
        &dsn,
        &[config.clickhouse.password.expose()],
        |progress| health.set_migrations_status(progress.to_string()),
    )
    .await
    .context("migrations failed; nothing was consumed")?;
    store.clear_cached_metadata().await;
    health.set_migrations_done();

    let pull = streams::ensure(&js, &config.nats, &store)
        .await
        .context("setting up the stream, the dead-letter stream and the durable consumer")?;
    // Ready only now: a message published after /readyz answers 200 is consumed.
    health.set_consumer_ready();

    tracing::info!(?config, "effective configuration");
    Ok(Started {
        nats,
        store,
        js,
        pull,
    })
}

/// `ponix-writer migrate`: the migrations start-up runs, under the same lease and
/// timeout, once, and nothing else: no stream, no consumer, no HTTP endpoint. For
/// deployments that migrate in a job of their own (with
/// `PONIX_CLICKHOUSE_MIGRATIONS_ENABLED=false` on the writers), so it migrates
/// whatever that variable says.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let deadline = Instant::now() + config.startup_timeout;
    let (nats, _) = connect_both(config, deadline).await?;
    let migrations = crate::config::MigrationsConfig {
        enabled: true,
        ..config.migrations.clone()
    };
    let dsn = migrate::goose_dsn(&migrations, &config.clickhouse);
    let result = migrate::run_exclusively(
        &migrations,
        &jetstream::new(nats.clone()),
        &config.clickhouse,
        deadline,
        &dsn,
        &[config.clickhouse.password.expose()],
        |progress| tracing::info!(%progress, "migrations: not done yet"),
    )
    .await
    .context("migrations failed");
    // The lease is released by now; drain so that its deletion reaches the server.
    if let Err(error) = nats.drain().await {
        tracing::warn!(%error, "draining the NATS connection failed");
    }
    result
}

/// NATS connected and ClickHouse answering, side by side, by `deadline`.
async fn connect_both(
    config: &Config,
    deadline: Instant,
) -> anyhow::Result<(async_nats::Client, Store)> {
    let store = Store::new(&config.clickhouse);
    let (nats, ()) = tokio::try_join!(
        connect_nats(config, deadline),
        ping_clickhouse(&store, config, deadline),
    )?;
    Ok((nats, store))
}

/// A NATS connection for an operator command: the writer's credentials and
/// connect options, within the start-up timeout.
pub async fn connect(config: &Config) -> anyhow::Result<async_nats::Client> {
    connect_nats(config, Instant::now() + config.startup_timeout).await
}

async fn connect_nats(config: &Config, deadline: Instant) -> anyhow::Result<async_nats::Client> {
    retry_until(deadline, "connecting to NATS", || async {
        // Per attempt and per server, on every reconnect too: a server that accepts
        // the connection and says nothing must not hold the client (see
        // consumer::watchdog). retry_until repeats attempts until the deadline.
        nats_options(
            config,
            deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), CONNECT_ATTEMPT_TIMEOUT),
        )
        .map_err(|error| Refused(error.to_string()))?
        .connect(config.nats.server_urls())
        .await
        .map_err(|error| nats_connect_error(&config.nats, error))
    })
    .await
}

/// A start-up failure that retrying cannot fix, such as refused credentials or an
/// untrusted certificate: the writer stops at once and says which variable to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Refused credentials and certificate trouble become [`Refused`], naming the
/// variables that fix them; anything else is retried until the start-up deadline.
fn nats_connect_error(
    nats: &crate::config::NatsConfig,
    error: async_nats::ConnectError,
) -> anyhow::Error {
    use async_nats::ConnectErrorKind as Kind;
    let chain = crate::tls::error_chain(&error);
    match error.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => Refused(format!(
            "NATS refused the credentials ({chain}): check {}",
            nats.auth_source()
        ))
        .into(),
        _ => match crate::tls::hint(&chain, "PONIX_NATS") {
            Some(hint) => Refused(format!("TLS with NATS failed ({chain}): {hint}")).into(),
            None => error.into(),
        },
    }
}

/// The options of every NATS connection the writer makes, each attempt bounded by
/// `timeout`, pinging often enough for the watchdog (see `consumer::watchdog`).
/// Credentials go as options, never inside a URL: async-nats logs server URLs. Fails
/// when a credential or certificate file the configuration names cannot be used.
pub(crate) fn nats_options(
    config: &Config,
    timeout: Duration,
) -> std::io::Result<async_nats::ConnectOptions> {
    Ok(config
        .nats
        .connect_options()?
        .name("ponix-writer")
        .connection_timeout(timeout)
        .ping_interval(PING_INTERVAL))
}

async fn ping_clickhouse(store: &Store, config: &Config, deadline: Instant) -> anyhow::Result<()> {
    retry_until(deadline, "pinging ClickHouse", || async {
        let ping = store.ping().await;
        match ping {
            // A wrong password or database will not fix itself: fail now, not at the
            // deadline, and say why.
            Err(error) if error.is_permanent() => Err(anyhow::Error::from(error).context(format!(
                "ClickHouse at {} rejected the connection settings (TLS, user, password, database)",
                config.clickhouse.url
            ))),
            other => other.map_err(anyhow::Error::from),
        }
    })
    .await
}

/// Calls `attempt` until it succeeds or `deadline` passes, pausing with backoff in
/// between; returns the last error, with `what` and the timeout in its context.
async fn retry_until<T, F, Fut>(deadline: Instant, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut pause = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("no answer before the start-up deadline"),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if is_final(&error) {
            return Err(error.context(format!("{what} failed")));
        }
        if remaining.is_zero() {
            return Err(error.context(format!(
                "{what} failed {attempts} time(s) within the start-up timeout (PONIX_STARTUP_TIMEOUT_SECS)"
            )));
        }
        tracing::info!(error = format!("{error:#}"), retry_in = ?pause, "{what}: not yet");
        tokio::time::sleep(pause.min(remaining)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Errors that retrying cannot fix.
fn is_final(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<Refused>()
            || matches!(cause.downcast_ref::<crate::store::StoreError>(), Some(e) if e.is_permanent())
    })
}

/// `Some(output)` if `future` finished first, `None` if shutdown was requested first.
async fn until_shutdown<T>(
    shutdown: &CancellationToken,
    future: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        output = future => Some(output),
    }
}
