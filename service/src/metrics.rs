//! Prometheus metrics, served as text on `/metrics`.
//!
//! All names carry the `ponix_writer_` prefix. Counters get the `_total` suffix from
//! the encoder.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `messages_received_total` | counter | |
//! | `redeliveries_total` | counter: messages seen with a delivery count above 1 | |
//! | `rows_inserted_total` | counter | |
//! | `batches_total` | counter: fetched batches, by what happened to their rows | `outcome` |
//! | `inserts_total` | counter: INSERT statements, by result | `result` |
//! | `insert_duration_seconds` | histogram: time per INSERT statement | |
//! | `acks_total` | counter: messages acknowledged after their rows committed | |
//! | `naks_total` | counter: messages NAKed with a delay | `reason` |
//! | `dead_lettered_total` | counter: messages stored in the dead-letter stream, then terminated | `reason` |
//! | `dead_letter_failures_total` | counter: dead-letter publishes that failed (the message was NAKed instead) | |
//! | `ack_failures_total` | counter: acknowledgements the client could not send or confirm | |
//! | `insert_retries_total` | counter: INSERTs repeated for a batch held through an outage (ClickHouse unavailable, or a table or credential problem) | |
//! | `seconds_since_last_insert` | gauge: seconds since an INSERT last succeeded (since start-up before the first) | |
//! | `batches_held` | gauge: batches held in memory and retried while ClickHouse cannot store them; no new pull starts while above 0 | |
//! | `rows_per_insert` | histogram: rows in each INSERT statement | |
//! | `consumer_pending` | gauge: messages in the stream not yet delivered to the durable consumer (its `num_pending`) | |
//! | `consumer_ack_pending` | gauge: messages delivered and not yet acknowledged, by any writer on the consumer | |
//! | `consumer_info_age_seconds` | gauge: seconds since the two above were last read (since start-up before the first); grows while NATS does not answer | |
//! | `build_info` | gauge, always 1 | `version`, `commit` |
//!
//! The consumer gauges come from JetStream's consumer info, read every few seconds
//! by [`crate::lag`]; they describe the durable consumer, so every replica on it
//! reports the same values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::ErrorClass;

/// What happened to the rows of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchOutcome {
    /// Every valid row committed (invalid messages, if any, were dead-lettered).
    Committed,
    /// Some rows committed, others were rejected or failed.
    Partial,
    /// No row committed.
    Failed,
    /// The batch held no valid row (all invalid, or empty).
    NoRows,
    /// Shutdown cut processing short; the messages were NAKed.
    Aborted,
}

/// Result of one INSERT statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsertResult {
    Ok,
    Retryable,
    PermanentDestination,
    PermanentData,
}

impl BatchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::NoRows => "no_rows",
            Self::Aborted => "aborted",
        }
    }
}

impl InsertResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retryable => "retryable",
            Self::PermanentDestination => "permanent_destination",
            Self::PermanentData => "permanent_data",
        }
    }
}

impl NakReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::PermanentDestination => "permanent_destination",
            Self::DeadLetterFailed => "dead_letter_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

impl From<ErrorClass> for InsertResult {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Retryable => Self::Retryable,
            ErrorClass::Destination => Self::PermanentDestination,
            ErrorClass::Data => Self::PermanentData,
        }
    }
}

/// Why a message was NAKed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NakReason {
    /// The INSERT failed with a retryable error.
    Retryable,
    /// The INSERT failed with a permanent destination error (schema, credentials).
    PermanentDestination,
    /// The message had to be dead-lettered, and the dead-letter publish failed.
    DeadLetterFailed,
    /// Shutdown interrupted the batch.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NakLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The commit the binary was built from: `PONIX_BUILD_COMMIT` at build time (the
