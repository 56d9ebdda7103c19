//! What the writer stores is exactly what was sent, read back field by field, for a
//! batch of one (the contract's awkward cases, written out by hand), a batch of 10,000
//! and concurrent INSERTs; and a batch that waits for an earlier one to settle keeps
//! its messages in progress rather than letting them be redelivered.

use anyhow::{Context, ensure};
use async_nats::HeaderMap;
use ponix_writer::envelope::ProcessedEnvelope;
use ponix_writer::payload;
use prost::Message as _;
use prost_types::Timestamp;
use testkit::Endpoints;

use crate::envelopes::{generated_envelopes, simple_envelopes};
use crate::metrics::{expect_metric, metric};
use crate::names::{Names, publish_all};
use crate::rows::{Duplicates, ExpectedRow, compare_rows, stored_rows};
use crate::{DRAIN_TIMEOUT, trap};

/// One envelope with the awkward parts of the contract: sub-second timestamps (the
/// floor is stored), dotted keys, -0, a big integer, unicode, null and empty members
/// (dropped), a list with a null (kept). The expected row is written out by hand, and
/// must also be what the contract model (`expected_after_clickhouse`) predicts.
pub async fn a_batch_of_one_is_stored_field_by_field(endpoints: Endpoints) -> anyhow::Result<()> {
    let names = Names::new("one");
    let js = names.setup(&endpoints).await?;
    let writer = names
        .start_writer(&js, "integration-one", &endpoints, &names.writer_vars(&[]))
        .await?;

    let data = payload::json_str_to_struct(
        r#"{"temperature": 21.5, "a.b": {"c.d": 1}, "zero": -0.0, "big": 9007199254740993,
            "name": "Zoë 😀", "nothing": null, "empty": {}, "list": [1, "x", true, null],
            "nested": {"n": {"gone": null}, "k": 1.0}}"#,
    )?;
    let sent = ProcessedEnvelope {
        organization_id: "org-1".into(),
        end_device_id: "device-1".into(),
        occurred_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 999_999_999,
        }),
        processed_at: Some(Timestamp {
            seconds: 1_700_000_005,
            nanos: 1,
        }),
        data: Some(data.clone()),
    };
    publish_all(
        &js,
        vec![(
            names.subject("device-1"),
            sent.encode_to_vec(),
            HeaderMap::new(),
        )],
    )
    .await?;
    names.wait_drained(&js, &writer).await?;

    let rows = stored_rows(&endpoints, &names.database).await?;
    ensure!(
        rows.len() == 1,
        "expected exactly one row, found {}: {rows:#?}",
        rows.len()
    );
    let row = &rows[0];
    ensure!(
        row.organization_id == "org-1",
        "organization_id: {:?}",
        row.organization_id
    );
    ensure!(
        row.end_device_id == "device-1",
        "end_device_id: {:?}",
        row.end_device_id
    );
    ensure!(
        row.occurred_at.to_rfc3339() == "2023-11-14T22:13:20+00:00",
        "occurred_at {} (sub-seconds must be dropped, not rounded)",
        row.occurred_at.to_rfc3339()
    );
    ensure!(
        row.processed_at.to_rfc3339() == "2023-11-14T22:13:25+00:00",
        "processed_at {}",
        row.processed_at.to_rfc3339()
    );
    let stored = payload::json_str_to_struct(&row.data)
        .with_context(|| format!("the JSON column holds {:?}", row.data))?;
    let by_hand = payload::json_str_to_struct(
        r#"{"temperature": 21.5, "a.b": {"c.d": 1}, "zero": -0.0, "big": 9007199254740993,
            "name": "Zoë 😀", "list": [1, "x", true, null], "nested": {"k": 1}}"#,
    )?;
    ensure!(
        payload::structs_identical(&stored, &by_hand),
        "ClickHouse gave back {}\nexpected {}",
        row.data,
        payload::to_json_value(&by_hand)?
    );
    ensure!(
        payload::structs_identical(&stored, &payload::expected_after_clickhouse(&data)),
        "the contract model disagrees with the stored JSON {}",
        row.data
    );

    let metrics = writer.metrics()?;
    expect_metric(&metrics, "ponix_writer_rows_inserted_total", &[], 1.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_inserts_total",
        &[("result", "ok")],
        1.0,
    )?;
    expect_metric(&metrics, "ponix_writer_acks_total", &[], 1.0)?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;
    names.stop_writer(writer).await?;
    names.cleanup(&js, &endpoints).await
}

