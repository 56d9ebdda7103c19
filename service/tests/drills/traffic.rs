//! The drills where nothing fails but the traffic itself is hard: invalid messages
//! among the valid ones, which must be dead-lettered exactly, and a backlog far
//! larger than a batch, which must drain with bounded memory.

use std::time::Instant;

use anyhow::Context;

use crate::common::{drain_timeout, finish};
use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{Rig, Schema};
use crate::writer::{Metrics, Writer};

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
    let mut writer = Writer::start(&rig.vars, &rig.log).await?;
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
