//! The drills where ClickHouse fails under the writer: stopped, frozen, stopped for
//! longer than NAKing could last, and a table whose schema does not match. In every
//! one the writer holds its batch and retries, spending no delivery, and everything
//! lands once the fault is fixed.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use crate::common::{FAULT_TIMEOUT, drain_timeout, finish, thirds, wait_metrics};
use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{Rig, Schema, TABLE, VERSION_BEFORE_STREAM_SEQUENCE, blocking};
use crate::writer::{Metrics, Writer, names};

/// clickhouse-down: ClickHouse stops mid-stream for longer than AckWait and comes back
/// on the same data. The writer holds its batch and retries meanwhile (no NAK, no
/// redelivery); everything lands once.
pub async fn clickhouse_down(messages: u64) -> anyhow::Result<Report> {
    clickhouse_outage(messages, ClickHouseFault::Down).await
}

/// clickhouse-hang: ClickHouse is frozen (SIGSTOP) for longer than the insert
/// timeout, then resumed. Inserts time out and are retried; an INSERT the writer gave
/// up on may still commit when ClickHouse resumes, and its retry must not duplicate.
pub async fn clickhouse_hang(messages: u64) -> anyhow::Result<Report> {
    clickhouse_outage(messages, ClickHouseFault::Hang).await
}

/// long-outage: with a small MaxDeliver and short NAK delays, ClickHouse is stopped
/// for ten times the whole NAK budget those allow (the time in which NAKing would
/// have spent every delivery), while publishing goes on. Nothing may be
/// dead-lettered, nothing NAKed: an outage spends no delivery.
pub async fn long_outage(messages: u64) -> anyhow::Result<Report> {
    clickhouse_outage(messages, ClickHouseFault::LongDown).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClickHouseFault {
    /// Stopped (SIGTERM) for at least twice AckWait, restarted on the same data.
    Down,
    /// Frozen (SIGSTOP) for at least twice the insert timeout, then resumed.
    Hang,
    /// Stopped for at least ten times the NAK budget of MaxDeliver (and twice
    /// AckWait), restarted on the same data.
    LongDown,
}

/// The settings of `long-outage`: 5 deliveries, NAK delays from 100 ms to 1 s.
const LONG_OUTAGE_SETTINGS: &[(&str, &str)] = &[
    ("PONIX_NATS_MAX_DELIVER", "5"),
    ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "100"),
    ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "1000"),
];

