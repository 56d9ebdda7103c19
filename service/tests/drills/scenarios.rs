//! The drills. Each publishes envelopes with unique ids while a fault happens, waits
//! until the consumer is drained, and reports what was stored and dead-lettered
//! ([`crate::report`]). Faults start and end on conditions (rows stored, the writer's
//! metrics and `/readyz`), never after a fixed sleep; only how long a fault lasts
//! has a lower bound in time where the fault is defined by one (longer than AckWait,
//! longer than the insert timeout).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{Rig, Schema, TABLE, VERSION_BEFORE_STREAM_SEQUENCE, blocking};
use crate::support::wait_for;
use crate::trap::{Cut, InsertTrap};
use crate::writer::{Metrics, Writer, names};

/// The longest wait for a fault's precondition (rows stored, failures seen).
pub const FAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// The longest wait for the drain: generous, for a loaded two-core machine.
pub fn drain_timeout(published: u64) -> Duration {
    Duration::from_secs(180 + published / 400)
}

/// Ids 1..=messages in three consecutive parts: before, during and after a fault.
fn thirds(messages: u64) -> [std::ops::RangeInclusive<u64>; 3] {
    let third = messages / 3;
    [1..=third, third + 1..=2 * third, 2 * third + 1..=messages]
}

/// Waits until `condition` holds for the writer's metrics, scraping them.
pub async fn wait_metrics(
    writer: &mut Writer,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&Metrics) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = writer.scrape()?;
        if condition(metrics) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: not reached within {timeout:?}; the writer's log ends with:\n{}",
                writer.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn failed_inserts(metrics: &Metrics) -> u64 {
    metrics.sum(names::INSERTS, "") - metrics.sum(names::INSERTS, "result=\"ok\"")
}

pub type Publishing = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Publishing done, the consumer drained, the writer stopped with SIGTERM, and the
/// count: the common end of every drill. `fault_over` is when the last fault ended;
/// the drain is timed from then, or from the end of publishing if that came later.
async fn finish(
    rig: &mut Rig,
    plan: &Plan,
    publishing: Vec<Publishing>,
    writer: Writer,
    totals: Metrics,
    fault_over: Instant,
) -> anyhow::Result<Report> {
    finish_all(rig, plan, publishing, vec![writer], totals, fault_over).await
}

/// [`finish`] with several writers sharing the consumer: each is stopped with SIGTERM
/// and must exit cleanly.
pub async fn finish_all(
    rig: &mut Rig,
    plan: &Plan,
    publishing: Vec<Publishing>,
    writers: Vec<Writer>,
    mut totals: Metrics,
    fault_over: Instant,
) -> anyhow::Result<Report> {
    for publisher in publishing {
        publisher
            .await
            .context("the publisher panicked")?
            .context("publishing")?;
    }
    let drain_from = fault_over.max(Instant::now());
    if let Err(err) = rig.wait_drained(drain_timeout(plan.total)).await {
        bail!(
            "{err:#}\nthe writers' log ends with:\n{}\n{}",
            process_log_tail(rig),
            rig.infra_log_tails()
        );
    }
    let drain = drain_from.elapsed();
    let mut statuses = Vec::new();
    for writer in writers {
        let (status, metrics) = writer.terminate(Duration::from_secs(45)).await?;
        totals.add(&metrics);
        statuses.push(status);
    }
    let mut report = rig.report(plan, &totals, drain).await?;
    for status in statuses {
        report.require(
            status.success(),
            format!("a writer exited with {status} after SIGTERM"),
        );
    }
    Ok(report)
}

fn process_log_tail(rig: &Rig) -> String {
    testkit::localenv::process::log_tail(&rig.log, 40)
}

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

