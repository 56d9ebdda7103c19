//! The writer binary against the real nats-server and the chDB-backed ClickHouse:
//! what it stores is read back and compared field by field, invalid messages are
//! found on the dead-letter stream with their headers (one near `max_payload` too), a
//! ClickHouse outage is survived by holding the batch without spending deliveries,
//! and SIGTERM in the middle of a batch loses nothing.
//!
//! Every test has its own stream, consumer, dead-letter stream and database, so they
//! run in parallel. The tests that stop or freeze ClickHouse start a private one
//! ([`Managed::private_clickhouse`]) and never touch the shared endpoints' processes.
//! Waits are on conditions (`support::wait_for`), never sleeps.

mod support;
// Shared with the drills, which use every cut; these tests use one.
#[allow(dead_code)]
#[path = "drills/trap.rs"]
mod trap;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use chrono::{DateTime, Utc};
use clickhouse::Row;
use ponix_writer::consumer::{
    HEADER_DELIVERY_COUNT, HEADER_DETAIL, HEADER_ORIGINAL_SUBJECT, HEADER_PAYLOAD_DROPPED,
    HEADER_REASON, HEADER_STREAM_SEQUENCE,
};
use ponix_writer::envelope::{self, DATETIME_MAX_SECS, ProcessedEnvelope};
use ponix_writer::payload;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use serde::Deserialize;
use support::writer::WriterProcess;
use testkit::Endpoints;
use testkit::infra::Managed;
use testkit::strategies;

testkit::integration_tests!(
    a_batch_of_one_is_stored_field_by_field,
    a_batch_of_10000_is_stored_field_by_field,
    concurrent_inserts_store_every_row_once_and_ack_every_message,
    a_batch_waiting_for_an_earlier_one_keeps_its_messages_in_progress,
    a_mixed_batch_stores_the_valid_and_dead_letters_the_invalid,
    an_outage_holds_the_batch_without_spending_deliveries_and_it_lands_after,
    a_dead_letter_of_a_message_near_max_payload_lands,
    sigterm_during_a_hanging_insert_naks_the_batch_and_loses_nothing,
    sigterm_during_a_slow_insert_finishes_the_batch_and_leaves_nothing_unacked,
);

/// Generous bound for anything the writer should finish in a second or two.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// JetStream's default AckWait, which the writer keeps unless configured.
const ACK_WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// 1. Batches of 1 and 10,000 rows, read back field by field.
// ---------------------------------------------------------------------------