/// How long NAKing with backoff would take to spend every delivery a message has:
/// the sum of the un-jittered delays of its first MaxDeliver − 1 NAKs.
fn nak_budget(rig: &Rig) -> Duration {
    let setting = |key: &str| -> u64 {
        rig.setting(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    };
    let base = Duration::from_millis(setting("PONIX_NATS_NAK_BACKOFF_BASE_MS"));
    let max = Duration::from_millis(setting("PONIX_NATS_NAK_BACKOFF_MAX_MS"));
    (1..setting("PONIX_NATS_MAX_DELIVER") as i64)
        .map(|delivered| ponix_writer::consumer::nak_delay(delivered, base, max, 1.0))
        .sum()
}

/// A third of the envelopes stored, the fault during the second third, the last
/// third after it.
async fn clickhouse_outage(messages: u64, fault: ClickHouseFault) -> anyhow::Result<Report> {
    // The fault lasts at least `minimum`, which `bound_name` explains in the report.
    let (name, settings, state): (_, &[(&str, &str)], _) = match fault {
        ClickHouseFault::Down => ("clickhouse-down", &[], "down"),
        ClickHouseFault::Hang => (
            "clickhouse-hang",
            &[("PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS", "2")],
            "frozen",
        ),
        ClickHouseFault::LongDown => ("long-outage", LONG_OUTAGE_SETTINGS, "down"),
    };
    let mut rig = Rig::new(name, settings, Schema::Current).await?;
    let ack_wait = rig.seconds("PONIX_NATS_ACK_WAIT_SECS");
    let (minimum, bound_name) = match fault {
        ClickHouseFault::Down => (ack_wait * 2, format!("2 × AckWait {ack_wait:?}")),
        ClickHouseFault::Hang => {
            let timeout = rig.seconds("PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS");
            (timeout * 2, format!("2 × insert timeout {timeout:?}"))
        }
        ClickHouseFault::LongDown => {
            let budget = nak_budget(&rig);
            (
                (budget * 10).max(ack_wait * 2),
                format!("10 × the NAK budget of MaxDeliver 5, {budget:?}"),
            )
        }
    };
    let plan = Plan::valid(name, messages);
    let [first, second, third] = thirds(messages);
    let mut writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    rig.start_publishing(&plan, first.clone(), None).await??;
    rig.wait_rows(*first.end(), FAULT_TIMEOUT).await?;

    let before = writer.scrape()?.clone();
    let publisher = rig.publisher();
    let since = Instant::now();
    enum Outage<'a> {
        Stopped(testkit::infra::Stopped<'a>),
        Frozen(testkit::infra::Frozen<'a>),
    }
    // In a block of its own: the guard borrows the rig until the fault ends.
    let (during, waited) = {
        let outage = match fault {
            ClickHouseFault::Down | ClickHouseFault::LongDown => {
                Outage::Stopped(blocking(|| rig.clickhouse.stop())?)
            }
            ClickHouseFault::Hang => Outage::Frozen(blocking(|| rig.clickhouse.freeze())?),
        };
        // Published during the fault; the writer takes them and cannot store them.
        let during = publisher.start(&plan, second, None);
        let waited = wait_metrics(
            &mut writer,
            &format!("inserts failing and retried, a batch held, while ClickHouse is {state}"),
            FAULT_TIMEOUT + minimum,
            |m| {
                failed_inserts(m) >= failed_inserts(&before) + 2
                    && m.sum(names::INSERT_RETRIES, "") > before.sum(names::INSERT_RETRIES, "")
                    && m.sum(names::BATCHES_HELD, "") > 0
                    && since.elapsed() >= minimum
            },
        )
        .await;
        // What an operator sees meanwhile: the outage on /readyz, and the time since
        // the last insert growing.
        let seen = waited.as_ref().ok().map(|()| {
            let silent = writer
                .scrape_or_keep()
                .sum(names::SECONDS_SINCE_LAST_INSERT, "");
            (writer.readyz(), silent)
        });
        match outage {
            Outage::Stopped(stopped) => blocking(|| stopped.start())?,
            Outage::Frozen(frozen) => drop(frozen),
        }
        (during, waited.map(|()| seen))
    };
    let seen = waited?;
    let lasted = since.elapsed();
    if fault != ClickHouseFault::Hang {
        // A restarted server no longer has merges stopped.
        rig.stop_merges().await?;
    }
    let after = publisher.start(&plan, third, None);

    let fault_over = Instant::now();
    let mut report = finish(
        &mut rig,
        &plan,
        vec![during, after],
        writer,
        Metrics::default(),
        fault_over,
    )
    .await?;
    let (readyz, silent) = seen.unwrap_or((None, 0));
    report.note(format!(
        "ClickHouse {state} {:.1}s (at least {bound_name}), {} failed inserts, {} retried; \
         /readyz {}; no insert for {silent}s at the end",
        lasted.as_secs_f64(),
        report.insert_failures,
        report.insert_retries,
        readyz
            .as_ref()
            .map_or("silent".to_owned(), |(status, _)| status.to_string()),
    ));
    report.require(
        report.insert_failures > 0,
        format!("no insert failed while ClickHouse was {state}"),
    );
    report.require(
        report.insert_retries > 0,
        format!("no INSERT was retried while ClickHouse was {state}"),
    );
    // An outage spends no delivery: nothing is NAKed (only shutdown NAKs a held
    // batch, and this one ended before the writer was stopped).
    report.require(
        report.naks == 0,
        format!("{} messages were NAKed during the outage", report.naks),
    );
    report.require(
        matches!(&readyz, Some((503, body)) if body.contains("holding")),
        format!("/readyz did not report the held batch during the outage: {readyz:?}"),
    );
    if fault != ClickHouseFault::Hang {
        report.require(
            silent * 1000 >= minimum.as_millis() as u64 / 2,
            format!("seconds_since_last_insert was {silent} after {lasted:?} down"),
        );
    }
    Ok(report)
}

fn failed_inserts(metrics: &Metrics) -> u64 {
    metrics.sum(names::INSERTS, "") - metrics.sum(names::INSERTS, "result=\"ok\"")
}

/// schema-drift: the writer runs against a table whose schema does not match, first a
/// missing column (the last migration not applied, migrations switched off in the
/// writer), then a renamed one. Inserts fail as permanent errors; the writer says so
/// in its log and on /readyz and holds its batch, retrying, while the rest stays in
/// the stream (nothing stored, nothing dead-lettered, nothing NAKed). Fixing the
/// table (goose `up`, then an ALTER) lets the backlog drain without a restart.
pub async fn schema_drift(messages: u64) -> anyhow::Result<Report> {
    let name = "schema-drift";
    let mut rig = Rig::new(
        name,
        &[("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false")],
        Schema::UpTo(VERSION_BEFORE_STREAM_SEQUENCE),
    )
    .await?;
    let plan = Plan::valid(name, messages);
    let half = messages / 2;
    let mut writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    let mut evidence = Vec::new();

    // Phase 1: a missing column, fixed by the migration.
    rig.start_publishing(&plan, 1..=half, None).await??;
    let before = writer.scrape()?.clone();
    expect_permanent_errors(&rig, &mut writer, &before, half, 0).await?;
    evidence.push(
        "missing column: permanent errors, 0 stored, 0 dead-lettered, then `goose up`".to_owned(),
    );
    rig.goose(&["up"])?;
    rig.wait_drained(drain_timeout(half)).await?;

    // Phase 2: a renamed column, fixed by renaming it back. The table the migration
    // rebuilt merges (RENAME COLUMN would wait for merges to be allowed); nothing is
    // re-inserted in this drill, so there are no copies to keep countable.
    let stored_after_phase_1 = rig.rows().await?;
    rig.execute(&format!(
        "ALTER TABLE {TABLE} RENAME COLUMN data TO payload"
    ))
    .await?;
    // All of it in the stream before the check that all of it is still pending.
    rig.start_publishing(&plan, half + 1..=plan.total, None)
        .await??;
    let before = writer.scrape()?.clone();
    expect_permanent_errors(
        &rig,
        &mut writer,
        &before,
        plan.total - half,
        stored_after_phase_1,
    )
    .await?;
    rig.execute(&format!(
        "ALTER TABLE {TABLE} RENAME COLUMN payload TO data"
    ))
    .await?;
    evidence.push("renamed column: the same, then ALTER back".to_owned());

    let fault_over = Instant::now();
    let mut report = finish(
        &mut rig,
        &plan,
        Vec::new(),
        writer,
        Metrics::default(),
        fault_over,
    )
    .await?;
    report.note(evidence.join("; "));
    report.require(report.insert_retries > 0, "no INSERT was retried");
    report.require(
        report.naks == 0,
        format!("{} messages were NAKed for a schema problem", report.naks),
    );
    Ok(report)
}

/// While the schema is wrong: inserts fail as permanent (destination) errors and are
/// retried, the writer is not ready and logs the error, nothing more is stored or
/// dead-lettered, and every message is still in the stream or held by the writer.
async fn expect_permanent_errors(
    rig: &Rig,
    writer: &mut Writer,
    before: &Metrics,
    published: u64,
    rows_before: u64,
) -> anyhow::Result<()> {
    const PERMANENT: &str = "result=\"permanent_destination\"";
    wait_metrics(
        writer,
        "permanent insert errors, the batch held and retried",
        FAULT_TIMEOUT,
        |m| {
            m.sum(names::INSERTS, PERMANENT) >= before.sum(names::INSERTS, PERMANENT) + 3
                && m.sum(names::INSERT_RETRIES, "") > before.sum(names::INSERT_RETRIES, "")
        },
    )
    .await?;
    match writer.readyz() {
        Some((503, body)) if body.contains("table or credential problem") => {}
        other => bail!("/readyz does not report the permanent store error: {other:?}"),
    }
    let log = std::fs::read_to_string(&rig.log)?;
    ensure!(
        log.contains("permanent store error") && log.contains("until the table is fixed"),
        "the writer's log does not report the permanent store error"
    );
    let rows = rig.rows().await?;
    ensure!(
        rows == rows_before,
        "{} rows were stored while the schema was wrong",
        rows - rows_before
    );
    let dead_letters = rig
        .js
        .get_stream("DRILL_DEAD_LETTERS")
        .await?
        .get_info()
        .await?
        .state
        .messages;
    ensure!(
        dead_letters == 0,
        "{dead_letters} messages were dead-lettered while the schema was wrong"
    );
    let (pending, ack_pending) = rig.consumer_backlog().await?;
    ensure!(
        pending + ack_pending >= published,
        "only {} of {published} messages are still pending in the stream",
        pending + ack_pending
    );
    Ok(())
}
