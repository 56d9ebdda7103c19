//! The migration lease (`ponix_writer::lease`) against a real nats-server of the
//! test's own: one holder at a time, the others wait and name the holder, a holder
//! that renews keeps the lease past its TTL, one that stops renewing loses it after
//! the TTL, and a holder whose lease was taken over stops its work; and the writer
//! binary, finding the migration lease held, waits for it (in its log and on
//! `/readyz`, naming the holder) and migrates once it is released, or once the lease
//! of a holder that died half-way through a migration expired.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_nats::jetstream;
use ponix_writer::lease::{self, Holder, Lease, LeaseConfig, LeaseError};
use ponix_writer::migrate::LEASE_BUCKET;
use testkit::Endpoints;
use testkit::infra::Managed;
use tokio::time::Instant;

testkit::integration_tests!(
    a_second_contender_waits_while_the_holder_renews_past_the_ttl,
    a_holder_that_stops_renewing_loses_the_lease_after_the_ttl,
    a_holder_whose_lease_was_taken_over_stops_its_work,
    the_writer_waits_for_a_held_migration_lease_and_says_who_holds_it,
    a_failing_migration_under_the_lease_is_reported_without_the_secrets_and_releases_it,
    a_writer_resumes_the_migration_of_a_holder_that_died,
);

const TTL: Duration = Duration::from_secs(3);

async fn private_jetstream() -> anyhow::Result<(Managed, jetstream::Context)> {
    let nats = tokio::task::spawn_blocking(Managed::private_nats)
        .await?
        .context("starting a private nats-server")?;
    let client = async_nats::connect(nats.url())
        .await
        .context("connecting to the private nats-server")?;
    Ok((nats, jetstream::new(client)))
}

fn config() -> LeaseConfig {
    LeaseConfig {
        bucket: "lease_test".to_owned(),
        key: "db".to_owned(),
        ttl: TTL,
    }
}

async fn take(js: &jetstream::Context, holder: &str) -> anyhow::Result<Lease> {
    Ok(lease::acquire(
        js,
        &config(),
        holder,
        Instant::now() + Duration::from_secs(5),
        |_| {},
    )
    .await?)
}

/// A waits until 2 × TTL has passed while holding the lease, so only its renewals keep
/// it; B, started meanwhile, is refused throughout, is told that A holds it, and gets
/// it once A's work is over.
async fn a_second_contender_waits_while_the_holder_renews_past_the_ttl(
    _: Endpoints,
) -> anyhow::Result<()> {
    let (_nats, js) = private_jetstream().await?;
    let first = take(&js, "holder-a pid 1").await?;
    let a_done = Arc::new(AtomicBool::new(false));
    let seen_waiting = Arc::new(AtomicUsize::new(0));

    let contender = {
        let js = js.clone();
        let a_done = Arc::clone(&a_done);
        let seen_waiting = Arc::clone(&seen_waiting);
        tokio::spawn(async move {
            let mut holders = Vec::new();
            let lease = lease::acquire(
                &js,
                &config(),
                "holder-b pid 2",
                Instant::now() + Duration::from_secs(60),
                |holder: &Holder| {
                    holders.push(holder.0.clone());
                    seen_waiting.fetch_add(1, Ordering::SeqCst);
                },
            )
            .await?;
            // Taken only after A finished its work.
            let a_was_done = a_done.load(Ordering::SeqCst);
            anyhow::Ok((lease, a_was_done, holders))
        })
    };

    let held_from = Instant::now();
    let output = first
        .run(async {
            // How long the lease is held is the point of this test: past twice its TTL.
            tokio::time::sleep_until(held_from + TTL * 2).await;
            support::wait_for("the contender refused", Duration::from_secs(10), || {
                let seen = seen_waiting.load(Ordering::SeqCst);
                async move { Ok(if seen > 0 { Ok(()) } else { Err(seen) }) }
            })
            .await?;
            a_done.store(true, Ordering::SeqCst);
            anyhow::Ok("work done")
        })
        .await
        .context("A lost its lease while renewing it")??;
    ensure!(output == "work done");

    let (second, a_was_done, holders) = tokio::time::timeout(Duration::from_secs(30), contender)
        .await
        .context("B never got the lease after A released it")???;
    ensure!(a_was_done, "B got the lease while A still held it");
    ensure!(
        holders
            .iter()
            .any(|h| h.starts_with("holder-a pid 1 since "))
            && holders
                .iter()
                .all(|h| h.starts_with("holder-a pid 1 since ") || h.starts_with("nobody")),
        "B was not told that A holds the lease: {holders:?}"
    );
    ensure!(second.revision() > 0);
    Ok(())
}