/// One envelope with the awkward parts of the contract: sub-second timestamps (the
/// floor is stored), dotted keys, -0, a big integer, unicode, null and empty members
/// (dropped), a list with a null (kept). The expected row is written out by hand, and
/// must also be what the contract model (`expected_after_clickhouse`) predicts.
async fn a_batch_of_one_is_stored_field_by_field(endpoints: Endpoints) -> anyhow::Result<()> {
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
async fn a_batch_of_10000_is_stored_field_by_field(endpoints: Endpoints) -> anyhow::Result<()> {
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
async fn concurrent_inserts_store_every_row_once_and_ack_every_message(
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
async fn a_batch_waiting_for_an_earlier_one_keeps_its_messages_in_progress(
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

// ---------------------------------------------------------------------------
// 2. Valid and invalid messages in one batch.
// ---------------------------------------------------------------------------

/// One batch interleaves 30 valid envelopes with one message for every reason a
/// message is invalid. The valid ones are stored (field by field); each invalid one is
/// on the dead-letter stream with its reason, original subject, stream sequence,
/// delivery count 1, its payload and its own headers; nothing stays pending; the
/// metrics agree.
async fn a_mixed_batch_stores_the_valid_and_dead_letters_the_invalid(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("mixed");
    let js = names.setup_with_stream(&endpoints).await?;

    let valid = simple_envelopes(30, "mixed");
    let invalid = invalid_messages();
    // Interleaved: an invalid message after every third valid one, the rest at the end.
    let mut messages: Vec<(String, Vec<u8>, HeaderMap, Option<&'static str>)> = Vec::new();
    let mut invalid_iter = invalid.iter();
    for (i, envelope) in valid.iter().enumerate() {
        let (subject, bytes, headers) = names.message(envelope);
        messages.push((subject, bytes, headers, None));
        if i % 3 == 2
            && let Some((name, reason, bytes)) = invalid_iter.next()
        {
            messages.push((
                names.subject(name),
                bytes.clone(),
                trace_headers(name),
                Some(*reason),
            ));
        }
    }
    for (name, reason, bytes) in invalid_iter {
        messages.push((
            names.subject(name),
            bytes.clone(),
            trace_headers(name),
            Some(*reason),
        ));
    }
    let sequences = publish_all(
        &js,
        messages
            .iter()
            .map(|(s, b, h, _)| (s.clone(), b.clone(), h.clone()))
            .collect(),
    )
    .await?;

    // Published first, so that the writer's first pull takes them all as one batch.
    let writer = names
        .start_writer(
            &js,
            "integration-mixed",
            &endpoints,
            &names.writer_vars(&[
                // One pull of exactly this size returns as soon as it is full.
                ("PONIX_NATS_BATCH_SIZE", messages.len().to_string()),
                ("PONIX_NATS_BATCH_WAIT_SECS", "2".into()),
            ]),
        )
        .await?;
    names.wait_drained(&js, &writer).await?;

    let rows = stored_rows(&endpoints, &names.database).await?;
    let expected: Vec<ExpectedRow> = valid.iter().map(ExpectedRow::of).collect();
    compare_rows(&expected, &rows, Duplicates::Forbidden)?;

    let letters = dead_letters(&js, &names.dead_letter_stream).await?;
    ensure!(
        letters.len() == invalid.len(),
        "{} dead letters for {} invalid messages: {letters:#?}",
        letters.len(),
        invalid.len()
    );
    let by_sequence: HashMap<String, &DeadLetter> = letters
        .iter()
        .map(|letter| (letter.header(HEADER_STREAM_SEQUENCE), letter))
        .collect();
    ensure!(
        by_sequence.len() == letters.len(),
        "two dead letters name the same sequence: {letters:#?}"
    );
    for ((subject, bytes, _, reason), sequence) in messages.iter().zip(&sequences) {
        let Some(reason) = reason else {
            ensure!(
                !by_sequence.contains_key(&sequence.to_string()),
                "the valid message at sequence {sequence} was dead-lettered"
            );
            continue;
        };
        let letter = by_sequence.get(&sequence.to_string()).with_context(|| {
            format!("no dead letter for {subject} (sequence {sequence}); letters: {letters:#?}")
        })?;
        let context = || format!("dead letter of {subject}: {letter:#?}");
        ensure!(letter.subject == names.dead_letter_subject, "{}", context());
        ensure!(
            letter.header(HEADER_REASON) == *reason,
            "reason should be {reason}: {}",
            context()
        );
        ensure!(
            letter.header(HEADER_ORIGINAL_SUBJECT) == *subject,
            "{}",
            context()
        );
        ensure!(letter.header(HEADER_DELIVERY_COUNT) == "1", "{}", context());
        ensure!(
            !letter.header(HEADER_DETAIL).is_empty(),
            "no detail: {}",
            context()
        );
        // The original's own headers travel along; JetStream's are not copied.
        let name = subject.rsplit('.').next().unwrap_or_default();
        ensure!(letter.header("Ponix-Test-Message") == name, "{}", context());
        ensure!(
            letter.header("Nats-Msg-Id")
                == format!("ponix-dead-letter:{}:{sequence}", names.stream),
            "{}",
            context()
        );
        ensure!(
            letter.payload == *bytes,
            "the payload changed: {}",
            context()
        );
    }

    let metrics = writer.metrics()?;
    let total = messages.len() as f64;
    expect_metric(&metrics, "ponix_writer_messages_received_total", &[], total)?;
    expect_metric(&metrics, "ponix_writer_redeliveries_total", &[], 0.0)?;
    // One batch, and it counts as committed: every valid row of it went in.
    expect_metric(&metrics, "ponix_writer_batches_total", &[], 1.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_batches_total",
        &[("outcome", "committed")],
        1.0,
    )?;
    expect_metric(
        &metrics,
        "ponix_writer_rows_inserted_total",
        &[],
        valid.len() as f64,
    )?;
    expect_metric(&metrics, "ponix_writer_acks_total", &[], valid.len() as f64)?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_dead_lettered_total",
        &[],
        invalid.len() as f64,
    )?;
    expect_metric(
        &metrics,
        "ponix_writer_dead_letter_failures_total",
        &[],
        0.0,
    )?;
    let mut per_reason: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, reason, _) in &invalid {
        *per_reason.entry(reason).or_default() += 1.0;
    }
    for (reason, count) in per_reason {
        expect_metric(
            &metrics,
            "ponix_writer_dead_lettered_total",
            &[("reason", reason)],
            count,
        )?;
    }

    names.stop_writer(writer).await?;
    names.cleanup(&js, &endpoints).await
}

// ---------------------------------------------------------------------------
// 3. ClickHouse stopped: the batch is held, then stored once it is back.
// ---------------------------------------------------------------------------

/// A private ClickHouse is stopped under a running writer, and messages arrive. The
/// writer holds the batch it cannot insert and retries it, spending no delivery:
/// with MaxDeliver 2 and AckWait 2 s, an outage many NAK delays and ack timers long
/// ends with nothing NAKed, redelivered or dead-lettered. Meanwhile it stops
/// fetching, reports not ready and shows the held batch in its metrics; once
/// ClickHouse is back every message is stored exactly once.
async fn an_outage_holds_the_batch_without_spending_deliveries_and_it_lands_after(
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

/// An undecodable message of nearly `max_payload` bytes: its dead letter, with the
/// writer's headers added, would not fit, and before it was fitted every publish
/// failed and the message was NAKed until MaxDeliver left it undelivered. It must land
/// on the dead-letter stream without its payload, naming where the original is, on
/// its first delivery; a valid message published with it is stored.
async fn a_dead_letter_of_a_message_near_max_payload_lands(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("maxpayload");
    let js = names.setup_with_stream(&endpoints).await?;
    let max_payload = js.client().server_info().max_payload;
    // 0xFF bytes are no valid protobuf: the message is dead-lettered as undecodable.
    let big = vec![0xFFu8; max_payload - 256];
    let valid = simple_envelopes(1, "maxpayload");
    let sequences = publish_all(
        &js,
        vec![
            (names.subject("big"), big.clone(), HeaderMap::new()),
            names.message(&valid[0]),
        ],
    )
    .await?;
    let writer = names
        .start_writer(
            &js,
            "integration-maxpayload",
            &endpoints,
            &names.writer_vars(&[("PONIX_NATS_MAX_DELIVER", "3".into())]),
        )
        .await?;
    names.wait_drained(&js, &writer).await?;

    let letters = dead_letters(&js, &names.dead_letter_stream).await?;
    ensure!(letters.len() == 1, "expected one dead letter: {letters:#?}");
    let letter = &letters[0];
    ensure!(
        letter.payload.is_empty(),
        "the payload should have been left out"
    );
    ensure!(
        letter.header(HEADER_PAYLOAD_DROPPED) == big.len().to_string(),
        "{letter:#?}"
    );
    ensure!(
        letter.header(HEADER_ORIGINAL_SUBJECT) == names.subject("big"),
        "{letter:#?}"
    );
    ensure!(
        letter.header(HEADER_STREAM_SEQUENCE) == sequences[0].to_string(),
        "{letter:#?}"
    );
    ensure!(letter.header(HEADER_DELIVERY_COUNT) == "1", "{letter:#?}");
    ensure!(!letter.header(HEADER_REASON).is_empty(), "{letter:#?}");
    let rows = stored_rows(&endpoints, &names.database).await?;
    compare_rows(&[ExpectedRow::of(&valid[0])], &rows, Duplicates::Forbidden)?;
    let metrics = writer.metrics()?;
    expect_metric(&metrics, "ponix_writer_dead_lettered_total", &[], 1.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_dead_letter_failures_total",
        &[],
        0.0,
    )?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;

    names.stop_writer(writer).await?;
    names.cleanup(&js, &endpoints).await
}

// ---------------------------------------------------------------------------
// 4. SIGTERM in the middle of a batch.
// ---------------------------------------------------------------------------

/// ClickHouse is frozen (SIGSTOP), so the batch's INSERT hangs. SIGTERM then: the
/// writer must give up on the batch within its drain grace, NAK it and exit 0 within
/// the shutdown timeout.
///
/// Right after the exit the consumer still counts the batch as awaiting ack: the
/// server keeps a message NAKed with a delay in its pending set until it redelivers it
/// (nats-server 2.15, measured), so `num_ack_pending` cannot tell NAKed from forgotten.
/// Timing can: with AckWait at 60 s, a second writer must store every message within
/// 20 s, which only NAKed messages allow; a forgotten one would wait for AckWait.
async fn sigterm_during_a_hanging_insert_naks_the_batch_and_loses_nothing(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const N: usize = 500;
    // Generous against a loaded machine (the writer must fit NAKs, flushes and its
    // exit into the quarter after the drain grace), and still far below the 20 s
    // INSERT timeout, so exiting in time proves the writer did not wait for the INSERT.
    const SHUTDOWN_TIMEOUT_SECS: u64 = 8;
    const INSERT_TIMEOUT_SECS: u64 = 20;
    const ACK_WAIT_SECS: u64 = 60;
    let names = Names::new("hang");
    let js = names.setup_streams(&endpoints).await?;
    let clickhouse =
        blocking(Managed::private_clickhouse).context("starting a private ClickHouse")?;
    let private = Endpoints {
        clickhouse_url: clickhouse.url(),
        ..endpoints.clone()
    };
    support::fresh_database(&private, &names.database).await?;
    let vars = names.writer_vars(&[
        ("PONIX_NATS_BATCH_SIZE", N.to_string()),
        ("PONIX_NATS_ACK_WAIT_SECS", ACK_WAIT_SECS.to_string()),
        ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "100".into()),
        ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "1000".into()),
        // Longer than the drain grace (3/4 of the shutdown timeout): the INSERT is
        // still hanging when the writer has to give up on it.
        (
            "PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS",
            INSERT_TIMEOUT_SECS.to_string(),
        ),
        (
            "PONIX_SHUTDOWN_TIMEOUT_SECS",
            SHUTDOWN_TIMEOUT_SECS.to_string(),
        ),
    ]);
    let mut writer = names
        .start_writer(&js, "integration-hang-1", &private, &vars)
        .await?;
    let log = writer.log().to_owned();

    let frozen = clickhouse
        .freeze()
        .context("freezing the private ClickHouse")?;
    let envelopes = simple_envelopes(N, "hang");
    publish_all(&js, envelopes.iter().map(|e| names.message(e)).collect()).await?;
    let (received, stored) = wait_for_hanging_insert(&names, &js, &writer).await?;
    ensure!(
        stored == 0,
        "{stored} rows were stored with ClickHouse frozen"
    );
    eprintln!("hang: SIGTERM with a batch of {received} in flight");

    let sigterm = Instant::now();
    let status =
        support::writer::terminate(&mut writer, Duration::from_secs(INSERT_TIMEOUT_SECS + 5))
            .await?;
    let exited_after = sigterm.elapsed();
    ensure!(
        status.success(),
        "the writer exited with {status} after SIGTERM:\n{}",
        tail(&log)
    );
    ensure!(
        exited_after < Duration::from_secs(INSERT_TIMEOUT_SECS),
        "the writer took {exited_after:?} to exit (shutdown timeout {SHUTDOWN_TIMEOUT_SECS} s): \
         it waited for the hanging INSERT ({INSERT_TIMEOUT_SECS} s timeout)"
    );
    let log_text = std::fs::read_to_string(&log)?;
    ensure!(
        log_text.contains("abandoning the in-flight batch"),
        "the writer did not report NAKing the in-flight batch:\n{}",
        tail(&log)
    );
    let after_exit = names.consumer_info(&js).await?;
    eprintln!(
        "hang: exited {exited_after:?} after SIGTERM; consumer right after exit: ack pending {}, pending {}, redelivered {}",
        after_exit.num_ack_pending, after_exit.num_pending, after_exit.num_redelivered
    );
    ensure!(
        after_exit.ack_floor.stream_sequence == 0,
        "nothing was stored, yet the ack floor moved to {}",
        after_exit.ack_floor.stream_sequence
    );

    drop(frozen);
    // Well under AckWait: a message left unacknowledged (neither acked nor NAKed) would
    // only come back once its ack timer expires.
    second_writer_stores_the_rest(
        "hang",
        &names,
        &js,
        &private,
        &vars,
        &envelopes,
        clickhouse,
        Duration::from_secs(ACK_WAIT_SECS / 3),
    )
    .await
}

/// A backlog drained in batches of 500 from a private ClickHouse. Once part of it is
/// stored, ClickHouse is frozen, so the next batch's INSERT hangs; SIGTERM comes while
/// it hangs, and ClickHouse is resumed as soon as the writer says it is shutting down.
/// The writer must finish that batch (insert, then ack) rather than drop it, and the
/// next one if its pipeline had already fetched it, exit 0, and leave no message
/// awaiting an ack. A second writer stores the rest.
async fn sigterm_during_a_slow_insert_finishes_the_batch_and_leaves_nothing_unacked(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    // Large enough that the writer cannot have fetched it all by the time the test
    // has seen 1,000 rows stored and frozen ClickHouse (a poll interval later).
    const N: usize = 20_000;
    const BATCH: usize = 500;
    let names = Names::new("slow");
    let js = names.setup_streams(&endpoints).await?;
    names.create_stream(&js).await?;
    let clickhouse =
        blocking(Managed::private_clickhouse).context("starting a private ClickHouse")?;
    let private = Endpoints {
        clickhouse_url: clickhouse.url(),
        ..endpoints.clone()
    };
    support::fresh_database(&private, &names.database).await?;
    let envelopes = simple_envelopes(N, "slow");
    publish_all(&js, envelopes.iter().map(|e| names.message(e)).collect()).await?;
    let vars = names.writer_vars(&[
        ("PONIX_NATS_BATCH_SIZE", BATCH.to_string()),
        // Every pull is filled from the backlog; a longer wait keeps a stalled machine
        // from splitting one, which the ack-floor check below counts in whole batches.
        ("PONIX_NATS_BATCH_WAIT_SECS", "2".into()),
        ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "100".into()),
        ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "1000".into()),
        ("PONIX_SHUTDOWN_TIMEOUT_SECS", "10".into()),
    ]);
    let mut writer = names
        .start_writer(&js, "integration-slow-1", &private, &vars)
        .await?;
    let log = writer.log().to_owned();
    support::wait_for("part of the backlog is stored", DRAIN_TIMEOUT, || async {
        let rows = metric(&writer.metrics()?, "ponix_writer_rows_inserted_total", &[]);
        Ok(if rows >= (2 * BATCH) as f64 {
            Ok(())
        } else {
            Err(rows)
        })
    })
    .await?;

    let frozen = clickhouse
        .freeze()
        .context("freezing the private ClickHouse")?;
    let (received, stored_before) = wait_for_hanging_insert(&names, &js, &writer).await?;
    ensure!(
        received < N as u64,
        "the whole backlog was fetched before SIGTERM; make it larger"
    );

    let resume = async {
        let seen = support::wait_for(
            "the writer reports the shutdown",
            Duration::from_secs(10),
            || async {
                let text = std::fs::read_to_string(&log)?;
                Ok(if text.contains("shutting down") {
                    Ok(())
                } else {
                    Err(())
                })
            },
        )
        .await;
        drop(frozen);
        seen
    };
    let (status, seen) = tokio::join!(
        support::writer::terminate(&mut writer, Duration::from_secs(15)),
        resume
    );
    let status = status?;
    seen?;
    ensure!(
        status.success(),
        "the writer exited with {status} after SIGTERM:\n{}",
        tail(&log)
    );
    let after_exit = names.consumer_info(&js).await?;
    eprintln!(
        "slow: SIGTERM with {stored_before} rows stored, {received} received; right after exit: ack pending {}, pending {}, ack floor {}",
        after_exit.num_ack_pending, after_exit.num_pending, after_exit.ack_floor.stream_sequence
    );
    ensure!(
        after_exit.num_ack_pending == 0,
        "{} messages still await an ack after the writer exited (they come back only after AckWait):\n{}",
        after_exit.num_ack_pending,
        tail(&log)
    );
    // The batch in flight was stored and acknowledged, not dropped; so was the next
    // batch if the pipeline had already pulled it (then it was delivered, and leaving
    // it unacknowledged would cost it a delivery and an AckWait).
    let floor = after_exit.ack_floor.stream_sequence;
    ensure!(
        floor == received || floor == received + BATCH as u64,
        "ack floor {floor} after exit; {stored_before} rows were stored before SIGTERM, \
         the batch in flight ended at message {received}, and at most one more batch of \
         {BATCH} may have been fetched"
    );

    second_writer_stores_the_rest(
        "slow",
        &names,
        &js,
        &private,
        &vars,
        &envelopes,
        clickhouse,
        ACK_WAIT / 2,
    )
    .await
}

