//! The JetStream objects the writer relies on: the stream, the dead-letter stream and
//! the durable pull consumer. [`ensure`] runs at start and again whenever a pull fails
//! (the stream or consumer may have been deleted under a running writer).
//!
//! # Stream identity
//!
//! A row's identity in the table is its message's stream sequence: the table is a
//! `ReplacingMergeTree` whose sorting key ends with `stream_sequence` (see
//! [`crate::store`]). That identifies a message only while **stream sequences never
//! repeat within the table**. A stream that is deleted and created again restarts at
//! sequence 1, and a new envelope from the same organization, device and second as an
//! old row with the same sequence would be merged into it: a silent loss. This module
//! keeps the invariant in two ways:
//!
//! * **A stream the writer creates** (missing at start, or deleted while it runs)
//!   starts at the highest `stream_sequence` stored in the table + 1 (JetStream's
//!   `first_seq`), so it continues the table's sequences instead of restarting them.
//! * **An existing stream** whose next sequence would be at or below the highest stored
//!   one (its last sequence, or first sequence − 1 when it is empty, is below the
//!   table's maximum) was recreated by someone else: the writer refuses to consume
//!   from it with a [`Refusal::SequenceReuse`] naming the fix, unless
//!   `PONIX_NATS_ALLOW_SEQUENCE_REUSE` accepts the risk. At start that is a start-up
//!   failure (exit code 1); while running, the consumer stops and the writer exits
//!   with code 1, so that an orchestrator shows the failure instead of a writer that
//!   looks healthy and consumes nothing. A running writer stops only when three
//!   re-ensures in a row say so: right after a cluster failover, a server that led
//!   the stream may answer once with its old, shorter state.
//!
//! This was chosen over a stream identity in the sorting key (a migration that
//! rebuilds the table, and a wider key on every row for an event that is rare and
//! operator-made) and over recording the stream's creation time (which a restore from
//! a backup changes without reusing sequences): the table itself already holds what
//! the invariant needs. Limits: rows of a stream's last messages that are still being
//! inserted when the writer recreates that stream are not yet in the maximum, so a
//! stream deleted under a running writer can restart up to one batch early; and the
//! check cannot tell a stream whose sequences were all dead-lettered or dropped.
//!
//! # What is created, and how an existing object must fit
//!
//! * Both streams use file storage, with the configured retention
//!   (`PONIX_NATS_STREAM_MAX_AGE_SECS`, `PONIX_NATS_STREAM_MAX_BYTES` and the
//!   `_DEAD_LETTER_` pair; 0 is unlimited, as in NATS). Retention applies when the
//!   writer creates a stream; an existing stream is not changed.
//! * The dead-letter stream's duplicate window is
//!   [`dead_letter_duplicate_window`]: long enough to cover every redelivery of one
//!   message, so that dead-lettering it twice (a TERM lost, a crash in between) is
//!   deduplicated through the `Nats-Msg-Id` the consumer sets.
//! * Both streams get `PONIX_NATS_STREAM_REPLICAS` replicas when the writer creates
//!   them; the durable consumer is created with replicas 0, which JetStream reads as
//!   "as many as its stream". An existing stream with another count is left as it is
//!   (changing replicas is an operator's decision, `nats stream edit --replicas`) and
//!   the difference is logged as a warning at every ensure. A count the servers cannot
//!   hold (more than 1 on a server that is not clustered, more than the cluster has
//!   servers) is a [`Refusal::Replicas`] naming the variable and the fix.
//! * The durable consumer is created if missing. An existing one must have the
//!   configured AckWait and MaxDeliver: replicas that disagree would otherwise
//!   overwrite each other's settings on every start, and the delivery budget would be
//!   whatever the last replica to start said. A mismatch is a
//!   [`Refusal::ConsumerMismatch`] naming both values and the variable. The other
//!   settings (MaxAckPending, the filter subject, the description) are updated to the
//!   configuration, as before.
//!
//! `ponix-writer check` ([`crate::check`]) applies the same checks and describes the
//! same objects (`stream_config`, `dead_letter_stream_config`, `consumer_config`)
//! without creating or changing any.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{self, StorageType};

use crate::config::NatsConfig;
use crate::store::Store;

