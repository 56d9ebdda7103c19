//! What every drill shares: a NATS and a ClickHouse of its own, the writer's
//! configuration, a publisher of envelopes with unique ids, the wait for the drain,
//! and the count of what was stored and dead-lettered.
//!
//! Each drill starts private instances (`testkit::infra::Managed::private_*`, or a
//! `testkit::cluster::NatsCluster` for the cluster drill): it stops, freezes and kills
//! them without disturbing anything else that runs on the machine, under either e2e
//! backend, and they are deleted when the drill ends.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use clickhouse::Row;
use ponix_writer::consumer::{HEADER_DELIVERY_COUNT, HEADER_REASON};
use serde::Deserialize;
use testkit::cluster::NatsCluster;
use testkit::infra::Managed;
use testkit::localenv::Layout;
use testkit::localenv::goose::Goose;
use tokio::task::JoinHandle;

use crate::plan::Plan;
use crate::report::Report;
use crate::support::wait_for;
use crate::writer::Metrics;

pub const DATABASE: &str = "drill";
pub const TABLE: &str = "processed_envelopes";
pub const STREAM: &str = "DRILL";
const SUBJECT_PREFIX: &str = "drill.envelopes";
pub const CONSUMER: &str = "drill-writer";
const DEAD_LETTER_STREAM: &str = "DRILL_DEAD_LETTERS";
const DEAD_LETTER_SUBJECT: &str = "drill.dead_letter";
/// The header carrying an envelope's drill id; dead letters keep it.
pub const HEADER_DRILL_ID: &str = "Drill-Id";

/// The last migration before the one that added `stream_sequence`: schema-drift starts
/// the table there, so that the writer's row has a column the table lacks.
pub const VERSION_BEFORE_STREAM_SEQUENCE: &str = "20251104110101";
/// The first migration: the table before either rebuild.
pub const FIRST_VERSION: &str = "20251026224743";

/// Rows a drill puts in the table before the writer starts (see [`Rig::prefill`]) have
/// device ids with this prefix; the counts of published messages leave them out.
const PREFILL_PREFIX: &str = "prefill-";
/// The condition that leaves pre-filled rows out of a count.
const PUBLISHED_ROWS: &str = "NOT startsWith(end_device_id, 'prefill-')";

/// A drill's NATS: one server, or a JetStream cluster.
pub enum Nats {
    Server(Managed),
    Cluster(NatsCluster),
}

impl Nats {
    fn urls(&self) -> Vec<String> {
        match self {
            Nats::Server(server) => vec![server.url()],
            Nats::Cluster(cluster) => cluster.urls(),
        }
    }

    /// The one server of a single-server drill.
    pub fn server(&mut self) -> &mut Managed {
        match self {
            Nats::Server(server) => server,
            Nats::Cluster(_) => panic!("this drill runs a NATS cluster, not one server"),
        }
    }

    /// The cluster of a cluster drill.
    pub fn cluster(&self) -> &NatsCluster {
        match self {
            Nats::Cluster(cluster) => cluster,
            Nats::Server(_) => panic!("this drill runs one NATS server, not a cluster"),
        }
    }

    pub fn cluster_mut(&mut self) -> &mut NatsCluster {
        match self {
            Nats::Cluster(cluster) => cluster,
            Nats::Server(_) => panic!("this drill runs one NATS server, not a cluster"),
        }
    }

    fn log_tails(&self) -> String {
        match self {
            Nats::Server(server) => server.log_tail(15),
            Nats::Cluster(cluster) => cluster.log_tails(15),
        }
    }
}

pub struct Rig {
    pub name: &'static str,
    pub nats: Nats,
    pub clickhouse: Managed,
    pub js: jetstream::Context,
    pub ch: clickhouse::Client,
    /// The writer's environment.
    pub vars: Vec<(String, String)>,
    /// The writer's log, shared by all its incarnations.
    pub log: PathBuf,
    pub progress: Arc<Progress>,
    /// Rows put in the table before the drill began, which must all be there at the end.
    prefilled: u64,
    monitor: Option<JoinHandle<()>>,
}