/// The end of the SIGTERM tests: a second writer drains what is left within `within`,
/// every envelope is stored (re-inserts allowed: what they prove is that nothing is
/// lost), then the writer is stopped, the streams deleted and the private ClickHouse
/// dropped.
#[allow(clippy::too_many_arguments)]
async fn second_writer_stores_the_rest(
    label: &str,
    names: &Names,
    js: &jetstream::Context,
    private: &Endpoints,
    vars: &[(&str, String)],
    envelopes: &[ProcessedEnvelope],
    clickhouse: Managed,
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let writer = names
        .start_writer(js, &format!("integration-{label}-2"), private, vars)
        .await?;
    support::wait_until_drained(js, &names.stream, &names.consumer, within)
        .await
        .with_context(|| {
            format!(
                "the second writer's log ends with:\n{}",
                writer.log_tail(30)
            )
        })?;
    eprintln!(
        "{label}: second writer drained the rest in {:?}",
        started.elapsed()
    );
    let rows = stored_rows(private, &names.database).await?;
    let expected: Vec<ExpectedRow> = envelopes.iter().map(ExpectedRow::of).collect();
    let duplicates = compare_rows(&expected, &rows, Duplicates::Allowed)?;
    eprintln!(
        "{label}: {} messages stored as {} rows ({duplicates} duplicates)",
        envelopes.len(),
        rows.len()
    );
    names.stop_writer(writer).await?;
    names.delete_streams(js).await?;
    blocking(move || drop(clickhouse));
    Ok(())
}

