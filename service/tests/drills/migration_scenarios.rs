//! The migration drills: replicas that start together and migrate one at a time under
//! the lease (rolling-migration), and rebuild migrations killed after every statement
//! and run again while a writer inserts (migration-crash). Both start from a table
//! that already holds rows; the report checks those survive too.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::plan::Plan;
use crate::report::Report;
use ponix_writer::lease::{self, LeaseConfig};
use ponix_writer::migrate::LEASE_BUCKET;

use crate::common::{FAULT_TIMEOUT, drain_timeout, finish_all};
use crate::rig::{DATABASE, FIRST_VERSION, Rig, Schema, TABLE, VERSION_BEFORE_STREAM_SEQUENCE};
use crate::support::migrations::rebuilds;
use crate::support::wait_for;
use crate::writer::{Metrics, Writer, names};

/// rolling-migration: three writers of the current version start at the same moment
/// against a table one version older holding 50,000 rows, while publishing runs. One
/// takes the migration lease and migrates; the others wait for it, then find nothing
/// to do. The migration is applied once, no row is lost, and all three consume.
///
/// The migration takes a fraction of a second here, so the drill holds the lease
/// itself while the writers start, until each one's `/readyz` says it waits for it:
/// then all three are contending for certain when the drill lets go.
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
    // Half of it is held back and released a little at a time until every writer has
    // inserted: the first writer ready could otherwise consume everything before the
    // last one is.
    let mut withheld = messages / 2;
    rig.progress.withheld.store(withheld, Ordering::Relaxed);
    let publishing = rig.start_publishing(&plan, 1..=plan.total, None);

    let gate = lease::acquire(
        &rig.js,
        &LeaseConfig {
            bucket: LEASE_BUCKET.to_owned(),
            key: DATABASE.to_owned(),
            ttl: rig.writer_config()?.migrations.lease_ttl,
        },
        "the drill, holding the writers at the start line,",
        tokio::time::Instant::now() + FAULT_TIMEOUT,
        |_| {},
    )
    .await
    .context("taking the migration lease")?;
    let started = Instant::now();
    let mut writers = (0..WRITERS)
        .map(|_| Writer::spawn(&rig.vars, &rig.log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    gate.run(async {
        for (index, writer) in writers.iter().enumerate() {
            let port = writer.http_port;
            wait_for(
                &format!("writer {} of {WRITERS} waiting for the lease", index + 1),
                FAULT_TIMEOUT,
                || async move {
                    Ok(match testkit::localenv::net::http_get(port, "/readyz") {
                        Ok(r) if r.body.contains("waiting for the migration lease") => Ok(()),
                        other => Err(other.map(|r| r.body).map_err(|e| e.to_string())),
                    })
                },
            )
            .await?;
        }
        anyhow::Ok(())
    })
    .await??;
    for writer in &mut writers {
        writer.wait_ready().await?;
    }
    let all_ready = started.elapsed();
    let per_writer = loop {
        let mut per_writer = Vec::new();
        for writer in &mut writers {
            per_writer.push(writer.scrape()?.sum(names::INSERTS, "result=\"ok\""));
        }
        if per_writer.iter().all(|inserts| *inserts > 0) {
            break per_writer;
        }
        ensure!(
            withheld > 0,
            "not every writer inserted (successful inserts per writer: {per_writer:?}); \
             the writers' log ends with:\n{}",
            writers[0].log_tail(30)
        );
        withheld = withheld.saturating_sub(RELEASED_AT_A_TIME);
        rig.progress.withheld.store(withheld, Ordering::Relaxed);
        rig.wait_rows(messages - withheld, FAULT_TIMEOUT).await?;
    };
    rig.progress.withheld.store(0, Ordering::Relaxed);

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
        "{WRITERS} writers started together on {PREFILLED} rows one version older (all waiting for the lease), all ready in {:.1}s; \
         lease taken {taken}×, {waiting} waiting reports; {} applied {applied_in_log}× (goose_db_version: {applied_in_table}), \
         {no_op} no-op runs; inserts per writer {per_writer:?}",
        all_ready.as_secs_f64(),
        newest.version
    ));
    report.require(
        taken == WRITERS,
        format!("the lease was taken {taken} times, not once by each of the {WRITERS} writers"),
    );
    report.require(
        waiting >= WRITERS,
        format!("{waiting} reports of waiting for the lease, fewer than the {WRITERS} writers"),
    );
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

/// Messages rolling-migration releases at a time until every writer has inserted.
const RELEASED_AT_A_TIME: u64 = 25;