/// nats-restart: nats-server is restarted mid-stream on the same store directory,
/// once gracefully (SIGTERM) and once as a crash (SIGKILL). The writer reconnects;
/// acks lost on the way cause redeliveries, which must not duplicate.
pub async fn nats_restart(messages: u64) -> anyhow::Result<Report> {
    let name = "nats-restart";
    let mut rig = Rig::new(name, &[], Schema::Current).await?;
    let plan = Plan::valid(name, messages);
    let [first, second, third] = thirds(messages);
    let writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    rig.start_publishing(&plan, first, None).await??;

    let mut outages = Vec::new();
    let mut publishing = Vec::new();
    for (ids, crash) in [(second, false), (third, true)] {
        // Mid-stream: the writer is busy with what came before, and the publisher
        // (retrying until JetStream acknowledges) with the next part.
        rig.wait_rows(*ids.start() - 1, FAULT_TIMEOUT).await?;
        let old_pid = rig.nats.server().pid();
        let publisher = rig.publisher();
        publishing.push(publisher.start(&plan, ids, None));
        let since = Instant::now();
        let stopped = blocking(|| {
            if crash {
                rig.nats.server().kill()
            } else {
                rig.nats.server().stop()
            }
        })?;
        // The writer must notice: /readyz names the NATS connection while it is down.
        let noticed = wait_for(
            "the writer's /readyz reporting NATS down",
            Duration::from_secs(60),
            || {
                let ready = writer.readyz();
                async move {
                    Ok(match ready {
                        Some((503, body)) if body.contains("nats") => Ok(body),
                        other => Err(other),
                    })
                }
            },
        )
        .await;
        blocking(|| stopped.start())?;
        noticed?;
        ensure!(
            rig.nats.server().pid() != old_pid,
            "nats-server was not restarted"
        );
        outages.push(format!(
            "{} after {} rows, down {:.1}s",
            if crash { "SIGKILL" } else { "SIGTERM" },
            rig.progress.rows(),
            since.elapsed().as_secs_f64()
        ));
    }

    let fault_over = Instant::now();
    let mut report = finish(
        &mut rig,
        &plan,
        publishing,
        writer,
        Metrics::default(),
        fault_over,
    )
    .await?;
    report.note(format!(
        "nats-server restarted twice ({}); the writer reported each outage on /readyz; {} acks unconfirmed",
        outages.join(", "),
        report.ack_failures
    ));
    Ok(report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// As soon as the stored rows passed a random mark.
    Random,
    /// During start-up: after the HTTP endpoint answers, before the writer is ready.
    Startup,
    /// With an INSERT half sent: ClickHouse has its head, not its body.
    InsertUnsent,
    /// With an INSERT committed and its answer withheld: its messages are stored and
    /// never acknowledged, so they come back and are inserted a second time.
    InsertCommitted,
}

/// Messages the publisher holds back for each INSERT kill, released once the trap is
/// armed, so that an INSERT follows however far the writer had got.
const RELEASED_PER_TRAP: u64 = 100;

/// writer-kill: SIGKILL the writer many times and restart it: at random points, during
/// start-up, with an INSERT half sent, and between a committed INSERT and its acks.
/// The writer reaches ClickHouse through an [`InsertTrap`], which stops the next
/// INSERT exactly where the kill is wanted.
pub async fn writer_kill(messages: u64) -> anyhow::Result<Report> {
    let name = "writer-kill";
    use Kill::*;
    let planned = [
        Random,
        InsertUnsent,
        Random,
        Startup,
        InsertCommitted,
        Random,
        InsertUnsent,
        InsertCommitted,
    ];
    let traps = planned
        .iter()
        .filter(|kind| matches!(kind, InsertUnsent | InsertCommitted))
        .count() as u64;
    ensure!(
        messages >= 2 * traps * RELEASED_PER_TRAP,
        "writer-kill needs at least {} messages",
        2 * traps * RELEASED_PER_TRAP
    );
    // Small batches: many INSERTs, so many points to kill at.
    let mut rig = Rig::new(name, &[("PONIX_NATS_BATCH_SIZE", "100")], Schema::Current).await?;
    let trap = InsertTrap::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], rig.clickhouse.port())),
        TABLE,
    )
    .await?;
    rig.set("PONIX_CLICKHOUSE_URL", &trap.url());
    let plan = Plan::valid(name, messages);
    let mut writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    let mut withheld = traps * RELEASED_PER_TRAP;
    rig.progress.withheld.store(withheld, Ordering::Relaxed);
    // At most three batches ahead of the rows stored, so that publishing goes on
    // until the last kill.
    let publishing = rig.start_publishing(&plan, 1..=plan.total, Some(300));

    let spacing = messages / (planned.len() as u64 + 2);
    let mut totals = Metrics::default();
    let mut committed_unacked = 0u32;
    for (index, kind) in planned.iter().copied().enumerate() {
        // Rows count copies, so the stored rows reach every mark below what may be
        // published, even while the writer is far behind.
        let mark = (index as u64 + 1) * spacing + fastrand::u64(0..=spacing / 2);
        rig.wait_rows(mark.min(messages - withheld), FAULT_TIMEOUT)
            .await?;
        writer.scrape_or_keep();
        match kind {
            Random => {}
            Startup => {
                totals.add(&writer.kill().await?);
                let starting = Writer::spawn(&rig.vars, &rig.log)?;
                let port = starting.http_port;
                wait_for(
                    "the restarted writer's /healthz",
                    Duration::from_secs(60),
                    || async move {
                        Ok(match testkit::localenv::net::http_get(port, "/healthz") {
                            Ok(response) if response.status == 200 => Ok(()),
                            other => Err(other.map(|r| r.status).map_err(|e| e.to_string())),
                        })
                    },
                )
                .await?;
                writer = starting;
            }
            InsertUnsent | InsertCommitted => {
                let cut = if kind == InsertUnsent {
                    Cut::BeforeBody
                } else {
                    Cut::BeforeAnswer
                };
                let caught = trap.arm(cut);
                withheld -= RELEASED_PER_TRAP;
                rig.progress.withheld.store(withheld, Ordering::Relaxed);
                let caught = tokio::time::timeout(FAULT_TIMEOUT, caught)
                    .await
                    .with_context(|| {
                        format!(
                            "no INSERT reached the trap within {FAULT_TIMEOUT:?} of {RELEASED_PER_TRAP} messages more being published; the writer's log ends with:\n{}",
                            writer.log_tail(30)
                        )
                    })?
                    .context("the INSERT trap closed")?;
                if kind == InsertCommitted {
                    ensure!(
                        caught.committed,
                        "the trapped INSERT did not commit; the writer's log ends with:\n{}",
                        writer.log_tail(30)
                    );
                    committed_unacked += 1;
                }
            }
        }
        totals.add(&writer.kill().await?);
        writer = Writer::start(&rig.vars, &rig.log).await?;
    }

    let fault_over = Instant::now();
    let mut report = finish(
        &mut rig,
        &plan,
        vec![publishing],
        writer,
        totals,
        fault_over,
    )
    .await?;
    let count = |k: Kill| planned.iter().filter(|x| **x == k).count();
    report.note(format!(
        "{} SIGKILLs: {} at random, {} during start-up, {} with an INSERT half sent, {} between a committed INSERT and its acks",
        planned.len(),
        count(Random),
        count(Startup),
        count(InsertUnsent),
        committed_unacked
    ));
    report.require(
        report.redeliveries > 0,
        "no redelivery was observed after the kills",
    );
    // The proof that the window was hit: rows that were committed, not acknowledged,
    // delivered again and inserted a second time.
    report.require(
        report.reinserted > 0,
        "no committed row came back to be inserted again",
    );
    Ok(report)
}