/// With ClickHouse frozen, waits until the writer is inside a batch whose INSERT
/// hangs, and returns (messages received, rows stored): it has received every message
/// the server delivered so far, and more than it stored. The writer's pipeline may
/// still have a pull open (the next batch is fetched while an INSERT runs), so a
/// further batch can arrive after this returns; callers allow for that one batch.
async fn wait_for_hanging_insert(
    names: &Names,
    js: &jetstream::Context,
    writer: &WriterProcess,
) -> anyhow::Result<(u64, u64)> {
    support::wait_for(
        "a fetched batch whose INSERT hangs",
        Duration::from_secs(30),
        || async {
            let info = names.consumer_info(js).await?;
            let metrics = writer.metrics()?;
            let received = metric(&metrics, "ponix_writer_messages_received_total", &[]) as u64;
            let stored = metric(&metrics, "ponix_writer_rows_inserted_total", &[]) as u64;
            let delivered = info.delivered.consumer_sequence;
            Ok(if received == delivered && stored < received {
                Ok((received, stored))
            } else {
                Err((delivered, received, stored))
            })
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Names, set-up and the writer.
// ---------------------------------------------------------------------------

/// The stream, consumer, dead-letter stream and database of one test. Fixed per test,
/// so a failed run leaves evidence behind and the next run starts by deleting it.
struct Names {
    database: String,
    stream: String,
    subject_prefix: String,
    consumer: String,
    dead_letter_stream: String,
    dead_letter_subject: String,
}

impl Names {
    fn new(tag: &str) -> Self {
        Self {
            database: format!("integration_{tag}"),
            stream: format!("INTEGRATION_{}", tag.to_uppercase()),
            subject_prefix: format!("integration.{tag}"),
            consumer: format!("integration-{tag}-writer"),
            dead_letter_stream: format!("INTEGRATION_{}_DEAD_LETTERS", tag.to_uppercase()),
            dead_letter_subject: format!("integration_dead_letter.{tag}"),
        }
    }

    fn subject(&self, token: &str) -> String {
        format!("{}.{token}", self.subject_prefix)
    }

    /// A valid envelope as a message: its subject is its device, with a safe token.
    fn message(&self, envelope: &ProcessedEnvelope) -> (String, Vec<u8>, HeaderMap) {
        let token: String = envelope
            .end_device_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        (
            self.subject(&token),
            envelope.encode_to_vec(),
            HeaderMap::new(),
        )
    }

    fn writer_vars(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("PONIX_CLICKHOUSE_DATABASE", self.database.clone()),
            ("PONIX_NATS_STREAM", self.stream.clone()),
            ("PONIX_NATS_SUBJECT", format!("{}.>", self.subject_prefix)),
            ("PONIX_NATS_CONSUMER", self.consumer.clone()),
            (
                "PONIX_NATS_DEAD_LETTER_STREAM",
                self.dead_letter_stream.clone(),
            ),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT",
                self.dead_letter_subject.clone(),
            ),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".into()),
        ];
        vars.extend(extra.iter().cloned());
        vars
    }

    /// Deletes what an earlier run left and creates an empty database on the shared
    /// ClickHouse.
    async fn setup(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let js = self.setup_streams(endpoints).await?;
        support::fresh_database(endpoints, &self.database).await?;
        Ok(js)
    }

    async fn setup_streams(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let nats = async_nats::connect(&endpoints.nats_url)
            .await
            .context("connecting to NATS")?;
        let js = jetstream::new(nats);
        self.delete_streams(&js).await?;
        Ok(js)
    }

    async fn delete_streams(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        support::delete_streams(js, &[&self.stream, &self.dead_letter_stream]).await
    }

    /// [`Names::setup`], then the stream as the writer would create it, so that
    /// messages can be published before the writer starts.
    async fn setup_with_stream(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let js = self.setup(endpoints).await?;
        self.create_stream(&js).await?;
        Ok(js)
    }

    /// Creates the stream as the writer would, so that messages can be published
    /// before the writer starts.
    async fn create_stream(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        js.create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {}", self.stream))?;
        Ok(())
    }

    async fn consumer_info(
        &self,
        js: &jetstream::Context,
    ) -> anyhow::Result<jetstream::consumer::Info> {
        let mut consumer: PullConsumer = js
            .get_consumer_from_stream(&self.consumer, &self.stream)
            .await
            .with_context(|| format!("looking up consumer {}", self.consumer))?;
        Ok(consumer.info().await?.clone())
    }

    /// Starts the writer binary and waits until it is ready and its consumer exists:
    /// `/readyz` answers 200 once the migrations are done, just before the writer
    /// creates its streams and consumer.
    async fn start_writer(
        &self,
        js: &jetstream::Context,
        name: &str,
        endpoints: &Endpoints,
        vars: &[(&str, String)],
    ) -> anyhow::Result<WriterProcess> {
        let writer = support::writer::start(name, endpoints, vars).await?;
        support::wait_for(
            "the writer's consumer exists",
            Duration::from_secs(30),
            || async {
                let found: Result<PullConsumer, _> = js
                    .get_consumer_from_stream(&self.consumer, &self.stream)
                    .await;
                Ok(found.map(drop).map_err(|error| error.to_string()))
            },
        )
        .await
        .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(30)))?;
        Ok(writer)
    }

    async fn wait_drained(
        &self,
        js: &jetstream::Context,
        writer: &WriterProcess,
    ) -> anyhow::Result<()> {
        support::wait_until_drained(js, &self.stream, &self.consumer, DRAIN_TIMEOUT)
            .await
            .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(30)))?;
        // The server sees the last ack before the writer has counted it.
        support::wait_for(
            "the writer's metrics count every settled message",
            Duration::from_secs(10),
            || async {
                let in_flight = metric(&writer.metrics()?, "ponix_writer_messages_in_flight", &[]);
                Ok(if in_flight == 0.0 {
                    Ok(())
                } else {
                    Err(in_flight)
                })
            },
        )
        .await
    }

    async fn stop_writer(&self, mut writer: WriterProcess) -> anyhow::Result<()> {
        let log = writer.log().to_owned();
        let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
        ensure!(
            status.success(),
            "the writer exited with {status} after SIGTERM:\n{}",
            tail(&log)
        );
        Ok(())
    }

    /// After a passing test: nothing left behind on the shared endpoints.
    async fn cleanup(&self, js: &jetstream::Context, endpoints: &Endpoints) -> anyhow::Result<()> {
        self.delete_streams(js).await?;
        support::clickhouse(endpoints, "default")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await?;
        Ok(())
    }
}