/// Shortest dead-letter duplicate window: JetStream's own default.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Longest dead-letter duplicate window. JetStream keeps the message ids of the window
/// in memory; a day covers any sane retry budget.
const MAX_DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// ClickHouse error codes meaning the table or its `stream_sequence` column is missing.
const NO_SUCH_COLUMN: u32 = 16;
const UNKNOWN_COLUMN: u32 = 47;
const UNKNOWN_TABLE: u32 = 60;

/// A condition the writer must not consume under, whatever retrying does: an operator
/// has to act. Start-up fails with it, and a running consumer stops on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "stream {stream} would reuse stream sequences already stored in table {table}: its \
         next sequence is {next}, but the table holds sequences up to {stored}. It was \
         probably deleted and recreated by something other than this writer, and new \
         messages would merge into old rows with the same sequence. Fix: recreate the \
         stream starting at sequence {first} (`nats stream add {stream} --first-sequence \
         {first} ...`, or `first_seq: {first}` in its configuration), or delete it and let \
         the writer create it; or set PONIX_NATS_ALLOW_SEQUENCE_REUSE=true to accept that \
         new rows may replace old ones"
    )]
    SequenceReuse {
        stream: String,
        table: String,
        next: u64,
        stored: u64,
        first: u64,
    },
    #[error(
        "durable consumer {consumer} on stream {stream} has {setting} {existing}, but this \
         writer is configured with {variable}={configured}. Replicas sharing a consumer must \
         agree; the consumer is left unchanged. Fix: set {variable} to {existing_value} like \
         the other replicas, or, to change it for all of them, update the consumer \
         (`nats consumer edit {stream} {consumer}`) and then roll out the new value"
    )]
    ConsumerMismatch {
        stream: String,
        consumer: String,
        setting: &'static str,
        variable: &'static str,
        existing: String,
        existing_value: String,
        configured: String,
    },
    #[error(
        "the NATS servers cannot hold stream {stream} with {replicas} replicas \
         (PONIX_NATS_STREAM_REPLICAS={replicas}): {server}. Each replica needs a JetStream \
         server of its own in a cluster, with room in its storage limits. Fix: set \
         PONIX_NATS_STREAM_REPLICAS to at most the number of JetStream servers in the \
         cluster (1 for a single server), or add servers"
    )]
    Replicas {
        stream: String,
        replicas: usize,
        server: String,
    },
}

/// The refusal in `error`'s chain, if it is one.
pub fn refusal(error: &anyhow::Error) -> Option<&Refusal> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Refusal>())
}

/// Ensures the stream (creating it, or checking its sequences against `store`'s
/// table), the dead-letter stream and the durable pull consumer. Errors are
/// retryable unless [`refusal`] finds a [`Refusal`] in them.
pub async fn ensure(
    js: &jetstream::Context,
    config: &NatsConfig,
    store: &Store,
) -> anyhow::Result<PullConsumer> {
    let stream = ensure_stream(js, config, store).await?;
    ensure_dead_letter_stream(js, config).await?;
    ensure_consumer(&stream, config).await
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    store: &Store,
) -> anyhow::Result<stream::Stream> {
    // Read before the stream is looked at: a stream created after this read by another
    // replica starts at or above it, so the check below cannot misfire on it.
    let stored = highest_stored_sequence(store).await?;
    let stream = match js.get_stream(&config.stream).await {
        Ok(stream) => stream,
        Err(error) if is_stream_not_found(error.kind()) => {
            create_stream(js, config, stored).await?
        }
        Err(error) => {
            return Err(error).with_context(|| format!("looking up stream {}", config.stream));
        }
    };
    warn_on_other_replicas(config, &config.stream, stream.cached_info());
    let next = next_sequence(&stream.cached_info().state);
    if let Some(refusal) = check_sequences(config, store.table(), next, stored) {
        if config.allow_sequence_reuse {
            tracing::warn!(
                error = %refusal,
                "PONIX_NATS_ALLOW_SEQUENCE_REUSE=true: consuming anyway"
            );
        } else {
            return Err(refusal.into());
        }
    }
    Ok(stream)
}