/// migration-crash: for every statement of every rebuild migration, goose is "killed"
/// after that statement (the drill runs the file's statements up to it, as goose
/// would have), then the file runs again from the top, statement by statement, then
/// `goose up` runs (the file a third time, and the version recorded). A writer
/// consumes throughout; before every statement that finds the table taking its rows,
/// the drill releases messages and waits until the writer stored some, so the rows a
/// careless statement would lose are always there. Between cases the table goes back
/// one version (`down-to`, with the writer stopped where it could insert: the Down
/// migrations are for stopped writers).
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
    // Released a chunk at a time: at the start of each case, before goose runs, and
    // before every statement that finds the table taking the writer's rows.
    let chunk = (messages / 64).max(1);
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
        let newest_one = rebuild.version == newest;
        let statements = &rebuild.statements;
        for killed_after in 1..=statements.len() {
            let case = || {
                format!(
                    "{} killed after statement {killed_after}",
                    rebuild.file.display()
                )
            };
            release(&rig, messages, &mut released, chunk);
            // The killed run, then the whole file again (what goose does after a kill:
            // it records a version only once every statement ran), the statements one
            // at a time, so that the writer inserts between any two where the table
            // takes its rows, however quickly goose would have gone through them.
            for count in [killed_after, statements.len()] {
                for statement in &statements[..count] {
                    inserted_half_migrated +=
                        insert_if_accepted(&rig, messages, &mut released, chunk)
                            .await
                            .with_context(case)?;
                    rig.execute(statement).await.with_context(case)?;
                }
            }
            inserted_half_migrated += insert_if_accepted(&rig, messages, &mut released, chunk)
                .await
                .with_context(case)?;
            // And goose itself, as the next writer to start would run it: the file a
            // third time, and the version recorded.
            release(&rig, messages, &mut released, chunk);
            if newest_one {
                rig.goose(&["up"]).with_context(case)?;
                settle(&rig, released).await.with_context(case)?;
                // Back one version for the next case, with the writer stopped: the
                // Down migration copies the table, and is not guarded against inserts.
                let (status, metrics) = writer.terminate(Duration::from_secs(45)).await?;
                ensure!(status.success(), "the writer exited with {status}");
                totals.add(&metrics);
                rig.goose(&["down-to", &rebuild.previous])?;
                writer = Writer::start(&rig.vars, &rig.log).await?;
            } else {
                // Only up to this one, and back: the writer cannot insert into either
                // version, so nothing it sends is at stake.
                rig.goose(&["up-to", &rebuild.version]).with_context(case)?;
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
         {inserted_half_migrated} rows inserted while a rebuilt table was in place and the file not done; \
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
        "no row was inserted while a rebuilt table was in place and the file not done",
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

/// Whether the writer's INSERTs can commit now: stream_sequence is a plain column of
/// the table (not missing, not MATERIALIZED as the guard makes it).
async fn accepts_inserts(rig: &Rig) -> anyhow::Result<bool> {
    let plain = rig
        .number(&format!(
            "SELECT count() FROM system.columns WHERE database = currentDatabase() \
             AND table = '{TABLE}' AND name = 'stream_sequence' AND default_kind = ''"
        ))
        .await?;
    Ok(plain == 1)
}

/// If the table takes the writer's rows now, releases more messages and waits until
/// the writer stored at least one: rows that a careless next statement would lose.
/// Returns how many rows were stored meanwhile.
async fn insert_if_accepted(
    rig: &Rig,
    messages: u64,
    released: &mut u64,
    chunk: u64,
) -> anyhow::Result<u64> {
    if *released >= messages || !accepts_inserts(rig).await? {
        return Ok(0);
    }
    let before = rig.rows().await?;
    release(rig, messages, released, chunk);
    rig.wait_rows(before + 1, FAULT_TIMEOUT).await?;
    Ok(rig.rows().await?.saturating_sub(before))
}

/// Waits until every released message was published and the consumer has nothing
/// pending or unacknowledged: all of them stored (or, if a step lost them, acked).
async fn settle(rig: &Rig, released: u64) -> anyhow::Result<()> {
    let progress = std::sync::Arc::clone(&rig.progress);
    wait_for("the released messages published", FAULT_TIMEOUT, || {
        let published = progress.published.load(Ordering::Relaxed);
        async move {
            Ok(if published >= released {
                Ok(())
            } else {
                Err(published)
            })
        }
    })
    .await?;
    rig.wait_drained(drain_timeout(released)).await
}