/// Runs a blocking infrastructure call (process start, stop, wait) off the async
/// worker threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn tail(log: &std::path::Path) -> String {
    testkit::localenv::process::log_tail(log, 40)
}

/// Publishes every message, pipelining the publishes (the acknowledgements are
/// awaited per chunk, within async-nats' limit on acks in flight), and returns each
/// message's stream sequence, in order.
async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<(String, Vec<u8>, HeaderMap)>,
) -> anyhow::Result<Vec<u64>> {
    let mut sequences = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, bytes, headers) in chunk {
            let ack = js
                .publish_with_headers(subject.clone(), headers.clone(), bytes.clone().into())
                .await
                .with_context(|| format!("publishing to {subject}"))?;
            acks.push(ack.into_future());
        }
        for ack in futures::future::try_join_all(acks)
            .await
            .context("awaiting publish acks")?
        {
            sequences.push(ack.sequence);
        }
    }
    Ok(sequences)
}

// ---------------------------------------------------------------------------
// Envelopes, expectations, and what was stored.
// ---------------------------------------------------------------------------

/// Valid envelopes with unique device ids and simple payloads.
fn simple_envelopes(n: usize, tag: &str) -> Vec<ProcessedEnvelope> {
    (0..n)
        .map(|i| {
            let data = payload::json_str_to_struct(&format!(
                r#"{{"seq": {i}, "reading": {{"value": {}, "unit": "°C"}}, "ok": {}}}"#,
                i as f64 / 8.0,
                i % 2 == 0
            ))
            .expect("a JSON object");
            ProcessedEnvelope {
                organization_id: format!("org-{}", i % 7),
                end_device_id: format!("{tag}-{i:06}"),
                occurred_at: Some(Timestamp {
                    seconds: 1_700_000_000 + i as i64,
                    nanos: 500_000_000,
                }),
                processed_at: Some(Timestamp {
                    seconds: 1_700_000_060 + i as i64,
                    nanos: 0,
                }),
                data: Some(data),
            }
        })
        .collect()
}