/// How many times `replicas` SIGKILLs and restarts one of its writers.
const REPLICA_KILLS: u64 = 4;

/// replicas: three writers share the durable consumer under load. One is SIGKILLed
/// and restarted again and again, another is stopped with SIGTERM halfway and started
/// again; every row is stored once, and every writer stored some.
pub async fn replicas(messages: u64) -> anyhow::Result<Report> {
    let name = "replicas";
    // Small batches spread the stream over the three.
    let mut rig = Rig::new(name, &[("PONIX_NATS_BATCH_SIZE", "200")], Schema::Current).await?;
    let plan = Plan::valid(name, messages);
    // Started together, as a Deployment rolls out.
    let (a, b, c) = tokio::try_join!(
        Writer::start(&rig.vars, &rig.log),
        Writer::start(&rig.vars, &rig.log),
        Writer::start(&rig.vars, &rig.log),
    )?;
    let mut writers = [a, b, c];
    rig.start_monitor();
    // A few batches ahead of what is stored, so that publishing lasts through the
    // faults.
    let publishing = rig.start_publishing(&plan, 1..=plan.total, Some(1000));

    let mut totals = Metrics::default();
    let mut stored_by = [0u64; 3];
    let spacing = messages / (REPLICA_KILLS + 2);
    for kill in 1..=REPLICA_KILLS {
        rig.wait_rows(kill * spacing, FAULT_TIMEOUT).await?;
        if kill == REPLICA_KILLS / 2 {
            let stopping = replace_writer(&mut writers[1], &rig)?;
            let (status, metrics) = stopping.terminate(Duration::from_secs(45)).await?;
            ensure!(
                status.success(),
                "a replica exited with {status} after SIGTERM:\n{}",
                writers[1].log_tail(30)
            );
            stored_by[1] += metrics.sum(names::ROWS_INSERTED, "");
            totals.add(&metrics);
            writers[1].wait_ready().await?;
        }
        let mut killed = replace_writer(&mut writers[0], &rig)?;
        killed.scrape_or_keep();
        let metrics = killed.kill().await?;
        stored_by[0] += metrics.sum(names::ROWS_INSERTED, "");
        totals.add(&metrics);
        writers[0].wait_ready().await?;
    }
    for (index, writer) in writers.iter_mut().enumerate() {
        stored_by[index] += writer.scrape_or_keep().sum(names::ROWS_INSERTED, "");
    }

    let fault_over = Instant::now();
    let mut report = finish_all(
        &mut rig,
        &plan,
        vec![publishing],
        writers.into(),
        totals,
        fault_over,
    )
    .await?;
    report.note(format!(
        "3 writers on one consumer; {REPLICA_KILLS} SIGKILLs of one, 1 SIGTERM of another; \
         rows inserted per writer slot (before the drain) {stored_by:?}"
    ));
    report.require(
        stored_by.iter().all(|rows| *rows > 0),
        format!("not every writer stored rows: {stored_by:?}"),
    );
    Ok(report)
}

