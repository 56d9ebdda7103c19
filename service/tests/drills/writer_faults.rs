//! The drills where the writer itself dies or is replaced: SIGKILLs at chosen points
//! of a batch (an INSERT half sent, an INSERT committed but not acked), and replicas
//! sharing one consumer while some are killed and restarted. The window between a
//! committed INSERT and its acks is where a duplicate would come from, so these
//! drills must show that it was hit.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::common::{FAULT_TIMEOUT, finish, finish_all};
use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{Rig, Schema, TABLE};
use crate::support::wait_for;
use crate::trap::{Cut, InsertTrap};
use crate::writer::{Metrics, Writer, names};

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