/// Shared between the publisher, the monitor and the drill.
#[derive(Debug, Default)]
pub struct Progress {
    pub published: AtomicU64,
    /// Rows in the table (copies included), polled by the monitor; stale while
    /// ClickHouse does not answer.
    pub rows: AtomicU64,
    /// How many of its last ids the publisher holds back until the drill lowers this.
    pub withheld: AtomicU64,
    pub stop: AtomicBool,
}

impl Progress {
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

/// The writer settings every drill starts from: short AckWait and backoff so that
/// faults play out in seconds, and a MaxDeliver no fault here can exhaust.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("PONIX_NATS_BATCH_WAIT_SECS", "0.2"),
    ("PONIX_NATS_ACK_WAIT_SECS", "3"),
    ("PONIX_NATS_MAX_DELIVER", "100"),
    ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "100"),
    ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "2000"),
    ("PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS", "10"),
    ("PONIX_STARTUP_TIMEOUT_SECS", "60"),
    ("PONIX_SHUTDOWN_TIMEOUT_SECS", "30"),
    // Each pull at trace level: a failed drain shows whether the writer kept pulling.
    (
        "PONIX_LOG_LEVEL",
        "info,ponix_writer=debug,ponix_writer::consumer::pull=trace",
    ),
];

/// How far the table is migrated before the writer first starts.
pub enum Schema {
    /// Every migration (the writer's own start-up run is then a no-op).
    Current,
    /// Up to this goose version only.
    UpTo(&'static str),
}

impl Rig {
    /// Private NATS and ClickHouse, the database, the table (see `schema`) with merges
    /// stopped, the streams and the durable consumer. `settings` override the base
    /// writer settings.
    pub async fn new(
        name: &'static str,
        settings: &[(&str, &str)],
        schema: Schema,
    ) -> anyhow::Result<Rig> {
        let nats = blocking(|| Managed::private_nats().context("starting a private nats-server"))?;
        Rig::on(name, settings, schema, Nats::Server(nats)).await
    }

    /// [`Rig::new`] on a private JetStream cluster of `nodes` servers.
    pub async fn with_cluster(
        name: &'static str,
        settings: &[(&str, &str)],
        schema: Schema,
        nodes: usize,
    ) -> anyhow::Result<Rig> {
        let cluster = blocking(|| NatsCluster::start(nodes))?;
        Rig::on(name, settings, schema, Nats::Cluster(cluster)).await
    }

    async fn on(
        name: &'static str,
        settings: &[(&str, &str)],
        schema: Schema,
        nats: Nats,
    ) -> anyhow::Result<Rig> {
        let clickhouse =
            blocking(|| Managed::private_clickhouse().context("starting a private ClickHouse"))?;
        let layout = Layout::workspace();
        let logs = layout.logs_dir();
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("drill-{name}.log"));
        let _ = std::fs::remove_file(&log);