/// `n` envelopes drawn with a fixed seed (every run sends the same ones): ids from the
/// shared strategies (unicode included) with a unique suffix, the key rows are matched
/// on; timestamps with sub-seconds, `processed_at` over the whole `DateTime` range;
/// payloads with the shared strategies' numbers (-0, subnormal, huge, integral beyond
/// 2^53) and strings (unicode, date-like, number-like), in nested objects and lists,
/// under keys that include dotted, empty, unicode and `%2E` ones.
///
/// Two things are bounded, as they are in real telemetry: `occurred_at`, the partition
/// key (by month), stays within one month, since ClickHouse refuses an INSERT spanning
/// more than 100 partitions (`max_partitions_per_insert_block`); and the keys come from
/// a fixed vocabulary. Fully random keys give a wide part thousands of JSON subcolumn
/// files, more than the chDB endpoint's open-files limit; chDB's streaming insert then
/// fails to write the part but reports the rows as written, and the endpoint answers
/// 200 with nothing stored (measured: 2,000 rows of `arb_struct` payloads).
fn generated_envelopes(n: usize, tag: &str) -> anyhow::Result<Vec<ProcessedEnvelope>> {
    const MONTH_START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z
    let strategy = (
        strategies::arb_id(),
        strategies::arb_id(),
        strategies::arb_timestamp_in_range(),
        strategies::arb_timestamp_in_range(),
        prop::option::weighted(0.95, bulk_payload()),
    );
    let mut runner = TestRunner::deterministic();
    let mut out = Vec::with_capacity(n);
    let mut rejected = 0usize;
    while out.len() < n {
        let (organization_id, device, occurred_at, processed_at, data) = strategy
            .new_tree(&mut runner)
            .map_err(|e| anyhow!("{e}"))?
            .current();
        let envelope = ProcessedEnvelope {
            organization_id,
            end_device_id: format!("{device}#{tag}-{:05}", out.len()),
            occurred_at: Some(Timestamp {
                seconds: MONTH_START + occurred_at.seconds % (28 * 86_400),
                nanos: occurred_at.nanos,
            }),
            processed_at: Some(processed_at),
            data,
        };
        // Every generated envelope should be valid; a few rejections would be a
        // writer bug worth a look, but this test is about storage.
        if envelope::decode(&envelope.encode_to_vec()).is_ok() {
            out.push(envelope);
        } else {
            rejected += 1;
            ensure!(
                rejected <= n / 100,
                "the writer rejects {rejected} generated envelopes; expected none"
            );
        }
    }
    Ok(out)
}