/// A takes the lease and dies (never renews, never releases): B waits, told that A
/// holds it, and gets it once A's last revision expired.
async fn a_holder_that_stops_renewing_loses_the_lease_after_the_ttl(
    _: Endpoints,
) -> anyhow::Result<()> {
    let (_nats, js) = private_jetstream().await?;
    let dead = take(&js, "holder-a pid 1").await?;
    drop(dead);
    let mut holders = Vec::new();
    let taken = lease::acquire(
        &js,
        &config(),
        "holder-b pid 2",
        Instant::now() + TTL * 10,
        |holder: &Holder| holders.push(holder.0.clone()),
    )
    .await
    .context("B never got the lease of a holder that stopped renewing")?;
    ensure!(
        holders
            .iter()
            .any(|h| h.starts_with("holder-a pid 1 since ")),
        "B did not wait for A's lease to expire: {holders:?}"
    );
    ensure!(taken.revision() > 0);

    // With the lease taken and renewed by nobody, a third contender with a deadline
    // shorter than the TTL times out, naming B.
    let error = lease::acquire(
        &js,
        &config(),
        "holder-c pid 3",
        Instant::now() + TTL / 3,
        |_| {},
    )
    .await
    .err()
    .context("C got a lease that B holds")?;
    match error {
        LeaseError::TimedOut { holder, .. } => {
            ensure!(
                holder.starts_with("holder-b pid 2 since "),
                "C was told {holder:?} holds it"
            )
        }
        other => bail!("C failed otherwise: {other}"),
    }
    Ok(())
}

/// The key is taken over behind A's back (as when A could not renew in time): A's
/// next renewal is refused, its work is dropped unfinished, and `run` says so.
async fn a_holder_whose_lease_was_taken_over_stops_its_work(_: Endpoints) -> anyhow::Result<()> {
    let (_nats, js) = private_jetstream().await?;
    let holder = take(&js, "holder-a pid 1").await?;
    let kv = js.get_key_value("lease_test").await?;
    kv.purge("db").await?;
    kv.create("db", "usurper".into()).await?;

    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(Arc::clone(&dropped));
    let result = tokio::time::timeout(
        TTL * 3,
        holder.run(async move {
            let _flag = flag;
            std::future::pending::<()>().await
        }),
    )
    .await
    .context("the work went on after the lease was taken over")?;
    ensure!(
        matches!(result, Err(LeaseError::Lost { .. })),
        "run did not report the lost lease: {result:?}"
    );
    ensure!(dropped.load(Ordering::SeqCst), "the work was not stopped");
    let value = kv.get("db").await?.context("the usurper's lease is gone")?;
    ensure!(value == "usurper", "A overwrote its successor's lease");
    Ok(())
}