/// The highest `stream_sequence` stored in `store`'s table, 0 when the table or the
/// column does not exist yet.
pub(crate) async fn highest_stored_sequence(store: &Store) -> anyhow::Result<u64> {
    match store.max_stream_sequence().await {
        Ok(stored) => Ok(stored),
        // No table, or no stream_sequence column yet (a migration not applied): no row
        // holds a sequence, so none can be reused. Inserts fail until the table is
        // fixed, and say so.
        Err(error)
            if matches!(
                error.code(),
                Some(UNKNOWN_TABLE | UNKNOWN_COLUMN | NO_SUCH_COLUMN)
            ) =>
        {
            tracing::warn!(
                error = %error,
                table = store.table(),
                "the table holds no stream sequences yet; the stream is not checked against it"
            );
            Ok(0)
        }
        Err(error) => Err(anyhow::Error::from(error)).with_context(|| {
            format!(
                "reading the highest stream_sequence stored in table {} (the stream must \
                 continue after it)",
                store.table()
            )
        }),
    }
}

/// The sequence a stream in `state` gives its next message. An empty stream reports
/// last_seq 0 unless it was created with first_seq (or purged); its next sequence is
/// first_seq then.
pub(crate) fn next_sequence(state: &stream::State) -> u64 {
    state
        .last_sequence
        .max(state.first_sequence.saturating_sub(1))
        .saturating_add(1)
}

/// `Some` when a stream whose next sequence is `next` would reuse sequences of a table
/// whose highest is `stored`.
pub(crate) fn check_sequences(
    config: &NatsConfig,
    table: &str,
    next: u64,
    stored: u64,
) -> Option<Refusal> {
    (next <= stored).then(|| Refusal::SequenceReuse {
        stream: config.stream.clone(),
        table: table.to_owned(),
        next,
        stored,
        first: stored.saturating_add(1),
    })
}

/// The stream the writer creates when it is missing, continuing after `stored`, the
/// highest sequence in the table.
pub(crate) fn stream_config(config: &NatsConfig, stored: u64) -> stream::Config {
    let first = stored.saturating_add(1);
    stream::Config {
        name: config.stream.clone(),
        subjects: config.stream_subjects.clone(),
        storage: StorageType::File,
        max_age: config.stream_max_age,
        max_bytes: max_bytes(config.stream_max_bytes),
        // 1 is JetStream's own start; leave the field out then, as before.
        first_sequence: (first > 1).then_some(first),
        num_replicas: config.stream_replicas,
        ..Default::default()
    }
}

async fn create_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
    stored: u64,
) -> anyhow::Result<stream::Stream> {
    let first = stored.saturating_add(1);
    let created = js.create_stream(stream_config(config, stored)).await;
    match created {
        Ok(stream) => {
            tracing::info!(stream = %config.stream, first_sequence = first, "created the stream");
            Ok(stream)
        }
        // Another replica created it in between: use theirs (and check it).
        Err(error) if is_name_taken(error.kind()) => {
            js.get_stream(&config.stream).await.with_context(|| {
                format!(
                    "looking up stream {} after another writer created it",
                    config.stream
                )
            })
        }
        Err(error) if is_replicas_refused(&error) => Err(Refusal::Replicas {
            stream: config.stream.clone(),
            replicas: config.stream_replicas,
            server: error.to_string(),
        }
        .into()),
        Err(error) => Err(error).with_context(|| {
            format!(
                "creating stream {} for subjects {:?} starting at sequence {first}",
                config.stream, config.stream_subjects
            )
        }),
    }
}

pub(crate) fn is_stream_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(error)
        if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn is_name_taken(kind: CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(error)
        if error.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST)
}

/// JetStream's answers to a replica count it cannot place: 10074 "replicas > 1 not
/// supported in non-clustered mode", 10023 "insufficient resources", 10005 "no suitable
/// peers for placement". Matched by code, and by text for servers that word them
/// differently.
fn is_replicas_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    const CODES: [u64; 3] = [10074, 10023, 10005];
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(js) = current.downcast_ref::<jetstream::Error>()
            && CODES.contains(&js.error_code().0)
        {
            return true;
        }
        let text = current.to_string();
        if [
            "non-clustered mode",
            "insufficient resources",
            "no suitable peers",
        ]
        .iter()
        .any(|needle| text.contains(needle))
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// An existing stream keeps its replica count (see the module docs); say so when it
/// differs from the configured one.
fn warn_on_other_replicas(config: &NatsConfig, name: &str, info: &stream::Info) {
    let existing = info.config.num_replicas.max(1);
    if existing != config.stream_replicas {
        tracing::warn!(
            stream = %name,
            existing_replicas = existing,
            configured = config.stream_replicas,
            "the stream exists with another replica count than PONIX_NATS_STREAM_REPLICAS; \
             it is left unchanged (`nats stream edit {name} --replicas N` changes it)"
        );
    }
}