        let goose = std::env::var("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|_| layout.goose());
        let migrations = std::env::var("PONIX_CLICKHOUSE_MIGRATIONS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| layout.migrations_dir());
        let mut vars: Vec<(String, String)> = vec![
            ("PONIX_NATS_URL".into(), nats.urls().join(",")),
            ("PONIX_CLICKHOUSE_URL".into(), clickhouse.url()),
            ("PONIX_CLICKHOUSE_DATABASE".into(), DATABASE.into()),
            ("PONIX_CLICKHOUSE_USERNAME".into(), "default".into()),
            ("PONIX_CLICKHOUSE_PASSWORD".into(), String::new()),
            (
                "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH".into(),
                goose.display().to_string(),
            ),
            (
                "PONIX_CLICKHOUSE_MIGRATIONS_DIR".into(),
                migrations.display().to_string(),
            ),
            ("PONIX_NATS_STREAM".into(), STREAM.into()),
            ("PONIX_NATS_SUBJECT".into(), format!("{SUBJECT_PREFIX}.>")),
            ("PONIX_NATS_CONSUMER".into(), CONSUMER.into()),
            (
                "PONIX_NATS_DEAD_LETTER_STREAM".into(),
                DEAD_LETTER_STREAM.into(),
            ),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT".into(),
                DEAD_LETTER_SUBJECT.into(),
            ),
        ];
        for (key, value) in BASE_SETTINGS.iter().chain(settings) {
            vars.retain(|(k, _)| k != key);
            vars.push(((*key).to_owned(), (*value).to_owned()));
        }

        let mut ch = clickhouse::Client::default().with_url(clickhouse.url());
        for (name, value) in ponix_writer::payload::CLICKHOUSE_JSON_SETTINGS {
            ch = ch.with_setting(*name, *value);
        }
        ch.query(&format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"))
            .execute()
            .await?;
        let ch = ch.with_database(DATABASE);

        let nats_client = async_nats::ConnectOptions::new()
            .name("drill")
            // The drills restart NATS; keep trying for as long as a drill runs.
            .max_reconnects(None)
            // And freeze it: a server that holds the socket and answers nothing is left
            // after three unanswered pings, so the publisher moves to another node of a
            // cluster within seconds instead of minutes.
            .ping_interval(Duration::from_secs(1))
            .connection_timeout(Duration::from_secs(3))
            .connect(nats.urls())
            .await
            .context("connecting to the private NATS")?;
        // Without backpressure a publish that finds no free in-flight slot fails at once
        // (and is retried) instead of waiting for one without a deadline.
        let js = jetstream::context::ContextBuilder::new()
            .backpressure_on_inflight(false)
            .build(nats_client);

        let rig = Rig {
            name,
            nats,
            clickhouse,
            js,
            ch,
            vars,
            log,
            progress: Arc::default(),
            prefilled: 0,
            monitor: None,
        };
        match schema {
            Schema::Current => rig.goose(&["up"])?,
            Schema::UpTo(version) => rig.goose(&["up-to", version])?,
        };
        rig.stop_merges().await?;
        let config = rig.writer_config()?;
        let store = ponix_writer::store::Store::new(&config.clickhouse);
        ponix_writer::streams::ensure(&rig.js, &config.nats, &store)
            .await
            .context("creating the streams and the consumer")?;
        Ok(rig)
    }

    pub fn writer_config(&self) -> anyhow::Result<ponix_writer::config::Config> {
        ponix_writer::config::Config::from_vars(self.vars.iter().cloned())
            .map_err(|err| anyhow::anyhow!("the drill's writer configuration: {err}"))
    }

    /// Overrides one of the writer's variables for every later start.
    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_owned(), value.to_owned()));
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `setting` as seconds.
    pub fn seconds(&self, key: &str) -> Duration {
        Duration::from_secs_f64(
            self.setting(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        )
    }

    /// Runs goose against the drill's database.
    pub fn goose(&self, args: &[&str]) -> anyhow::Result<String> {
        let config = self.writer_config()?;
        let dsn = ponix_writer::migrate::goose_dsn(&config.migrations, &config.clickhouse);
        let goose = Goose::new(
            &config.migrations.goose_binary,
            &config.migrations.dir,
            dsn.expose(),
        );
        blocking(|| goose.run(args))
    }

    /// Merges would remove re-inserted copies at a time of their choosing; with them
    /// stopped, the copies stay countable until the drill's final OPTIMIZE. They are
    /// in-memory state: a restarted ClickHouse merges again until this runs.
    /// Note that an ALTER that rewrites parts (RENAME COLUMN) waits for merges to be
    /// allowed again.
    pub async fn stop_merges(&self) -> anyhow::Result<()> {
        self.execute(&format!("SYSTEM STOP MERGES {TABLE}")).await
    }

    pub async fn start_merges(&self) -> anyhow::Result<()> {
        self.execute(&format!("SYSTEM START MERGES {TABLE}")).await
    }

    /// A statement against the drill's database, bounded in time so that a drill never
    /// hangs on one.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        tokio::time::timeout(QUERY_TIMEOUT, self.ch.query(sql).execute())
            .await
            .with_context(|| format!("no answer within {QUERY_TIMEOUT:?} to {sql}"))?
            .with_context(|| format!("running {sql}"))
    }