/// A payload for the bulk test: see [`generated_envelopes`].
fn bulk_payload() -> impl Strategy<Value = Struct> {
    const KEYS: &[&str] = &[
        "temperature",
        "humidity",
        "status",
        "readings",
        "meta",
        "a.b",
        "x.y.z",
        "",
        "é.ü",
        "k e y",
        "a%2Ec",
        "😀",
    ];
    const INNER_KEYS: &[&str] = &["value", "unit", "c.d", "", "n"];
    let scalar = prop_oneof![
        1 => Just(Kind::NullValue(0)),
        1 => any::<bool>().prop_map(Kind::BoolValue),
        3 => strategies::arb_finite_number().prop_map(Kind::NumberValue),
        3 => strategies::arb_string().prop_map(Kind::StringValue),
    ]
    .prop_map(|kind| Value { kind: Some(kind) });
    let object = |values: BoxedStrategy<Value>| {
        prop::collection::btree_map(
            prop::sample::select(INNER_KEYS).prop_map(str::to_owned),
            values,
            0..4,
        )
        .prop_map(|fields| Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        })
    };
    let list = prop::collection::vec(
        prop_oneof![4 => scalar.clone(), 1 => object(scalar.clone().boxed())],
        0..5,
    )
    .prop_map(|values| Value {
        kind: Some(Kind::ListValue(ListValue {
            values: without_ambiguous_nulls(values),
        })),
    });
    let member = prop_oneof![
        4 => scalar.clone(),
        2 => list.clone(),
        2 => object(prop_oneof![3 => scalar, 1 => list].boxed()),
    ];
    prop::collection::btree_map(
        prop::sample::select(KEYS).prop_map(str::to_owned),
        member,
        0..8,
    )
    .prop_map(|fields| Struct { fields })
}

/// The contract does not model a `null` in a list without a string, number or boolean
/// element (it may come back as `[]` or `{}`); such lists lose their nulls, as in the
/// shared strategies.
fn without_ambiguous_nulls(mut values: Vec<Value>) -> Vec<Value> {
    let scalar = |v: &Value| {
        matches!(
            v.kind,
            Some(Kind::NumberValue(_) | Kind::StringValue(_) | Kind::BoolValue(_))
        )
    };
    if !values.iter().any(scalar) {
        values.retain(|v| !matches!(v.kind, Some(Kind::NullValue(_)) | None));
    }
    values
}

/// One message for every reason a message is invalid: (name, expected reason, bytes).
fn invalid_messages() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let good = || ProcessedEnvelope {
        organization_id: "org-bad".into(),
        end_device_id: "device-bad".into(),
        occurred_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        processed_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        data: Some(payload::json_str_to_struct(r#"{"t": 1}"#).expect("a JSON object")),
    };
    let with = |change: &dyn Fn(&mut ProcessedEnvelope)| {
        let mut envelope = good();
        change(&mut envelope);
        envelope.encode_to_vec()
    };
    let data = |fields: Vec<(&str, f64)>| {
        Some(Struct {
            fields: fields
                .into_iter()
                .map(|(key, number)| {
                    (
                        key.to_owned(),
                        Value {
                            kind: Some(Kind::NumberValue(number)),
                        },
                    )
                })
                .collect(),
        })
    };
    let mut truncated = good().encode_to_vec();
    truncated.truncate(truncated.len() - 3);
    vec![
        // Field 1 with wire type 7, which does not exist.
        ("garbage", "decode_error", vec![0x0f, 0x01, 0x02]),
        ("truncated", "decode_error", truncated),
        (
            "no-org",
            "empty_organization_id",
            with(&|e| e.organization_id.clear()),
        ),
        (
            "no-device",
            "empty_end_device_id",
            with(&|e| e.end_device_id.clear()),
        ),
        (
            "no-occurred",
            "missing_occurred_at",
            with(&|e| e.occurred_at = None),
        ),
        (
            "no-processed",
            "missing_processed_at",
            with(&|e| e.processed_at = None),
        ),
        (
            "before-1970",
            "timestamp_out_of_range",
            with(&|e| {
                e.occurred_at = Some(Timestamp {
                    seconds: -1,
                    nanos: 0,
                })
            }),
        ),
        (
            "after-2106",
            "timestamp_out_of_range",
            with(&|e| {
                e.processed_at = Some(Timestamp {
                    seconds: DATETIME_MAX_SECS + 1,
                    nanos: 0,
                })
            }),
        ),
        (
            "bad-nanos",
            "timestamp_out_of_range",
            with(&|e| {
                e.occurred_at = Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: -1,
                })
            }),
        ),
        (
            "nan",
            "non_finite_number",
            with(&|e| e.data = data(vec![("t", f64::NAN)])),
        ),
        (
            "infinity",
            "non_finite_number",
            with(&|e| e.data = data(vec![("t", f64::NEG_INFINITY)])),
        ),
        (
            "collision",
            "json_key_collision",
            with(&|e| e.data = data(vec![("a.b", 1.0), ("a%2Eb", 2.0)])),
        ),
    ]
}

