//! The migration drills: replicas that start together and migrate one at a time under
//! the lease (rolling-migration), and rebuild migrations killed after every statement
//! and run again while a writer inserts (migration-crash). Both start from a table
//! that already holds rows; the report checks those survive too.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{FIRST_VERSION, Rig, Schema, VERSION_BEFORE_STREAM_SEQUENCE};
use crate::scenarios::{FAULT_TIMEOUT, drain_timeout, finish_all, wait_metrics};
use crate::support::migrations::{Rebuild, rebuilds};
use crate::writer::{Metrics, Writer, names};

/// rolling-migration: three writers of the current version start at the same moment
/// against a table one version older holding 50,000 rows, while publishing runs. One
/// takes the migration lease and migrates; the others wait for it, then find nothing
/// to do. The migration is applied once, no row is lost, and all three consume.
pub async fn rolling_migration(messages: u64) -> anyhow::Result<Report> {
    const WRITERS: usize = 3;
    const PREFILLED: u64 = 50_000;
    let name = "rolling-migration";
    // Small batches, so that the consumer's messages are shared among the writers.
    let mut rig = Rig::new(
        name,
        &[("PONIX_NATS_BATCH_SIZE", "50")],
        Schema::UpTo(VERSION_BEFORE_STREAM_SEQUENCE),
    )
    .await?;
    rig.prefill(PREFILLED).await?;
    let newest = rebuilds(&rig.writer_config()?.migrations.dir)?
        .pop()
        .context("no rebuild migration found")?;
    let plan = Plan::valid(name, messages);
    rig.start_monitor();
    // Part of it is held back until every writer has inserted, so that there is
    // something left to consume for the last one to get going.
    let held_back = messages / 4;
    rig.progress.withheld.store(held_back, Ordering::Relaxed);
    let publishing = rig.start_publishing(&plan, 1..=plan.total, Some(200));

    let started = Instant::now();
    let mut writers = (0..WRITERS)
        .map(|_| Writer::spawn(&rig.vars, &rig.log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for writer in &mut writers {
        writer.wait_ready().await?;
    }
    let all_ready = started.elapsed();
    for (index, writer) in writers.iter_mut().enumerate() {
        wait_metrics(
            writer,
            &format!("writer {} of {WRITERS} inserting", index + 1),
            FAULT_TIMEOUT,
            |m| m.sum(names::INSERTS, "result=\"ok\"") > 0,
        )
        .await?;
    }
    rig.progress.withheld.store(0, Ordering::Relaxed);
    let per_writer: Vec<u64> = writers
        .iter_mut()
        .map(|w| w.scrape_or_keep().sum(names::INSERTS, "result=\"ok\""))
        .collect();

    let log = std::fs::read_to_string(&rig.log).context("reading the writers' log")?;
    let count = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    let taken = count("migration lease taken");
    let waiting = count("waiting for the migration lease");
    let no_op = count("no migrations to run");
    let file_name = newest
        .file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let applied_in_log = log
        .lines()
        .filter(|line| line.contains("OK") && line.contains(&file_name))
        .count();
    let applied_in_table = rig
        .number(&format!(
            "SELECT count() FROM goose_db_version WHERE version_id = {} AND is_applied",
            newest.version
        ))
        .await?;

    let fault_over = Instant::now();
    let mut report = finish_all(
        &mut rig,
        &plan,
        vec![publishing],
        writers,
        Metrics::default(),
        fault_over,
    )
    .await?;
    report.note(format!(
        "{WRITERS} writers started together on {PREFILLED} rows one version older, all ready in {:.1}s; \
         lease taken {taken}×, {waiting} waiting reports; {} applied {applied_in_log}× (goose_db_version: {applied_in_table}), \
         {no_op} no-op runs; inserts per writer {per_writer:?}",
        all_ready.as_secs_f64(),
        newest.version
    ));
    report.require(
        taken == WRITERS,
        format!("the lease was taken {taken} times, not once by each of the {WRITERS} writers"),
    );
    report.require(waiting > 0, "no writer waited for the migration lease");
    report.require(
        applied_in_log == 1 && applied_in_table == 1,
        format!(
            "the migration was applied {applied_in_log} times by goose and recorded {applied_in_table} times, not once"
        ),
    );
    report.require(
        no_op == WRITERS - 1,
        format!(
            "{no_op} goose runs found nothing to do, not {}",
            WRITERS - 1
        ),
    );
    Ok(report)
}

/// migration-crash: for every statement of every rebuild migration, goose is "killed"
/// after that statement (the drill runs the file's statements up to it, as goose
/// would have), then `up` runs again, while a writer consumes and inserts throughout
/// (refused while the table is guarded or too old, accepted once the rebuilt table is
/// in place). Between cases the table goes back one version (`down-to`, with the
/// writer stopped where it could insert: the Down migrations are for stopped writers).
pub async fn migration_crash(messages: u64) -> anyhow::Result<Report> {
    const PREFILLED: u64 = 2_000;
    let name = "migration-crash";
    // The drill plays goose; the writer only inserts.
    let mut rig = Rig::new(
        name,
        &[
            ("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false"),
            ("PONIX_NATS_BATCH_SIZE", "50"),
        ],
        Schema::UpTo(FIRST_VERSION),
    )
    .await?;
    rig.prefill(PREFILLED).await?;
    let rebuilds = rebuilds(&rig.writer_config()?.migrations.dir)?;
    ensure!(
        rebuilds.len() >= 2,
        "expected two rebuild migrations, found {}",
        rebuilds.len()
    );
    let newest = rebuilds
        .last()
        .map(|r| r.version.clone())
        .unwrap_or_default();
    let cases: usize = rebuilds.iter().map(|r| r.statements.len()).sum();
    let plan = Plan::valid(name, messages);
    // Released two chunks per case: before the kill and before the re-run.
    let chunk = messages / (2 * cases as u64 + 1);
    let mut released = chunk;
    rig.progress
        .withheld
        .store(messages - released, Ordering::Relaxed);
    let mut writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    let publishing = rig.start_publishing(&plan, 1..=plan.total, None);

    let mut totals = Metrics::default();
    let mut inserted_half_migrated = 0;
    for rebuild in &rebuilds {
        // The writer can insert into this migration's result only if it is the newest:
        // before that, the table lacks stream_sequence.
        let writer_inserts_after = rebuild.version == newest;
        for killed_after in 1..=rebuild.statements.len() {
            let case = || {
                format!(
                    "{} killed after statement {killed_after}",
                    rebuild.file.display()
                )
            };
            release(&rig, messages, &mut released, chunk);
            for statement in &rebuild.statements[..killed_after] {
                rig.execute(statement).await.with_context(case)?;
            }
            if writer_inserts_after && killed_after >= rebuild.exchange() {
                // The rebuilt table is in place and unguarded: the writer stores what
                // was released, into the table the re-run will copy and swap out.
                let before = rig.rows().await?;
                rig.wait_rows(released.min(before + 1), FAULT_TIMEOUT)
                    .await
                    .with_context(case)?;
                inserted_half_migrated += rig.rows().await?.saturating_sub(before);
            }
            release(&rig, messages, &mut released, chunk);
            rerun(&rig, rebuild, writer_inserts_after).with_context(case)?;
            if writer_inserts_after {
                rig.wait_rows(released, drain_timeout(released))
                    .await
                    .with_context(case)?;
                // Back one version for the next case, with the writer stopped: the
                // Down migration copies the table, and is not guarded against inserts.
                let (status, metrics) = writer.terminate(Duration::from_secs(45)).await?;
                ensure!(status.success(), "the writer exited with {status}");
                totals.add(&metrics);
                rig.goose(&["down-to", &rebuild.previous])?;
                writer = Writer::start(&rig.vars, &rig.log).await?;
            } else {
                rig.goose(&["down-to", &rebuild.previous])?;
            }
        }
        rig.goose(&["up-to", &rebuild.version])?;
    }
    let refused = totals.sum(names::INSERTS, "result=\"permanent_destination\"")
        + writer
            .scrape_or_keep()
            .sum(names::INSERTS, "result=\"permanent_destination\"");
    rig.progress.withheld.store(0, Ordering::Relaxed);

    let fault_over = Instant::now();
    let mut report = finish_all(
        &mut rig,
        &plan,
        vec![publishing],
        vec![writer],
        totals,
        fault_over,
    )
    .await?;
    report.note(format!(
        "{cases} kills ({}), each followed by `up`; {PREFILLED} rows there before; \
         {inserted_half_migrated} rows inserted between a kill after the swap and the re-run; \
         {refused} inserts refused as schema errors while guarded",
        rebuilds
            .iter()
            .map(|r| format!(
                "{} after each of {} statements",
                r.version,
                r.statements.len()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.require(
        inserted_half_migrated > 0,
        "no row was inserted between a kill after the swap and the re-run",
    );
    report.require(
        refused > 0,
        "no insert was refused while the table was guarded",
    );
    Ok(report)
}

/// Lets the publisher send `chunk` more messages.
fn release(rig: &Rig, messages: u64, released: &mut u64, chunk: u64) {
    *released = (*released + chunk).min(messages);
    rig.progress
        .withheld
        .store(messages - *released, Ordering::Relaxed);
}

/// `up` again after the kill: all of it, or (for an older migration) only up to it,
/// so that the next case finds its table where it expects it.
fn rerun(rig: &Rig, rebuild: &Rebuild, newest: bool) -> anyhow::Result<String> {
    if newest {
        rig.goose(&["up"])
    } else {
        rig.goose(&["up-to", &rebuild.version])
    }
}