/// The test holds the writer's migration lease (the writer's bucket, its database as
/// the key) while the writer binary starts: the writer logs that it waits and who
/// holds the lease, `/readyz` answers 503 naming the holder, and nothing is migrated.
/// Once the test's work ends and the lease is released, the writer takes it, migrates
/// and becomes ready.
async fn the_writer_waits_for_a_held_migration_lease_and_says_who_holds_it(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const DATABASE: &str = "lease_writer_waits";
    let (nats, js) = private_jetstream().await?;
    support::fresh_database(&endpoints, DATABASE).await?;
    let held = lease::acquire(
        &js,
        &LeaseConfig {
            bucket: LEASE_BUCKET.to_owned(),
            key: DATABASE.to_owned(),
            // The writer's default, so that the bucket is the one it would create.
            ttl: Duration::from_secs(30),
        },
        "test-holder pid 1",
        Instant::now() + Duration::from_secs(5),
        |_| {},
    )
    .await?;

    let mut writer = support::writer::spawn(
        "lease-writer-waits",
        &endpoints,
        &[
            ("PONIX_NATS_URL", nats.url()),
            ("PONIX_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
        ],
    )?;
    let client = support::clickhouse(&endpoints, DATABASE);
    held.run(async {
        let readyz = support::wait_for(
            "/readyz naming the lease holder",
            Duration::from_secs(60),
            || async {
                Ok(match writer.readyz().map(|r| (r.status, r.body)) {
                    Ok((503, body)) if body.contains("migrations: not done yet; waiting for the migration lease, held by test-holder pid 1 since ") => Ok(body),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        let log = std::fs::read_to_string(writer.log())?;
        ensure!(
            log.contains("waiting for the migration lease") && log.contains("test-holder pid 1 since "),
            "the writer's log does not say it waits for the lease held by the test:\n{}",
            writer.log_tail(20)
        );
        let tables = client
            .query("SELECT count() FROM system.tables WHERE database = currentDatabase()")
            .fetch_one::<u64>()
            .await?;
        ensure!(tables == 0, "{tables} tables were created while the lease was held: {readyz}");
        anyhow::Ok(())
    })
    .await??;

    support::writer::wait_ready(&mut writer, support::writer::READY_TIMEOUT).await?;
    let log = std::fs::read_to_string(writer.log())?;
    ensure!(
        log.contains("migration lease taken") && log.contains("migration lease released"),
        "the writer did not take and release the lease:\n{}",
        writer.log_tail(20)
    );
    let version = client
        .query("SELECT max(version_id) FROM goose_db_version WHERE is_applied")
        .fetch_one::<i64>()
        .await?;
    ensure!(
        version > 0,
        "the writer did not migrate once it had the lease"
    );
    let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
    ensure!(status.success(), "the writer exited with {status}");
    Ok(())
}

/// goose fails under the lease, printing the DSN it was given (password included): the
/// writer exits 1 quoting goose's output without the secrets, and releases the lease,
/// so the next writer need not wait for it to expire.
async fn a_failing_migration_under_the_lease_is_reported_without_the_secrets_and_releases_it(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const DATABASE: &str = "lease_failing_goose";
    const SECRET: &str = "Sup3rS3cretLeaseMarker";
    let (nats, js) = private_jetstream().await?;
    support::fresh_database(&endpoints, DATABASE).await?;
    let goose =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/failing-goose");
    let mut writer = support::writer::spawn(
        "lease-failing-goose",
        &endpoints,
        &[
            ("PONIX_NATS_URL", nats.url()),
            ("PONIX_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
            (
                "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
                goose.display().to_string(),
            ),
            (
                "PONIX_CLICKHOUSE_GOOSE_DSN",
                format!("http://writer:{SECRET}@127.0.0.1:1/{DATABASE}"),
            ),
        ],
    )?;
    let status = support::writer::wait_exit(&mut writer, Duration::from_secs(60)).await?;
    let log = std::fs::read_to_string(writer.log())?;
    ensure!(
        status.code() == Some(1),
        "the writer exited with {status}:\n{log}"
    );
    ensure!(
        !log.contains(SECRET),
        "the secret is in the writer's output:\n{log}"
    );
    ensure!(
        log.contains("goose failed") && log.contains("boom"),
        "the failure does not quote goose:\n{log}"
    );
    ensure!(
        log.contains("migration lease taken"),
        "goose ran without the lease:\n{log}"
    );
    let kv = js.get_key_value(LEASE_BUCKET).await?;
    ensure!(
        kv.get(DATABASE).await?.is_none(),
        "the lease is still held after the writer failed"
    );
    Ok(())
}

/// A holder died half-way through the newest rebuild migration (killed after the
/// EXCHANGE, its lease left to expire): the writer binary waits for that lease, takes
/// it once it expired, and completes the migration.
async fn a_writer_resumes_the_migration_of_a_holder_that_died(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const DATABASE: &str = "lease_dead_holder";
    let (nats, js) = private_jetstream().await?;
    support::fresh_database(&endpoints, DATABASE).await?;
    let newest = support::migrations::rebuilds(&endpoints.migrations_dir)?
        .pop()
        .context("no rebuild migration")?;
    let goose = endpoints.goose(DATABASE)?;
    goose.run(&["up-to", &newest.previous])?;
    let client = support::clickhouse(&endpoints, DATABASE);
    // The dead holder's lease, in a bucket with a short TTL (the writer keeps the
    // bucket's), and the statements its goose ran before it died.
    let dead = lease::acquire(
        &js,
        &LeaseConfig {
            bucket: LEASE_BUCKET.to_owned(),
            key: DATABASE.to_owned(),
            ttl: TTL,
        },
        "dead-holder pid 1",
        Instant::now() + Duration::from_secs(5),
        |_| {},
    )
    .await?;
    for statement in &newest.statements[..newest.exchange()] {
        client.query(statement).execute().await?;
    }
    drop(dead);

    let mut writer = support::writer::spawn(
        "lease-dead-holder",
        &endpoints,
        &[
            ("PONIX_NATS_URL", nats.url()),
            ("PONIX_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
        ],
    )?;
    support::writer::wait_ready(&mut writer, support::writer::READY_TIMEOUT).await?;
    let log = std::fs::read_to_string(writer.log())?;
    ensure!(
        log.contains("waiting for the migration lease") && log.contains("dead-holder pid 1"),
        "the writer did not wait for the dead holder's lease:\n{}",
        writer.log_tail(20)
    );
    ensure!(
        log.contains("migration lease taken") && log.contains(&newest.version),
        "the writer did not take the lease and complete {}:\n{}",
        newest.version,
        writer.log_tail(20)
    );
    let applied = client
        .query("SELECT count() FROM goose_db_version WHERE version_id = ? AND is_applied")
        .bind(newest.version.parse::<i64>()?)
        .fetch_one::<u64>()
        .await?;
    ensure!(applied == 1, "{} recorded {applied} times", newest.version);
    let leftovers = client
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name != 'processed_envelopes' AND name != 'goose_db_version'")
        .fetch_one::<u64>()
        .await?;
    ensure!(
        leftovers == 0,
        "{leftovers} tables left besides the table and goose's"
    );
    let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
    ensure!(status.success(), "the writer exited with {status}");
    Ok(())
}
