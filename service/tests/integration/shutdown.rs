//! SIGTERM in the middle of a batch loses nothing. With the INSERT hanging the writer
//! NAKs the batch and exits within its shutdown timeout; with the INSERT merely slow it
//! finishes the batch and leaves nothing awaiting an ack. Either way a second writer
//! stores the rest in less than AckWait, which only settled messages allow.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use async_nats::jetstream;
use ponix_writer::envelope::ProcessedEnvelope;
use testkit::Endpoints;
use testkit::infra::Managed;

use crate::envelopes::simple_envelopes;
use crate::metrics::metric;
use crate::names::{Names, blocking, publish_all, tail};
use crate::rows::{Duplicates, ExpectedRow, compare_rows, stored_rows};
use crate::support::writer::WriterProcess;
use crate::{ACK_WAIT, DRAIN_TIMEOUT, support};

/// ClickHouse is frozen (SIGSTOP), so the batch's INSERT hangs. SIGTERM then: the
/// writer must give up on the batch within its drain grace, NAK it and exit 0 within
/// the shutdown timeout.
///
/// Right after the exit the consumer still counts the batch as awaiting ack: the
/// server keeps a message NAKed with a delay in its pending set until it redelivers it
/// (nats-server 2.15, measured), so `num_ack_pending` cannot tell NAKed from forgotten.
/// Timing can: with AckWait at 60 s, a second writer must store every message within
/// 20 s, which only NAKed messages allow; a forgotten one would wait for AckWait.
pub async fn sigterm_during_a_hanging_insert_naks_the_batch_and_loses_nothing(
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
pub async fn sigterm_during_a_slow_insert_finishes_the_batch_and_leaves_nothing_unacked(
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