    /// A one-number query against the drill's database, bounded in time.
    pub async fn number(&self, sql: &str) -> anyhow::Result<u64> {
        tokio::time::timeout(QUERY_TIMEOUT, self.ch.query(sql).fetch_one::<u64>())
            .await
            .with_context(|| format!("no answer within {QUERY_TIMEOUT:?} to {sql}"))?
            .with_context(|| format!("running {sql}"))
    }

    /// Rows of published messages in the table, copies included.
    pub async fn rows(&self) -> anyhow::Result<u64> {
        self.number(&format!(
            "SELECT count() FROM {TABLE} WHERE {PUBLISHED_ROWS}"
        ))
        .await
    }

    /// Puts `rows` rows in the table as an older writer would have (the columns every
    /// version has), spread over a few partitions. The report checks they all survive.
    pub async fn prefill(&mut self, rows: u64) -> anyhow::Result<()> {
        self.execute(&format!(
            "INSERT INTO {TABLE} (end_device_id, occurred_at, processed_at, data) \
             SELECT concat('{PREFILL_PREFIX}', toString(number)), \
                    toDateTime(1700000000 + number * 97, 'UTC'), \
                    toDateTime(1700000000 + number * 97, 'UTC'), '{{}}' \
             FROM numbers({rows})"
        ))
        .await
        .context("pre-filling the table")?;
        self.prefilled += rows;
        Ok(())
    }

