//! A ClickHouse outage costs no delivery: the writer holds the batch it cannot insert,
//! stops fetching and says so on `/readyz` and in its metrics, and stores everything
//! exactly once when ClickHouse is back. The test stops a private ClickHouse, never the
//! shared one.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use testkit::Endpoints;
use testkit::infra::Managed;

use crate::envelopes::simple_envelopes;
use crate::metrics::{expect_metric, metric};
use crate::names::{Names, blocking, publish_all};
use crate::rows::{Duplicates, ExpectedRow, compare_rows, stored_rows};
use crate::support;

/// A private ClickHouse is stopped under a running writer, and messages arrive. The
/// writer holds the batch it cannot insert and retries it, spending no delivery:
/// with MaxDeliver 2 and AckWait 2 s, an outage many NAK delays and ack timers long
/// ends with nothing NAKed, redelivered or dead-lettered. Meanwhile it stops
/// fetching, reports not ready and shows the held batch in its metrics; once
/// ClickHouse is back every message is stored exactly once.
pub async fn an_outage_holds_the_batch_without_spending_deliveries_and_it_lands_after(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const N: usize = 300;
    const ACK_WAIT: Duration = Duration::from_secs(2);
    let names = Names::new("outage");
    let js = names.setup_streams(&endpoints).await?;
    let mut clickhouse =
        blocking(Managed::private_clickhouse).context("starting a private ClickHouse")?;
    let private = Endpoints {
        clickhouse_url: clickhouse.url(),
        ..endpoints.clone()
    };
    support::fresh_database(&private, &names.database).await?;
    let writer = names
        .start_writer(
            &js,
            "integration-outage",
            &private,
            &names.writer_vars(&[
                ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "100".into()),
                ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "500".into()),
                // With NAKs, the second failed delivery would dead-letter every message.
                ("PONIX_NATS_MAX_DELIVER", "2".into()),
                ("PONIX_NATS_ACK_WAIT_SECS", ACK_WAIT.as_secs().to_string()),
                // ClickHouse is stopped, not hung: inserts fail at once. A generous timeout
                // keeps an INSERT that is slow after the restart from being retried, and so
                // stored twice.
                ("PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS", "20".into()),
            ]),
        )
        .await?;

    let clickhouse_ref = &mut clickhouse;
    let stopped =
        blocking(move || clickhouse_ref.stop()).context("stopping the private ClickHouse")?;
    let outage_started = Instant::now();
    let envelopes = simple_envelopes(N, "outage");
    publish_all(&js, envelopes.iter().map(|e| names.message(e)).collect()).await?;

    // Held and retried, past three ack timers, and the writer says so.
    support::wait_for(
        "the writer holds the batch it cannot insert and retries it past 3 × AckWait",
        Duration::from_secs(60),
        || async {
            let metrics = writer.metrics()?;
            let retries = metric(&metrics, "ponix_writer_insert_retries_total", &[]);
            let held = metric(&metrics, "ponix_writer_batches_held", &[]);
            let long = outage_started.elapsed() > ACK_WAIT * 3;
            Ok(if retries >= 3.0 && held >= 1.0 && long {
                Ok(())
            } else {
                Err((retries, held, long))
            })
        },
    )
    .await
    .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(30)))?;
    let response = testkit::localenv::net::http_get(writer.http_port(), "/readyz")?;
    ensure!(
        response.status == 503
            && response.body.contains("ClickHouse unreachable")
            && response.body.contains("holding"),
        "/readyz does not report the outage: {} {}",
        response.status,
        response.body
    );
    ensure!(
        !response.body.contains("Exception") && !response.body.contains("error sending request"),
        "/readyz quotes the error text: {}",
        response.body
    );
    let metrics = writer.metrics()?;
    expect_metric(&metrics, "ponix_writer_acks_total", &[], 0.0)?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;
    expect_metric(&metrics, "ponix_writer_redeliveries_total", &[], 0.0)?;
    expect_metric(&metrics, "ponix_writer_rows_inserted_total", &[], 0.0)?;
    let silent = metric(&metrics, "ponix_writer_seconds_since_last_insert", &[]);
    ensure!(
        silent >= (ACK_WAIT * 3).as_secs_f64() * 0.9,
        "seconds_since_last_insert is {silent} after a {:?} outage",
        outage_started.elapsed()
    );
    // Stopped fetching: the consumer has delivered no more than the writer holds.
    let info = names.consumer_info(&js).await?;
    let received = metric(&metrics, "ponix_writer_messages_received_total", &[]);
    ensure!(
        info.delivered.consumer_sequence as f64 == received,
        "delivered {} but the writer received {received}",
        info.delivered.consumer_sequence
    );

    // The backlog is visible: the lag gauges, read from the consumer info every few
    // seconds, come to what JetStream reports (the writer fetches nothing meanwhile).
    let delivered = info.delivered.consumer_sequence as f64;
    expect_lag(&writer, N as f64 - delivered, delivered).await?;

    blocking(move || stopped.start()).context("starting the private ClickHouse again")?;
    let outage = outage_started.elapsed();
    names.wait_drained(&js, &writer).await?;

    let rows = stored_rows(&private, &names.database).await?;
    let expected: Vec<ExpectedRow> = envelopes.iter().map(ExpectedRow::of).collect();
    compare_rows(&expected, &rows, Duplicates::Forbidden)?;
    let metrics = writer.metrics()?;
    eprintln!(
        "outage: {outage:?}, {} INSERTs retried for {N} messages",
        metric(&metrics, "ponix_writer_insert_retries_total", &[])
    );
    expect_metric(&metrics, "ponix_writer_rows_inserted_total", &[], N as f64)?;
    expect_metric(&metrics, "ponix_writer_acks_total", &[], N as f64)?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;
    expect_metric(&metrics, "ponix_writer_dead_lettered_total", &[], 0.0)?;
    expect_metric(&metrics, "ponix_writer_batches_held", &[], 0.0)?;
    expect_lag(&writer, 0.0, 0.0).await?;
    let ready = testkit::localenv::net::http_get(writer.http_port(), "/readyz")?;
    ensure!(
        ready.status == 200,
        "not ready after ClickHouse returned: {}",
        ready.body
    );

    names.stop_writer(writer).await?;
    names.delete_streams(&js).await?;
    blocking(move || drop(clickhouse));
    Ok(())
}

/// Waits until the writer's consumer gauges show `pending` and `ack_pending`
/// (refreshed every `lag::REFRESH_EVERY`, so a few refreshes are allowed).
async fn expect_lag(
    writer: &support::writer::WriterProcess,
    pending: f64,
    ack_pending: f64,
) -> anyhow::Result<()> {
    support::wait_for(
        "ponix_writer_consumer_pending and _ack_pending to show the consumer's backlog",
        ponix_writer::lag::REFRESH_EVERY * 4,
        || async {
            let metrics = writer.metrics()?;
            let seen = (
                metric(&metrics, "ponix_writer_consumer_pending", &[]),
                metric(&metrics, "ponix_writer_consumer_ack_pending", &[]),
            );
            Ok(if seen == (pending, ack_pending) {
                Ok(())
            } else {
                Err(seen)
            })
        },
    )
    .await
    .with_context(|| format!("want pending {pending}, ack pending {ack_pending}"))
}
