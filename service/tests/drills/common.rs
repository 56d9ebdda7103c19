//! What every drill shares, so that each one reads as its fault alone: the bounds
//! on waiting, the three parts a fault splits the publishing into, waiting on the
//! writer's metrics, and the common end (drain, SIGTERM, count; [`crate::report`]).
//! Faults start and end on conditions (rows stored, the writer's metrics and
//! `/readyz`), never after a fixed sleep; only how long a fault lasts has a lower
//! bound in time where the fault is defined by one (longer than AckWait, longer than
//! the insert timeout).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::plan::Plan;
use crate::report::Report;
use crate::rig::Rig;
use crate::writer::{Metrics, Writer};

/// The longest wait for a fault's precondition (rows stored, failures seen).
pub const FAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// The longest wait for the drain: generous, for a loaded two-core machine.
pub fn drain_timeout(published: u64) -> Duration {
    Duration::from_secs(180 + published / 400)
}

/// Ids 1..=messages in three consecutive parts: before, during and after a fault.
pub fn thirds(messages: u64) -> [std::ops::RangeInclusive<u64>; 3] {
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

pub type Publishing = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Publishing done, the consumer drained, the writer stopped with SIGTERM, and the
/// count: the common end of every drill. `fault_over` is when the last fault ended;
/// the drain is timed from then, or from the end of publishing if that came later.
pub async fn finish(
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
        let info = rig
            .js
            .client()
            .request(
                format!(
                    "$JS.API.CONSUMER.INFO.{}.{}",
                    crate::rig::STREAM,
                    crate::rig::CONSUMER
                ),
                "".into(),
            )
            .await
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .unwrap_or_else(|e| format!("consumer info failed: {e}"));
        let metrics = writers
            .iter()
            .map(|w| w.metrics_text())
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "{err:#}\nthe consumer info at the deadline: {info}\nthe writers' metrics:\n{metrics}\nthe writers' log ends with:\n{}\n{}",
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