/// Dockerfile passes its `REVISION` build argument), else `unknown`.
const BUILD_COMMIT: &str = match option_env!("PONIX_BUILD_COMMIT") {
    Some(commit) if !commit.is_empty() => commit,
    _ => "unknown",
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The writer's metrics and the registry that encodes them. Cheap to update from any
/// task: every metric is atomic.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    messages_received: Counter,
    redeliveries: Counter,
    rows_inserted: Counter,
    batches: Family<OutcomeLabels, Counter>,
    inserts: Family<ResultLabels, Counter>,
    insert_duration: Histogram,
    acks: Counter,
    naks: Family<NakLabels, Counter>,
    dead_lettered: Family<ReasonLabels, Counter>,
    dead_letter_failures: Counter,
    ack_failures: Counter,
    messages_in_flight: Gauge,
    insert_retries: Counter,
    seconds_since_last_insert: Gauge<f64, std::sync::atomic::AtomicU64>,
    batches_held: Gauge,
    rows_per_insert: Histogram,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    consumer_info_age: Gauge<f64, AtomicU64>,
    /// Milliseconds after `started` of the last consumer info read (0: none yet).
    last_consumer_info_ms: AtomicU64,
    /// Reference point for [`Self::seconds_since_last_insert`].
    started: Instant,
    /// Milliseconds after `started` of the last successful INSERT (0: none yet).
    last_insert_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ponix_writer");
        let messages_received = Counter::default();
        let redeliveries = Counter::default();
        let rows_inserted = Counter::default();
        let batches = Family::<OutcomeLabels, Counter>::default();
        let inserts = Family::<ResultLabels, Counter>::default();
        // 5 ms .. ~82 s: a small local insert up to one near the default timeouts.
        let insert_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15),
        );
        let acks = Counter::default();
        let naks = Family::<NakLabels, Counter>::default();
        let dead_lettered = Family::<ReasonLabels, Counter>::default();
        let dead_letter_failures = Counter::default();
        let ack_failures = Counter::default();
        let messages_in_flight = Gauge::default();
        let insert_retries = Counter::default();
        let seconds_since_last_insert = Gauge::<f64, AtomicU64>::default();
        let batches_held = Gauge::default();
        // 1 .. 65,536 rows: one message up to well past the largest batch allowed.
        let rows_per_insert = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 17),
        );
        let consumer_pending = Gauge::default();
        let consumer_ack_pending = Gauge::default();
        let consumer_info_age = Gauge::<f64, AtomicU64>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
            })
            .set(1);

        registry.register(
            "messages_received",
            "JetStream messages received",
            messages_received.clone(),
        );
        registry.register(
            "redeliveries",
            "Messages received with a delivery count above 1",
            redeliveries.clone(),
        );
        registry.register(
            "rows_inserted",
            "Rows committed to ClickHouse",
            rows_inserted.clone(),
        );
        registry.register(
            "batches",
            "Fetched batches, by what happened to their rows",
            batches.clone(),
        );
        registry.register("inserts", "INSERT statements, by result", inserts.clone());
        registry.register(
            "insert_duration_seconds",
            "Time per INSERT statement",
            insert_duration.clone(),
        );
        registry.register(
            "acks",
            "Messages acknowledged after their rows committed",
            acks.clone(),
        );
        registry.register("naks", "Messages NAKed with a delay", naks.clone());
        registry.register(
            "dead_lettered",
            "Messages stored in the dead-letter stream and terminated",
            dead_lettered.clone(),
        );
        registry.register(
            "dead_letter_failures",
            "Dead-letter publishes that failed; the message was NAKed instead",
            dead_letter_failures.clone(),
        );
        registry.register(
            "ack_failures",
            "Acknowledgements that could not be sent or confirmed",
            ack_failures.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages received and not yet settled (acked, NAKed or terminated) and counted",
            messages_in_flight.clone(),
        );
        registry.register(
            "insert_retries",
            "INSERTs repeated for a batch held through an outage (ClickHouse unavailable, or a table or credential problem)",
            insert_retries.clone(),
        );
        registry.register(
            "seconds_since_last_insert",
            "Seconds since an INSERT last succeeded (since start-up before the first)",
            seconds_since_last_insert.clone(),
        );
        registry.register(
            "batches_held",
            "Batches held in memory and retried while ClickHouse cannot store them",
            batches_held.clone(),
        );

        registry.register(
            "rows_per_insert",
            "Rows in each INSERT statement",
            rows_per_insert.clone(),
        );
        registry.register(
            "consumer_pending",
            "Messages in the stream not yet delivered to the durable consumer",
            consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending",
            "Messages delivered to the durable consumer and not yet acknowledged",
            consumer_ack_pending.clone(),
        );
        registry.register(
            "consumer_info_age_seconds",
            "Seconds since the consumer gauges were last read from JetStream",
            consumer_info_age.clone(),
        );
        registry.register(
            "build_info",
            "The writer's version and the commit it was built from; always 1",
            build_info,
        );

        Self {
            registry,
            messages_received,
            redeliveries,
            rows_inserted,
            batches,
            inserts,
            insert_duration,
            acks,
            naks,
            dead_lettered,
            dead_letter_failures,
            ack_failures,
            messages_in_flight,
            insert_retries,
            seconds_since_last_insert,
            batches_held,
            rows_per_insert,
            consumer_pending,
            consumer_ack_pending,
            consumer_info_age,
            last_consumer_info_ms: AtomicU64::new(0),
            started: Instant::now(),
            last_insert_ms: AtomicU64::new(0),
        }
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn encode(&self) -> String {
        // Computed at scrape time: a gauge updated only on success would freeze at
        // its last value through exactly the outage it is meant to show.
        let since = self
            .elapsed_ms()
            .saturating_sub(self.last_insert_ms.load(Ordering::Relaxed));
        self.seconds_since_last_insert.set(since as f64 / 1000.0);
        let since = self
            .elapsed_ms()
            .saturating_sub(self.last_consumer_info_ms.load(Ordering::Relaxed));
        self.consumer_info_age.set(since as f64 / 1000.0);
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in the
        // registrations above, and an empty body is a better answer than a panic.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }

    /// The `Content-Type` of [`Metrics::encode`]'s output.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    pub fn message_received(&self, delivered: i64) {
        self.messages_received.inc();
        self.messages_in_flight.inc();
        if delivered > 1 {
            self.redeliveries.inc();
        }
    }

    pub fn insert_finished(&self, rows: usize, elapsed: Duration, result: InsertResult) {
        self.insert_duration.observe(elapsed.as_secs_f64());
        self.rows_per_insert.observe(rows as f64);
        self.inserts
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        if result == InsertResult::Ok {
            self.rows_inserted.inc_by(rows as u64);
            self.last_insert_ms
                .fetch_max(self.elapsed_ms(), Ordering::Relaxed);
        }
    }

    /// The durable consumer's backlog, as JetStream reported it just now.
    pub fn consumer_lag(&self, pending: u64, ack_pending: u64) {
        self.consumer_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.consumer_ack_pending
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
        self.last_consumer_info_ms
            .fetch_max(self.elapsed_ms().max(1), Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// An INSERT is about to be repeated for a held batch.
    pub fn insert_retried(&self) {
        self.insert_retries.inc();
    }

    /// A batch starts (`true`) or stops (`false`) being held through an outage.
    pub fn batch_held(&self, held: bool) {
        if held {
            self.batches_held.inc();
        } else {
            self.batches_held.dec();
        }
    }

    /// How many batches are held through an outage right now.
    pub fn held_batches(&self) -> i64 {
        self.batches_held.get()
    }

    pub fn batch_finished(&self, outcome: BatchOutcome) {
        self.batches
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Called last for a batch, after its settlement is counted: a reader that sees
    /// the gauge at 0 sees every counter of every batch received so far.
    pub fn batch_settled(&self, messages: usize) {
        self.messages_in_flight
            .dec_by(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    pub fn acked(&self, messages: u64) {
        self.acks.inc_by(messages);
    }

    pub fn naked(&self, reason: NakReason) {
        self.naks
            .get_or_create(&NakLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// `reason` is the stable code also sent in the `Ponix-Dead-Letter-Reason` header.
    pub fn dead_lettered(&self, reason: &'static str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn dead_letter_failed(&self) {
        self.dead_letter_failures.inc();
    }

    pub fn ack_failed(&self, messages: u64) {
        self.ack_failures.inc_by(messages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text_with_prefix_and_labels() {
        let metrics = Metrics::new();
        metrics.message_received(1);
        metrics.message_received(3);
        metrics.insert_finished(2, Duration::from_millis(12), InsertResult::Ok);
        metrics.batch_finished(BatchOutcome::Committed);
        metrics.naked(NakReason::Retryable);
        metrics.dead_lettered("decode_failed");
        let text = metrics.encode();
        for line in [
            "ponix_writer_messages_received_total 2",
            "ponix_writer_redeliveries_total 1",
            "ponix_writer_rows_inserted_total 2",
            "ponix_writer_batches_total{outcome=\"committed\"} 1",
            "ponix_writer_inserts_total{result=\"ok\"} 1",
            "ponix_writer_insert_duration_seconds_count 1",
            "ponix_writer_naks_total{reason=\"retryable\"} 1",
            "ponix_writer_dead_lettered_total{reason=\"decode_failed\"} 1",
            "ponix_writer_messages_in_flight 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("# TYPE ponix_writer_insert_duration_seconds histogram"));

        metrics.batch_settled(2);
        let settled = metrics.encode();
        assert!(
            settled
                .lines()
                .any(|l| l == "ponix_writer_messages_in_flight 0"),
            "{settled}"
        );
    }

    fn gauge(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Lets at least `seconds` pass on the monotonic clock the age gauges read.
    fn wait_past(seconds: f64) {
        // Whole milliseconds: the gauges have millisecond resolution.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(seconds) {
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_time_since_the_last_insert_grows_until_an_insert_succeeds() {
        let metrics = Metrics::new();
        wait_past(0.02);
        let before = gauge(&metrics.encode(), "ponix_writer_seconds_since_last_insert");
        assert!(before >= 0.02, "{before}");
        // A failed INSERT does not reset it.
        metrics.insert_finished(5, Duration::ZERO, InsertResult::Retryable);
        wait_past(0.01);
        let during = gauge(&metrics.encode(), "ponix_writer_seconds_since_last_insert");
        assert!(during > before, "{during} <= {before}");
        metrics.insert_finished(5, Duration::ZERO, InsertResult::Ok);
        let after = gauge(&metrics.encode(), "ponix_writer_seconds_since_last_insert");
        assert!(after < during, "{after} >= {during}");
    }

    #[test]
    fn rows_per_insert_and_the_build_are_reported() {
        let metrics = Metrics::new();
        metrics.insert_finished(3, Duration::ZERO, InsertResult::Ok);
        metrics.insert_finished(1000, Duration::ZERO, InsertResult::Retryable);
        let text = metrics.encode();
        assert_eq!(gauge(&text, "ponix_writer_rows_per_insert_count"), 2.0);
        assert_eq!(gauge(&text, "ponix_writer_rows_per_insert_sum"), 1003.0);
        assert!(
            text.lines()
                .any(|l| l == "ponix_writer_rows_per_insert_bucket{le=\"4\"} 1"),
            "{text}"
        );
        let build = format!(
            "ponix_writer_build_info{{version=\"{}\",commit=\"{BUILD_COMMIT}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "no {build:?} in\n{text}");
    }

    #[test]
    fn the_consumer_gauges_and_their_age_follow_the_last_read() {
        let metrics = Metrics::new();
        wait_past(0.02);
        let never = gauge(&metrics.encode(), "ponix_writer_consumer_info_age_seconds");
        assert!(never >= 0.02, "{never}");
        metrics.consumer_lag(1_234, 56);
        let text = metrics.encode();
        assert_eq!(gauge(&text, "ponix_writer_consumer_pending"), 1_234.0);
        assert_eq!(gauge(&text, "ponix_writer_consumer_ack_pending"), 56.0);
        let fresh = gauge(&text, "ponix_writer_consumer_info_age_seconds");
        assert!(fresh < never, "{fresh} >= {never}");
        wait_past(0.02);
        let older = gauge(&metrics.encode(), "ponix_writer_consumer_info_age_seconds");
        assert!(older >= fresh + 0.02, "{older} < {fresh} + 0.02");
    }

    #[test]
    fn held_batches_and_retries_are_counted() {
        let metrics = Metrics::new();
        metrics.batch_held(true);
        metrics.batch_held(true);
        metrics.insert_retried();
        metrics.batch_held(false);
        let text = metrics.encode();
        assert_eq!(gauge(&text, "ponix_writer_batches_held"), 1.0);
        assert_eq!(gauge(&text, "ponix_writer_insert_retries_total"), 1.0);
        assert_eq!(metrics.held_batches(), 1);
    }
}