/// 10,000 generated envelopes (a fixed seed, so every run sends the same ones) are
/// published before the writer starts and inserted as one 10,000-row INSERT; every
/// row is read back and compared with what was sent, field by field.
pub async fn a_batch_of_10000_is_stored_field_by_field(endpoints: Endpoints) -> anyhow::Result<()> {
    const N: usize = 10_000;
    let metrics = drain_generated_backlog(
        &endpoints,
        "bulk",
        N,
        &[
            ("PONIX_NATS_BATCH_SIZE", N.to_string()),
            (
                "PONIX_NATS_BATCH_MAX_BYTES",
                (256 * 1024 * 1024).to_string(),
            ),
            // The backlog is there before the first pull, which returns as soon as it
            // holds N messages; the wait only bounds a pull that would fall short.
            ("PONIX_NATS_BATCH_WAIT_SECS", "10".into()),
        ],
    )
    .await?;
    // One pull, one INSERT: this really was a batch of 10,000.
    expect_one_insert_per_batch(&metrics, N, 1)
}

/// The pipeline with three INSERTs at once (`PONIX_CLICKHOUSE_INSERT_CONCURRENCY=3`)
/// and small batches: 6,000 generated envelopes, published before the writer starts,
/// become 12 batches of 500. Every row is stored exactly once and matches what was
/// sent, each batch is one INSERT, and every message is acked.
pub async fn concurrent_inserts_store_every_row_once_and_ack_every_message(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const N: usize = 6_000;
    const BATCH: usize = 500;
    let metrics = drain_generated_backlog(
        &endpoints,
        "concurrent",
        N,
        &[
            ("PONIX_NATS_BATCH_SIZE", BATCH.to_string()),
            ("PONIX_CLICKHOUSE_INSERT_CONCURRENCY", "3".into()),
            // The backlog fills every pull at once; the wait only has to outlast a
            // stall of a loaded machine mid-pull, which would split a batch.
            ("PONIX_NATS_BATCH_WAIT_SECS", "2".into()),
        ],
    )
    .await?;
    expect_one_insert_per_batch(&metrics, N, N / BATCH)
}