/// NATS spells "unlimited" as -1; the variables spell it 0.
fn max_bytes(configured: u64) -> i64 {
    match configured {
        0 => -1,
        n => i64::try_from(n).unwrap_or(i64::MAX),
    }
}

/// The dead-letter stream's duplicate window: every delivery of one message may end
/// in a dead-letter publish whose acknowledgement is lost (the message is then NAKed
/// and dead-lettered again on its next delivery), so the window covers MaxDeliver
/// deliveries, each up to AckWait plus the longest NAK delay apart. At least
/// JetStream's default of 2 minutes, at most a day, and never more than the
/// dead-letter stream's max age (JetStream refuses a window longer than that).
fn dead_letter_duplicate_window(config: &NatsConfig) -> Duration {
    let deliveries = u32::try_from(config.max_deliver.max(1)).unwrap_or(u32::MAX);
    let window = (config.ack_wait + config.nak_backoff_max)
        .saturating_mul(deliveries)
        .clamp(MIN_DUPLICATE_WINDOW, MAX_DUPLICATE_WINDOW);
    if config.dead_letter_max_age.is_zero() {
        window
    } else {
        window.min(config.dead_letter_max_age)
    }
}

/// The dead-letter stream the writer creates when it is missing.
pub(crate) fn dead_letter_stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.dead_letter_stream.clone(),
        subjects: vec![config.dead_letter_subject.clone()],
        storage: StorageType::File,
        max_age: config.dead_letter_max_age,
        max_bytes: max_bytes(config.dead_letter_max_bytes),
        duplicate_window: dead_letter_duplicate_window(config),
        num_replicas: config.stream_replicas,
        ..Default::default()
    }
}

/// Creates the dead-letter stream if it is missing.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<()> {
    let stream = match js.get_or_create_stream(dead_letter_stream_config(config)).await {
        Err(error) if is_replicas_refused(&error) => {
            return Err(Refusal::Replicas {
                stream: config.dead_letter_stream.clone(),
                replicas: config.stream_replicas,
                server: error.to_string(),
            }
            .into());
        }
        other => other,
    }
    .with_context(|| {
        format!(
            "ensuring dead-letter stream {} for subject {} (it must not overlap the subjects of another stream)",
            config.dead_letter_stream, config.dead_letter_subject
        )
    })?;
    let mut stream = stream;
    if let Ok(info) = stream.info().await {
        warn_on_other_replicas(config, &config.dead_letter_stream, info);
    }
    Ok(())
}

async fn ensure_consumer(
    stream: &stream::Stream,
    config: &NatsConfig,
) -> anyhow::Result<PullConsumer> {
    match stream.consumer_info(&config.consumer).await {
        Ok(info) => {
            if let Some(refusal) = check_consumer(config, &info.config) {
                return Err(refusal.into());
            }
        }
        Err(error) if matches!(error.kind(), ConsumerInfoErrorKind::NotFound) => {}
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "looking up durable consumer {} on stream {}",
                    config.consumer, config.stream
                )
            });
        }
    }
    stream
        .create_consumer(consumer_config(config))
        .await
        .with_context(|| {
            format!(
                "creating or updating durable consumer {} on stream {} (filter {})",
                config.consumer, config.stream, config.subject
            )
        })
}

/// The durable consumer the writer creates, or updates an existing one to.
pub(crate) fn consumer_config(config: &NatsConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(config.consumer.clone()),
        description: Some("ponix-writer: ProcessedEnvelope to ClickHouse".to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending: config.max_ack_pending,
        filter_subject: config.subject.clone(),
        // 0: as many replicas as the stream has, so the consumer survives what its
        // stream survives.
        num_replicas: 0,
        ..Default::default()
    }
}