fn trace_headers(name: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Ponix-Test-Message", name);
    headers
}

/// What a valid envelope must look like in the table, computed from the message
/// itself: `DateTime` keeps whole seconds (the floor; a Timestamp's nanos are never
/// negative), the payload comes back as the fidelity contract says, and a missing
/// payload is `{}`.
#[derive(Debug)]
struct ExpectedRow {
    organization_id: String,
    end_device_id: String,
    occurred_at: DateTime<Utc>,
    processed_at: DateTime<Utc>,
    data: Struct,
}

impl ExpectedRow {
    fn of(envelope: &ProcessedEnvelope) -> Self {
        let seconds = |t: Option<Timestamp>| {
            let t = t.expect("a valid envelope has both timestamps");
            DateTime::from_timestamp(t.seconds, 0).expect("in range")
        };
        Self {
            organization_id: envelope.organization_id.clone(),
            end_device_id: envelope.end_device_id.clone(),
            occurred_at: seconds(envelope.occurred_at),
            processed_at: seconds(envelope.processed_at),
            data: envelope
                .data
                .as_ref()
                .map(payload::expected_after_clickhouse)
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct StoredRow {
    organization_id: String,
    end_device_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    occurred_at: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    processed_at: DateTime<Utc>,
    data: String,
}

async fn stored_rows(endpoints: &Endpoints, database: &str) -> anyhow::Result<Vec<StoredRow>> {
    support::clickhouse(endpoints, database)
        .query("SELECT ?fields FROM processed_envelopes ORDER BY end_device_id")
        .fetch_all::<StoredRow>()
        .await
        .context("reading the stored rows")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Duplicates {
    Forbidden,
    /// At-least-once: a row may be stored twice, but every copy must be right.
    Allowed,
}

/// Matches stored rows to expected ones by device id and compares every field.
/// Returns the number of duplicate rows.
fn compare_rows(
    expected: &[ExpectedRow],
    stored: &[StoredRow],
    duplicates: Duplicates,
) -> anyhow::Result<usize> {
    let mut by_device: HashMap<&str, Vec<&StoredRow>> = HashMap::new();
    for row in stored {
        by_device
            .entry(row.end_device_id.as_str())
            .or_default()
            .push(row);
    }
    let mut problems = Vec::new();
    let mut extra_copies = 0;
    for want in expected {
        let Some(copies) = by_device.remove(want.end_device_id.as_str()) else {
            problems.push(format!("{:?}: not stored", want.end_device_id));
            continue;
        };
        if copies.len() > 1 && duplicates == Duplicates::Forbidden {
            problems.push(format!(
                "{:?}: stored {} times",
                want.end_device_id,
                copies.len()
            ));
        }
        extra_copies += copies.len() - 1;
        for row in copies {
            problems.extend(row_differences(want, row));
        }
    }
    for device in by_device.keys() {
        problems.push(format!("{device:?}: stored but never sent"));
    }
    if !problems.is_empty() {
        bail!(
            "{} of {} expected rows are wrong ({} rows stored); the first ones:\n{}",
            problems.len(),
            expected.len(),
            stored.len(),
            problems
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(extra_copies)
}

fn row_differences(want: &ExpectedRow, got: &StoredRow) -> Vec<String> {
    let device = &want.end_device_id;
    let mut problems = Vec::new();
    if got.organization_id != want.organization_id {
        problems.push(format!(
            "{device:?}: organization_id {:?}, sent {:?}",
            got.organization_id, want.organization_id
        ));
    }
    if got.occurred_at != want.occurred_at {
        problems.push(format!(
            "{device:?}: occurred_at {}, expected {}",
            got.occurred_at, want.occurred_at
        ));
    }
    if got.processed_at != want.processed_at {
        problems.push(format!(
            "{device:?}: processed_at {}, expected {}",
            got.processed_at, want.processed_at
        ));
    }
    match payload::json_str_to_struct(&got.data) {
        Ok(data) if payload::structs_identical(&data, &want.data) => {}
        Ok(_) => problems.push(format!(
            "{device:?}: data {}, the contract promises {}",
            got.data,
            payload::to_json_value(&want.data)
                .map(|v| v.to_string())
                .unwrap_or_default()
        )),
        Err(error) => problems.push(format!(
            "{device:?}: data {:?} is not a JSON object: {error}",
            got.data
        )),
    }
    problems
}

#[derive(Debug)]
struct DeadLetter {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    }
}

/// Every message on the dead-letter stream, in stream order.
async fn dead_letters(
    js: &jetstream::Context,
    stream_name: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("the dead-letter stream {stream_name}"))?;
    let state = stream.info().await?.state.clone();
    let mut letters = Vec::new();
    for sequence in state.first_sequence.max(1)..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await?;
        letters.push(DeadLetter {
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload.to_vec(),
        });
    }
    Ok(letters)
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

/// The sum of every sample of `name` whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

fn expect_metric(
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> anyhow::Result<()> {
    let found = metric(text, name, labels);
    ensure!(
        found == expected,
        "{name}{labels:?} is {found}, expected {expected}; /metrics:\n{text}"
    );
    Ok(())
}