    /// Starts polling the row count into `progress.rows`.
    pub fn start_monitor(&mut self) {
        let ch = self.ch.clone();
        let progress = Arc::clone(&self.progress);
        self.monitor = Some(tokio::spawn(async move {
            while !progress.stop.load(Ordering::Relaxed) {
                let query = ch
                    .query(&format!(
                        "SELECT count() FROM {TABLE} WHERE {PUBLISHED_ROWS}"
                    ))
                    .fetch_one::<u64>();
                if let Ok(Ok(rows)) = tokio::time::timeout(Duration::from_secs(2), query).await {
                    progress.rows.store(rows, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    /// Waits until the monitor has seen at least `rows` rows.
    pub async fn wait_rows(&self, rows: u64, timeout: Duration) -> anyhow::Result<()> {
        let progress = Arc::clone(&self.progress);
        wait_for(&format!("{rows} rows stored"), timeout, || {
            let seen = progress.rows();
            async move { Ok(if seen >= rows { Ok(()) } else { Err(seen) }) }
        })
        .await
    }

    /// Publishes every envelope of `plan` in the background. With `lead`, it stays at
    /// most that many messages ahead of the rows stored, so that publishing goes on
    /// while the faults happen; without, it publishes as fast as JetStream takes it.
    /// Either way it holds back the last `progress.withheld` ids.
    pub fn start_publishing(
        &self,
        plan: &Plan,
        ids: RangeInclusive<u64>,
        lead: Option<u64>,
    ) -> JoinHandle<anyhow::Result<()>> {
        self.publisher().start(plan, ids, lead)
    }

    /// What publishing needs, apart from the rig (which a fault may be borrowing).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            js: self.js.clone(),
            progress: Arc::clone(&self.progress),
        }
    }

    /// Waits until the consumer has nothing pending and nothing awaiting ack.
    pub async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::support::wait_until_drained(&self.js, STREAM, CONSUMER, timeout).await
    }

    /// (pending, ack pending) of the consumer.
    pub async fn consumer_backlog(&self) -> anyhow::Result<(u64, u64)> {
        let mut consumer: jetstream::consumer::PullConsumer =
            self.js.get_consumer_from_stream(CONSUMER, STREAM).await?;
        let info = consumer.info().await?;
        Ok((info.num_pending, info.num_ack_pending as u64))
    }

    /// Counts what was stored and dead-lettered, checks that merging leaves one row
    /// per message, and starts the drill's report.
    pub async fn report(
        &mut self,
        plan: &Plan,
        metrics: &Metrics,
        drain: Duration,
    ) -> anyhow::Result<Report> {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.await;
        }
        #[derive(Row, Deserialize)]
        struct Copies {
            id: u64,
            copies: u64,
        }
        // As every reader of the table is told to ask: FINAL, one row per message.
        let query = self
            .ch
            .query(&format!(
                "SELECT toUInt64(data.id) AS id, count() AS copies FROM {TABLE} FINAL \
                 WHERE {PUBLISHED_ROWS} GROUP BY id"
            ))
            .fetch_all::<Copies>();
        let stored = tokio::time::timeout(QUERY_TIMEOUT, query)
            .await
            .context("counting the stored ids: no answer")?
            .context("counting the stored ids")?;
        let stored: BTreeMap<u64, u64> = stored.into_iter().map(|c| (c.id, c.copies)).collect();
        let rows_before_merge = self.rows().await?;
        let rows_final: u64 = stored.values().sum();
        // Now let the engine do what FINAL did at query time.
        self.start_merges().await?;
        self.execute(&format!("OPTIMIZE TABLE {TABLE} FINAL"))
            .await?;
        let rows_after_merge = self.rows().await?;

        let prefilled_left = if self.prefilled > 0 {
            self.number(&format!(
                "SELECT count() FROM {TABLE} WHERE NOT ({PUBLISHED_ROWS})"
            ))
            .await?
        } else {
            0
        };
        let dead_letters = self.dead_letters().await?;
        let mut report = Report::new(
            self.name,
            plan,
            &stored,
            &dead_letters,
            rows_before_merge.saturating_sub(rows_final),
            rows_after_merge,
            metrics,
            drain,
        );
        report.require(
            prefilled_left == self.prefilled,
            format!(
                "{prefilled_left} of the {} rows that were in the table before are left",
                self.prefilled
            ),
        );
        Ok(report)
    }

    /// Every message on the dead-letter stream.
    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let stream = self.js.get_stream(DEAD_LETTER_STREAM).await?;
        let last = stream.get_info().await?.state.last_sequence;
        let mut letters = Vec::new();
        for sequence in 1..=last {
            let message = stream.get_raw_message(sequence).await?;
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
            letters.push(DeadLetter {
                id: header(HEADER_DRILL_ID).and_then(|v| v.parse().ok()),
                reason: header(HEADER_REASON).unwrap_or_default(),
                delivery_count: header(HEADER_DELIVERY_COUNT)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            });
        }
        Ok(letters)
    }

    /// The end of the NATS and ClickHouse logs, for a failure message.
    pub fn infra_log_tails(&self) -> String {
        format!(
            "--- nats-server log ---\n{}\n--- ClickHouse log ---\n{}",
            self.nats.log_tails(),
            self.clickhouse.log_tail(15)
        )
    }
}

pub struct Publisher {
    js: jetstream::Context,
    progress: Arc<Progress>,
}

impl Publisher {
    /// See [`Rig::start_publishing`].
    pub fn start(
        &self,
        plan: &Plan,
        ids: RangeInclusive<u64>,
        lead: Option<u64>,
    ) -> JoinHandle<anyhow::Result<()>> {
        let js = self.js.clone();
        let plan = plan.clone();
        let progress = Arc::clone(&self.progress);
        tokio::spawn(async move { publish(js, plan, ids, lead, progress).await })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: Option<u64>,
    pub reason: String,
    pub delivery_count: u64,
}

/// Runs a blocking call (process control, goose) without stalling the runtime's
/// other tasks: the publisher and the monitor keep going meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    tokio::task::block_in_place(f)
}

/// The longest any one ClickHouse statement of a drill may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Messages in flight per round of publishing: their acks are awaited together.
const PUBLISH_CHUNK: usize = 256;
/// Bounds each step of one publish, whatever the client does while reconnecting.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A message whose publish has not been acknowledged after this long fails the drill.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(300);

async fn publish(
    js: jetstream::Context,
    plan: Plan,
    ids: RangeInclusive<u64>,
    lead: Option<u64>,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let ids: Vec<u64> = ids.collect();
    let mut sent = 0;
    while sent < ids.len() {
        let releasable = |progress: &Progress| {
            let withheld = progress.withheld.load(Ordering::Relaxed) as usize;
            ids.len().saturating_sub(withheld)
        };
        loop {
            let too_far_ahead = lead.is_some_and(|lead| {
                progress.published.load(Ordering::Relaxed) > progress.rows() + lead
            });
            if !too_far_ahead && sent < releasable(&progress) {
                break;
            }
            if progress.stop.load(Ordering::Relaxed) {
                bail!("the drill stopped before everything was published");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let chunk = &ids[sent..releasable(&progress).clamp(sent, sent + PUBLISH_CHUNK)];
        sent += chunk.len();
        let started = Instant::now();
        let mut pending: Vec<u64> = chunk.to_vec();
        let mut pause = Duration::from_millis(100);
        loop {
            let mut acks: Vec<(u64, Result<PublishAckFuture, String>)> = Vec::new();
            for id in &pending {
                let message = PublishMessage::build()
                    .payload(plan.payload(*id).into())
                    .header(HEADER_DRILL_ID, id.to_string().as_str())
                    // A retried publish is deduplicated by JetStream, so the stream
                    // holds each envelope once whatever happened to the first attempt.
                    .message_id(format!("drill-{id}"));
                let subject = format!("{SUBJECT_PREFIX}.{}", plan.organization(*id));
                let sent =
                    match tokio::time::timeout(SEND_TIMEOUT, js.send_publish(subject, message))
                        .await
                    {
                        Ok(sent) => sent.map_err(|err| err.to_string()),
                        Err(_) => Err(format!("not sent within {SEND_TIMEOUT:?}")),
                    };
                acks.push((*id, sent));
            }
            // Awaited together: acks lost with a connection time out side by side, not
            // one after the other.
            let results =
                futures::future::join_all(acks.into_iter().map(|(id, sent)| async move {
                    let result = match sent {
                        Ok(ack) => {
                            match tokio::time::timeout(SEND_TIMEOUT, ack.into_future()).await {
                                Ok(acked) => acked.map(|_| ()).map_err(|err| err.to_string()),
                                Err(_) => {
                                    Err(format!("no acknowledgement within {SEND_TIMEOUT:?}"))
                                }
                            }
                        }
                        Err(err) => Err(err),
                    };
                    (id, result)
                }))
                .await;
            let mut failed = Vec::new();
            let mut last_error = String::new();
            for (id, result) in results {
                if let Err(err) = result {
                    failed.push(id);
                    last_error = err;
                }
            }
            let acked = (pending.len() - failed.len()) as u64;
            progress.published.fetch_add(acked, Ordering::Relaxed);
            if failed.is_empty() {
                break;
            }
            if started.elapsed() > PUBLISH_DEADLINE {
                bail!(
                    "{} publishes unacknowledged after {PUBLISH_DEADLINE:?}; last error: {last_error}",
                    failed.len()
                );
            }
            pending = failed;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
    Ok(())
}