/// A [`Refusal::ConsumerMismatch`] if the existing consumer's AckWait or MaxDeliver
/// differs from the configuration.
pub(crate) fn check_consumer(
    config: &NatsConfig,
    existing: &jetstream::consumer::Config,
) -> Option<Refusal> {
    let mismatch =
        |setting, variable, existing: String, existing_value: String, configured: String| {
            Refusal::ConsumerMismatch {
                stream: config.stream.clone(),
                consumer: config.consumer.clone(),
                setting,
                variable,
                existing,
                existing_value,
                configured,
            }
        };
    // The server stores an unset MaxDeliver as -1; both mean unlimited.
    let max_deliver = |n: i64| if n <= 0 { -1 } else { n };
    if max_deliver(existing.max_deliver) != max_deliver(config.max_deliver) {
        return Some(mismatch(
            "MaxDeliver",
            "PONIX_NATS_MAX_DELIVER",
            existing.max_deliver.to_string(),
            existing.max_deliver.to_string(),
            config.max_deliver.to_string(),
        ));
    }
    if existing.ack_wait != config.ack_wait {
        let secs = |d: Duration| d.as_secs_f64().to_string();
        return Some(mismatch(
            "AckWait",
            "PONIX_NATS_ACK_WAIT_SECS",
            format!("{:?}", existing.ack_wait),
            secs(existing.ack_wait),
            secs(config.ack_wait),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> NatsConfig {
        crate::config::Config::from_vars(
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .unwrap()
        .nats
    }

    #[test]
    fn the_dead_letter_duplicate_window_covers_every_delivery() {
        // Defaults: 20 deliveries × (30 s AckWait + 30 s longest NAK delay).
        assert_eq!(
            dead_letter_duplicate_window(&config(&[])),
            Duration::from_secs(1200)
        );
        // Never under JetStream's default...
        let short = config(&[
            ("PONIX_NATS_MAX_DELIVER", "2"),
            ("PONIX_NATS_ACK_WAIT_SECS", "1"),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.1"),
            ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "1000"),
        ]);
        assert_eq!(dead_letter_duplicate_window(&short), MIN_DUPLICATE_WINDOW);
        // ...never over a day...
        let long = config(&[("PONIX_NATS_MAX_DELIVER", "10000")]);
        assert_eq!(dead_letter_duplicate_window(&long), MAX_DUPLICATE_WINDOW);
        // ...and never over the stream's max age, which JetStream would refuse.
        let aged = config(&[("PONIX_NATS_DEAD_LETTER_MAX_AGE_SECS", "600")]);
        assert_eq!(
            dead_letter_duplicate_window(&aged),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn a_stream_is_refused_only_when_its_next_sequence_is_already_stored() {
        let c = config(&[]);
        assert_eq!(check_sequences(&c, "t", 1, 0), None);
        assert_eq!(check_sequences(&c, "t", 101, 100), None);
        let refusal = check_sequences(&c, "t", 1, 100).unwrap();
        let text = refusal.to_string();
        for needle in [
            "stream processed_envelopes",
            "table t",
            "next sequence is 1",
            "up to 100",
            "--first-sequence 101",
            "first_seq: 101",
            "PONIX_NATS_ALLOW_SEQUENCE_REUSE=true",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(refusal_in(anyhow::Error::from(refusal).context("starting")));
        assert!(!refusal_in(anyhow::anyhow!("timed out")));
    }

    fn refusal_in(error: anyhow::Error) -> bool {
        refusal(&error).is_some()
    }

    #[test]
    fn a_consumer_with_other_ack_wait_or_max_deliver_is_refused() {
        let c = config(&[]);
        let existing = |ack_wait: u64, max_deliver: i64| jetstream::consumer::Config {
            ack_wait: Duration::from_secs(ack_wait),
            max_deliver,
            ..Default::default()
        };
        assert_eq!(check_consumer(&c, &existing(30, 20)), None);
        let text = check_consumer(&c, &existing(30, 5)).unwrap().to_string();
        for needle in [
            "MaxDeliver 5",
            "PONIX_NATS_MAX_DELIVER=20",
            "set PONIX_NATS_MAX_DELIVER to 5",
            "nats consumer edit processed_envelopes ponix-writer",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let text = check_consumer(&c, &existing(60, 20)).unwrap().to_string();
        for needle in [
            "AckWait 60s",
            "PONIX_NATS_ACK_WAIT_SECS=30",
            "set PONIX_NATS_ACK_WAIT_SECS to 60",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        // Unlimited is -1 on the server and 0 in an unset config: the same.
        let unlimited = NatsConfig {
            max_deliver: 0,
            ..c.clone()
        };
        assert_eq!(check_consumer(&unlimited, &existing(30, -1)), None);
    }

    #[test]
    fn zero_bytes_is_unlimited() {
        assert_eq!(max_bytes(0), -1);
        assert_eq!(max_bytes(1024), 1024);
        assert_eq!(max_bytes(u64::MAX), i64::MAX);
    }
}