/// Two batches insert concurrently; the first one's INSERT commits but its answer is
/// withheld (a relay in front of ClickHouse) until the writer's insert timeout, well
/// past AckWait, so the second batch, already committed, waits that long to be
/// settled after the first. Its messages must stay in progress all that time: no
/// redelivery of anything, and every row stored (the first batch's retried INSERT
/// leaves a copy that `FINAL` collapses).
pub async fn a_batch_waiting_for_an_earlier_one_keeps_its_messages_in_progress(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const BATCH: usize = 100;
    const ACK_WAIT_SECS: u64 = 3;
    const INSERT_TIMEOUT_SECS: u64 = 3 * ACK_WAIT_SECS;
    let names = Names::new("waiting");
    let js = names.setup_with_stream(&endpoints).await?;
    let envelopes = simple_envelopes(2 * BATCH, "waiting");
    publish_all(&js, envelopes.iter().map(|e| names.message(e)).collect()).await?;

    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], endpoints.clickhouse_port()?));
    let relay = trap::InsertTrap::start(upstream, "processed_envelopes").await?;
    let caught = relay.arm(trap::Cut::BeforeAnswer);
    let vars = names.writer_vars(&[
        ("PONIX_CLICKHOUSE_URL", relay.url()),
        ("PONIX_NATS_BATCH_SIZE", BATCH.to_string()),
        ("PONIX_NATS_BATCH_WAIT_SECS", "1".into()),
        ("PONIX_CLICKHOUSE_INSERT_CONCURRENCY", "2".into()),
        ("PONIX_NATS_ACK_WAIT_SECS", ACK_WAIT_SECS.to_string()),
        (
            "PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS",
            INSERT_TIMEOUT_SECS.to_string(),
        ),
        ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "100".into()),
    ]);
    let writer = names
        .start_writer(&js, "integration-waiting", &endpoints, &vars)
        .await?;
    let caught = tokio::time::timeout(DRAIN_TIMEOUT, caught)
        .await
        .context("no INSERT reached the relay")?
        .context("the relay closed")?;
    ensure!(caught.committed, "the withheld INSERT did not commit");
    names.wait_drained(&js, &writer).await?;

    let rows = stored_rows(&endpoints, &names.database).await?;
    let expected: Vec<ExpectedRow> = envelopes.iter().map(ExpectedRow::of).collect();
    compare_rows(&expected, &rows, Duplicates::Allowed)?;
    let metrics = writer.metrics()?;
    let batches = metric(&metrics, "ponix_writer_batches_total", &[]);
    ensure!(
        batches >= 2.0,
        "expected two batches or more, got {batches}:\n{metrics}"
    );
    ensure!(
        metric(
            &metrics,
            "ponix_writer_inserts_total",
            &[("result", "retryable")]
        ) >= 1.0,
        "the withheld INSERT did not time out:\n{metrics}"
    );
    expect_metric(&metrics, "ponix_writer_redeliveries_total", &[], 0.0)?;
    expect_metric(&metrics, "ponix_writer_acks_total", &[], (2 * BATCH) as f64)?;
    names.stop_writer(writer).await?;
    names.cleanup(&js, &endpoints).await
}

/// Publishes `n` generated envelopes, starts the writer with `vars` on that backlog,
/// waits until it drained, compares every stored row with what was sent (no
/// duplicates allowed), stops the writer and cleans up. Returns its last metrics.
async fn drain_generated_backlog(
    endpoints: &Endpoints,
    tag: &str,
    n: usize,
    vars: &[(&'static str, String)],
) -> anyhow::Result<String> {
    let names = Names::new(tag);
    let js = names.setup_with_stream(endpoints).await?;

    let envelopes = generated_envelopes(n, tag)?;
    let expected: Vec<ExpectedRow> = envelopes.iter().map(ExpectedRow::of).collect();
    publish_all(&js, envelopes.iter().map(|e| names.message(e)).collect()).await?;

    let writer = names
        .start_writer(
            &js,
            &format!("integration-{tag}"),
            endpoints,
            &names.writer_vars(vars),
        )
        .await?;
    names.wait_drained(&js, &writer).await?;

    let rows = stored_rows(endpoints, &names.database).await?;
    compare_rows(&expected, &rows, Duplicates::Forbidden)?;
    let metrics = writer.metrics()?;
    names.stop_writer(writer).await?;
    names.cleanup(&js, endpoints).await?;
    Ok(metrics)
}

/// `rows` rows in `batches` batches, each committed by exactly one INSERT, every
/// message acked and none dead-lettered.
fn expect_one_insert_per_batch(metrics: &str, rows: usize, batches: usize) -> anyhow::Result<()> {
    let batches = batches as f64;
    expect_metric(
        metrics,
        "ponix_writer_rows_inserted_total",
        &[],
        rows as f64,
    )?;
    expect_metric(
        metrics,
        "ponix_writer_inserts_total",
        &[("result", "ok")],
        batches,
    )?;
    expect_metric(metrics, "ponix_writer_inserts_total", &[], batches)?;
    expect_metric(
        metrics,
        "ponix_writer_batches_total",
        &[("outcome", "committed")],
        batches,
    )?;
    expect_metric(metrics, "ponix_writer_acks_total", &[], rows as f64)?;
    expect_metric(metrics, "ponix_writer_dead_lettered_total", &[], 0.0)
}