/// Puts a newly spawned writer (not yet ready) in `slot` and returns the one it
/// replaces, to be stopped by the caller; the new one starts while the old one stops,
/// as a restarted pod would.
fn replace_writer(slot: &mut Writer, rig: &Rig) -> anyhow::Result<Writer> {
    let new = Writer::spawn(&rig.vars, &rig.log)?;
    Ok(std::mem::replace(slot, new))
}

/// poison: 1% of the envelopes are undecodable or invalid (five kinds). Every valid
/// one is stored; every invalid one is on the dead-letter stream with its reason,
/// delivered at most twice.
pub async fn poison(messages: u64) -> anyhow::Result<Report> {
    let name = "poison";
    // No fault plays out here, so nothing needs the drills' short AckWait; with it, a
    // stall of a loaded machine could redeliver an invalid message before its TERM
    // lands, and the exact dead-letter count below would count it twice.
    let mut rig = Rig::new(name, &[("PONIX_NATS_ACK_WAIT_SECS", "30")], Schema::Current).await?;
    let plan = Plan::with_one_percent_invalid(name, messages);
    let writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    let publishing = rig.start_publishing(&plan, 1..=plan.total, None);
    let started = Instant::now();
    let mut report = finish(
        &mut rig,
        &plan,
        vec![publishing],
        writer,
        Metrics::default(),
        started,
    )
    .await?;
    let counted = report.metrics_dead_lettered;
    report.note(format!(
        "{} invalid injected (5 kinds); the writer counted {counted} dead letters",
        plan.invalid.len()
    ));
    report.require(
        counted == plan.invalid.len() as u64,
        format!(
            "the writer's dead_lettered_total is {counted}, not {}",
            plan.invalid.len()
        ),
    );
    Ok(report)
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

/// backlog: 20 × N envelopes (200,000 at the default N) are published before the
/// writer starts; all are stored, and the writer's peak RSS stays bounded.
pub async fn backlog(messages: u64) -> anyhow::Result<Report> {
    const PEAK_RSS_LIMIT_MIB: u64 = 256;
    let name = "backlog";
    // The production defaults for the consumer: this is about volume, not faults.
    let mut rig = Rig::new(
        name,
        &[
            ("PONIX_NATS_ACK_WAIT_SECS", "30"),
            ("PONIX_NATS_BATCH_WAIT_SECS", "1"),
            ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "500"),
            ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "30000"),
            ("PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS", "30"),
            ("PONIX_LOG_LEVEL", "info"),
        ],
        Schema::Current,
    )
    .await?;
    // No copies to count here; let the table merge as it would in production.
    rig.start_merges().await?;
    let plan = Plan::valid(name, messages * 20);
    let publish_started = Instant::now();
    rig.start_publishing(&plan, 1..=plan.total, None).await??;
    let publish_took = publish_started.elapsed();

    let started = Instant::now();
    let writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    rig.wait_drained(drain_timeout(plan.total))
        .await
        .with_context(|| writer.log_tail(30))?;
    let drain = started.elapsed();
    let peak_kib = writer.peak_rss_kib()?;
    let mut report = finish(
        &mut rig,
        &plan,
        Vec::new(),
        writer,
        Metrics::default(),
        started,
    )
    .await?;
    report.drain = drain;
    let peak_mib = peak_kib / 1024;
    report.note(format!(
        "published in {:.1}s before the writer started; drained at {:.0} rows/s; writer peak RSS {peak_mib} MiB (VmHWM)",
        publish_took.as_secs_f64(),
        plan.total as f64 / report.drain.as_secs_f64().max(0.001)
    ));
    report.require(
        peak_mib <= PEAK_RSS_LIMIT_MIB,
        format!("peak RSS {peak_mib} MiB is above {PEAK_RSS_LIMIT_MIB} MiB"),
    );
    Ok(report)
}
