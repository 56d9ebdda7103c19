//! The JetStream side: fetch batches, store them, and settle every message only once
//! its fate is durable.
//!
//! # Delivery contract
//!
//! At-least-once delivery into an idempotent table, and no message is ever dropped by
//! the writer:
//!
//! * A message is **acknowledged** only after the INSERT holding its row returned
//!   success (see [`crate::store`] for what success means).
//! * An **invalid** message (it does not decode or fails validation, see
//!   [`envelope::decode`]) never fails its batch. It is published to the dead-letter
//!   subject, the publish acknowledgement from JetStream is awaited, and only then is
//!   the original TERMinated. If the dead-letter publish fails, the original is NAKed
//!   with a delay instead, so it comes back rather than vanishing; on its last
//!   delivery it is never NAKed (see "MaxDeliver").
//! * A store failure that is **not about the messages** (ClickHouse unreachable or
//!   timing out, a 5xx, a retryable server error, an unknown table or column, a schema
//!   mismatch, authentication) does not settle the batch: see "Outages".
//! * From the moment a batch is fetched until it is settled, every message of the
//!   batch gets `+WPI` (progress) every AckWait/3, so neither a slow INSERT, nor a
//!   wait for an INSERT slot or for an earlier batch to settle, nor an outage makes
//!   the server redeliver the batch to someone else.
//!
//! # Outages
//!
//! Only failures caused by a message itself may spend its deliveries. When an INSERT
//! fails for any other reason, the writer *holds* the batch: it keeps the messages in
//! memory under progress acks, stops fetching (so memory stays bounded by the
//! batches already in flight, and new messages wait in the stream), and repeats the
//! INSERT of the rows not yet stored with capped, jittered backoff ([`nak_delay`]
//! over the attempt number, with the NAK backoff settings) until it succeeds or
//! shutdown is requested. An outage of an hour costs no delivery and dead-letters
//! nothing. `/readyz` reports it (class and code, never the exception text), and the
//! metrics `insert_retries_total`, `batches_held` and `seconds_since_last_insert` show
//! it. At shutdown a held batch is NAKed with a delay (on its last delivery,
//! dead-lettered as below). Never a plain NAK: that redelivers at once and turns an
//! outage into a hot loop.
//!
//! # Duplicates
//!
//! A message can be stored and still come back: the process dies between the commit
//! and the acks, an ack is lost, or an INSERT the writer gave up on (timeout) commits
//! on the server anyway. JetStream then redelivers it, in whatever batch it lands in,
//! and its row is inserted again. Every row carries its message's stream sequence
//! ([`ProcessedEnvelopeRow::stream_sequence`]), and the table (a `ReplacingMergeTree`
//! whose sorting key ends with that sequence, see the migrations) keeps one row per
//! message: merges drop the copies, and queries with `FINAL` never see them. Because
//! the identity is per row, not per batch, this holds whatever the composition of the
//! batch that carries the redelivery. A dead letter replayed by `ponix-writer
//! dead-letters replay` keeps the sequence of its first delivery (see [`replayed`]).
//!
//! # Permanent store errors
//!
//! [`ErrorClass::Destination`] errors (unknown table or column, schema mismatch,
//! authentication) say nothing about the messages: the data is fine, the table is
//! not. Dead-lettering would move every message that arrives during a schema mistake
//! out of the main stream, so the writer holds the batch as in an outage: it logs an
//! error on every attempt ("the batch is held and retried until the table is fixed"),
//! reports not-ready on `/readyz`, and clears clickhouse-rs' cached table schema
//! before each retry so that a fix (a migration, a manual ALTER) is picked up without
//! a restart.
//!
//! [`ErrorClass::Data`] errors are about rows: ClickHouse or the serializer rejected
//! what was sent. The batch is then bisected (each half inserted separately, down to
//! single rows; logged once per batch at warn) so that the good rows commit and only
//! the rows rejected on their own are dead-lettered with reason
//! `rejected_by_clickhouse`. If every row of a multi-row batch is rejected
//! individually, that points at the table, not the data, and the batch is held as for
//! a destination error instead. Rows the bisection had no budget left for are NAKed
//! with backoff and come back in another batch.
//!
//! # MaxDeliver
//!
//! After MaxDeliver deliveries the server stops redelivering a message and only
//! publishes an advisory (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`);
//! the message stays in the stream, undelivered forever. Since outages no longer
//! spend deliveries, a message reaches MaxDeliver only by being delivered and not
//! settled again and again (writers killed mid-batch, lost connections). The writer
//! treats a delivery whose count has reached MaxDeliver as the last chance: if its row
//! would be NAKed (shutdown ended a hold, or the bisection did not reach it), the
//! message is dead-lettered with reason `max_deliver_exceeded` (the detail names the
//! store error) and then TERMinated. If that dead-letter publish fails, it is never
//! NAKed: the batch stays in progress and the publish is retried with backoff until
//! it lands. A dead letter is durable and can be replayed into the main subject once
//! the cause is fixed.
//!
//! Remaining gap: if the process dies (or the ack timer expires, or shutdown's drain
//! grace runs out) during a message's last delivery, the server gives up on it
//! without the writer seeing it again; the last case is logged at error with its
//! stream sequence. Alert on the advisory above; the message is still in the stream
//! and can be re-published.
//!
//! # Acknowledgement strategy
//!
//! Acks, NAKs and TERMs for a batch are published back to back (no per-message round
//! trip), and the last `+ACK` of the batch is sent as a *double ack*, which waits for
//! the server's confirmation. The server handles a connection's acks for a consumer in
//! order, so that confirmation covers the acks before it; one round trip per batch
//! instead of one per message. A lost ack can only cause a redelivery, i.e. a
//! re-insert that the table deduplicates (see "Duplicates"), never a loss; failures
//! are counted in `ack_failures_total`.
//!
//! # Pipeline
//!
//! One pull runs at a time, and it overlaps the INSERTs of earlier batches: the next
//! batch is fetched and decoded while the current one is being written, not after.
//! Up to `PONIX_CLICKHOUSE_INSERT_CONCURRENCY` INSERTs run at once, each holding a
//! slot taken in fetch order; a batch waiting for its slot is already under the
//! progress acks above. Batches are settled strictly in fetch order, whatever order
//! their INSERTs finish in. A new pull starts only while at most that many batches
//! are unsettled, so at most concurrency + 1 batches are unacknowledged, which is
//! the room the default MaxAckPending leaves. None of this changes the contract:
//! every ack still follows its row's commit.
//!
//! # Dead letters
//!
//! Published to the configured subject, which a dedicated file-backed stream captures
//! (created at start if missing), with `Nats-Expected-Stream` set so a dead letter can
//! only land in that stream. The payload is the original payload; the headers are the
//! original's (except `Nats-*` ones) plus [`HEADER_REASON`], [`HEADER_DETAIL`],
//! [`HEADER_ORIGINAL_SUBJECT`], [`HEADER_STREAM_SEQUENCE`] and
//! [`HEADER_DELIVERY_COUNT`]. `Nats-Msg-Id` is derived from the original stream and
//! sequence, so dead-lettering the same message twice (a TERM lost, a crash in
//! between) is deduplicated by JetStream within its duplicate window.
//!
//! A dead letter always fits the server's `max_payload` ([`fit_dead_letter`]): the
//! detail is cut first; if the original payload still does not fit, it is left out,
//! [`HEADER_PAYLOAD_DROPPED`] gives its size, and the original subject and stream
//! sequence say where to find it (it stays in the main stream until retention
//! removes it).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::envelope;
use crate::health::Health;
use crate::metrics::{BatchOutcome, InsertResult, Metrics, NakReason};
use crate::row::ProcessedEnvelopeRow;
use crate::store::{ErrorClass, Store};

mod backoff;
mod bisect;
mod dead_letter;
mod hold;
mod pull;
mod replayed;
pub mod watchdog;

pub use backoff::{is_last_delivery, nak_delay};
use bisect::{MAX_INSERTS_PER_BATCH, RowOutcome, insert_bisecting};
pub use dead_letter::{
    HEADER_DELIVERY_COUNT, HEADER_DETAIL, HEADER_ORIGINAL_SUBJECT, HEADER_PAYLOAD_DROPPED,
    HEADER_REASON, HEADER_STREAM_SEQUENCE, MAX_DETAIL_CHARS, REASON_MAX_DELIVER_EXCEEDED,
    REASON_REJECTED_BY_CLICKHOUSE, dead_letter_headers, dead_letter_message_id,
};
pub use replayed::HEADER_REPLAY_OF_SEQUENCE;

/// How many re-ensures in a row must find a stream's sequences behind the table's
/// before a running writer stops on it (see `run`); they are spaced by the pull
/// backoff, so the verdict stands for a second or more.
const SEQUENCE_REUSE_CHECKS: u32 = 3;

/// One received message with the metadata from its reply subject.
struct Delivery {
    message: jetstream::Message,
    delivered: i64,
    stream_sequence: u64,
    /// The sequence its row stores: its own, or a replayed dead letter's first one.
    row_sequence: u64,
}

/// What happens to a message once its batch has been processed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Settle {
    Ack,
    /// After its dead letter was stored.
    Term,
    Nak(Duration, NakReason),
    /// Nothing can be done for it: its last delivery, and neither its row nor its
    /// dead letter could be stored before the writer had to stop. Any answer would
    /// end its deliveries just the same, so none is sent; the error is logged.
    Leave,
}

/// The result of one pull: the messages, and the error that ended it early if any.
type Pulled = Result<(Vec<Delivery>, Option<async_nats::Error>), async_nats::Error>;

/// A batch whose fate is decided and durable, ready to be acknowledged.
struct Decided {
    decisions: Vec<Settle>,
    outcome: BatchOutcome,
    started: Instant,
}

/// Everything the consumer loop needs.
pub struct Consumer {
    js: jetstream::Context,
    /// Replaced when a failed pull makes the loop re-create the consumer.
    pull: std::sync::Mutex<PullConsumer>,
    /// One permit per concurrent INSERT; FIFO, so batches insert in fetch order.
    insert_slots: tokio::sync::Semaphore,
    config: NatsConfig,
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// How long an in-flight batch may still run after shutdown was requested before
    /// it is abandoned and NAKed.
    drain_grace: Duration,
}

impl Consumer {
    pub fn new(
        js: jetstream::Context,
        consumer: PullConsumer,
        config: NatsConfig,
        store: Store,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        drain_grace: Duration,
    ) -> Self {
        Self {
            js,
            pull: std::sync::Mutex::new(consumer),
            insert_slots: tokio::sync::Semaphore::new(store.insert_concurrency()),
            config,
            store,
            metrics,
            health,
            drain_grace,
        }
    }

    /// Consumes until `shutdown` is cancelled. See "Pipeline" in the module docs.
    /// The batches in flight at that moment are finished (inserted and acked, or
    /// NAKed if they cannot finish within the drain grace), a pull already under way
    /// is read to its end and processed too; then all pending acks are flushed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let depth = self.store.insert_concurrency();
        tracing::info!(
            stream = %self.config.stream,
            consumer = %self.config.consumer,
            subject = %self.config.subject,
            dead_letter_subject = %self.config.dead_letter_subject,
            insert_concurrency = depth,
            "consuming"
        );
        let mut fetch_failures: u32 = 0;
        // Re-ensures in a row that found the stream's sequences behind the table's.
        let mut reuse_seen: u32 = 0;
        // After a pull that ended in an error before delivering anything (for example
        // a single message larger than the batch byte limit), pull one message without
        // a byte limit, so that one large message cannot stall the consumer.
        let mut single = false;
        // Set after a failed pull: the next one waits until then.
        let mut retry_at: Option<Instant> = None;
        // At most one pull at a time. It is kept across loop iterations, never dropped
        // half-read (see `fetch`).
        let mut pulling: Option<Pin<Box<dyn Future<Output = Pulled> + Send + '_>>> = None;
        // Batches not yet settled: up to `depth` inserting and one more decoding or
        // waiting for an insert slot. A pull starts only while there is room for its
        // batch, so at most (depth + 1) batches are unacknowledged. Each batch settles
        // itself, after the one fetched before it (see `process_batch`).
        let mut in_flight = FuturesUnordered::new();
        let mut previous_settled: Option<oneshot::Receiver<()>> = None;
        loop {
            // While a batch is held through an outage, nothing new is fetched: the
            // messages wait in the stream, not in memory, and spend no delivery.
            let holding = self.metrics.held_batches() > 0;
            if pulling.is_none() && in_flight.len() <= depth && !holding && !shutdown.is_cancelled()
            {
                pulling = Some(Box::pin(self.fetch(single, retry_at.take(), &shutdown)));
            }
            if pulling.is_none() && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                pulled = async { pulling.as_mut().expect("guarded by the condition").await }, if pulling.is_some() => {
                    pulling = None;
                    let failure = match pulled {
                        Ok((deliveries, ended_by)) => {
                            single = deliveries.is_empty() && ended_by.is_some();
                            match ended_by {
                                // An error before any message (consumer deleted, no
                                // responders, ...) would make the next pull fail at once
                                // too: back off.
                                Some(error) if deliveries.is_empty() => Some(error),
                                ended_by => {
                                    fetch_failures = 0;
                                    reuse_seen = 0;
                                    if let Some(error) = ended_by {
                                        tracing::debug!(%error, received = deliveries.len(), "pull request ended early");
                                    }
                                    if !deliveries.is_empty() {
                                        let (settled, next) = oneshot::channel();
                                        let previous = previous_settled.replace(next);
                                        in_flight.push(self.process_batch(deliveries, previous, settled, &shutdown));
                                    }
                                    None
                                }
                            }
                        }
                        Err(error) => Some(error),
                    };
                    if let Some(error) = failure {
                        if watchdog::is_unanswered(&error) {
                            watchdog::after_unanswered_pull(&self.js.client()).await;
                        }
                        fetch_failures = fetch_failures.saturating_add(1);
                        let pause = nak_delay(
                            i64::from(fetch_failures),
                            Duration::from_millis(500),
                            Duration::from_secs(30),
                            fastrand::f64(),
                        );
                        tracing::warn!(%error, attempt = fetch_failures, retry_in = ?pause, "fetching from JetStream failed");
                        retry_at = Some(Instant::now() + pause);
                        // The stream or consumer may have been deleted under us: recreate
                        // them (idempotent) before the next pull. Bounded: while a cluster
                        // elects leaders, JetStream's API stays silent for seconds, and the
                        // next pull is the better check (see consumer::watchdog).
                        let ensured = tokio::time::timeout(
                            watchdog::ENSURE_TIMEOUT,
                            crate::streams::ensure(&self.js, &self.config, &self.store),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!(
                                "no answer within {:?}; pulling with the consumer handle as it is",
                                watchdog::ENSURE_TIMEOUT
                            ))
                        });
                        match ensured {
                            Ok(consumer) => {
                                reuse_seen = 0;
                                *self.pull.lock().unwrap_or_else(|p| p.into_inner()) = consumer;
                            }
                            // Right after a failover, a server that led the stream before it
                            // froze may still answer for it with its old state, which looks
                            // like a recreated stream (the nats-failover drill hit this): only
                            // a verdict that holds on several checks stops the writer.
                            Err(error)
                                if matches!(
                                    crate::streams::refusal(&error),
                                    Some(crate::streams::Refusal::SequenceReuse { .. })
                                ) && reuse_seen + 1 < SEQUENCE_REUSE_CHECKS =>
                            {
                                reuse_seen += 1;
                                tracing::warn!(
                                    error = format!("{error:#}"),
                                    check = reuse_seen,
                                    of = SEQUENCE_REUSE_CHECKS,
                                    "the stream looks recreated; checking again before stopping \
                                     (a stale answer after a failover looks the same)"
                                );
                            }
                            // An operator must act (see crate::streams): stop, and exit non-zero.
                            Err(error) if crate::streams::refusal(&error).is_some() => {
                                return Err(error.context("stopped consuming"));
                            }
                            Err(error) => tracing::warn!(
                                error = format!("{error:#}"),
                                "re-ensuring stream and consumer failed"
                            ),
                        }
                    }
                }
            }
        }
        let client = self.js.client();
        match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "flushing acknowledgements at shutdown failed")
            }
            Err(_) => tracing::warn!("flushing acknowledgements at shutdown timed out"),
        }
        tracing::info!("consumer stopped");
        Ok(())
    }

    /// One pull, read to its end: it ends when the batch is full or at its expiry
    /// (`batch_wait`), so this returns within `batch_wait` even during shutdown. A
    /// pull is never abandoned half-read, because the messages the server already
    /// sent would then sit unacknowledged until AckWait and spend a delivery each;
    /// read to the end, they are inserted and acknowledged like any batch.
    ///
    /// With `retry_at` (after a failed pull) it first waits until then; shutdown
    /// ends that wait with an empty batch.
    ///
    /// The pull itself is [`pull::pull`]. One the server does not end in time ends
    /// with [`watchdog::Unanswered`] (see [`watchdog`]): messages already read are
    /// kept; those the server may still send come back after AckWait.
    async fn fetch(
        &self,
        single: bool,
        retry_at: Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Pulled {
        if let Some(at) = retry_at {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok((Vec::new(), None)),
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let consumer = self.pull.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let request = pull::Request {
            max_messages: if single { 1 } else { self.config.batch_size },
            max_bytes: if single {
                0
            } else {
                self.config.batch_max_bytes
            },
            expires: self.config.batch_wait,
            deadline: Instant::now() + self.config.batch_wait + watchdog::PULL_ANSWER_GRACE,
        };
        let (messages, ended_by) = pull::pull(&self.js, &consumer, request).await?;
        let deliveries = messages
            .into_iter()
            .filter_map(|message| self.delivery(message))
            .collect();
        Ok((deliveries, ended_by))
    }

    fn delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        let (delivered, stream_sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(error) => {
                // Without a JetStream reply subject the message cannot be acked at all.
                tracing::warn!(%error, subject = %message.subject, "ignoring a message without JetStream metadata");
                return None;
            }
        };
        self.metrics.message_received(delivered);
        let row_sequence = replayed::row_sequence(message.headers.as_ref(), stream_sequence);
        Some(Delivery {
            message,
            delivered,
            stream_sequence,
            row_sequence,
        })
    }

    /// A batch's whole life after its pull: decide its fate, wait until the batch
    /// fetched before it is settled (`previous`), settle it, then tell the next one
    /// (`settled`). Progress runs from the first moment to the last, so no message
    /// of the batch reaches AckWait while it waits for anything: its INSERT slot, an
    /// outage, or an earlier batch.
    async fn process_batch(
        &self,
        deliveries: Vec<Delivery>,
        previous: Option<oneshot::Receiver<()>>,
        settled: oneshot::Sender<()>,
        shutdown: &CancellationToken,
    ) {
        let work = async {
            let decided = self.decide_batch(&deliveries, shutdown).await;
            if let Some(previous) = previous {
                // An error means the sender is gone, which also means "settled".
                let _ = previous.await;
            }
            self.settle_batch(&deliveries, decided).await;
        };
        self.with_progress(&deliveries, work).await;
        // The next batch may be gone already (shutdown); nothing to tell then.
        let _ = settled.send(());
    }

    /// Decides the fate of every message of a batch (decode, insert, dead letters),
    /// giving up on it `drain_grace` after shutdown was requested.
    async fn decide_batch(&self, deliveries: &[Delivery], shutdown: &CancellationToken) -> Decided {
        let started = Instant::now();
        let abandon = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.drain_grace).await;
        };
        let (decisions, outcome) = tokio::select! {
            decided = self.decide(deliveries, shutdown) => decided,
            () = abandon => {
                tracing::warn!(
                    messages = deliveries.len(),
                    grace = ?self.drain_grace,
                    "shutdown: abandoning the in-flight batch; NAKing it for redelivery"
                );
                // Short delay: the messages are fine, another instance may take them.
                let delay = self.config.nak_backoff_base;
                let decisions = deliveries
                    .iter()
                    .map(|delivery| {
                        if is_last_delivery(delivery.delivered, self.config.max_deliver) {
                            self.strand(delivery, "shutdown cut its last delivery short");
                            Settle::Leave
                        } else {
                            Settle::Nak(delay, NakReason::Shutdown)
                        }
                    })
                    .collect();
                (decisions, BatchOutcome::Aborted)
            }
        };
        Decided {
            decisions,
            outcome,
            started,
        }
    }

    /// Logs a message that nothing more can be done for (see [`Settle::Leave`]).
    fn strand(&self, delivery: &Delivery, why: &str) {
        tracing::error!(
            stream = %self.config.stream,
            stream_sequence = delivery.stream_sequence,
            delivered = delivery.delivered,
            "{why}: the message stays in the stream undelivered (MaxDeliver reached); \
             re-publish it from the stream to store it"
        );
    }

    /// Sends a decided batch's acknowledgements and records it.
    async fn settle_batch(&self, deliveries: &[Delivery], decided: Decided) {
        let Decided {
            decisions,
            outcome,
            started,
        } = decided;
        self.settle(deliveries, &decisions).await;
        self.metrics.batch_finished(outcome);
        self.metrics.batch_settled(deliveries.len());
        tracing::debug!(
            messages = deliveries.len(),
            outcome = outcome.as_str(),
            elapsed = ?started.elapsed(),
            "batch done"
        );
    }

    /// Decode, insert, dead-letter: everything that must be durable before a message
    /// may be settled.
    async fn decide(
        &self,
        deliveries: &[Delivery],
        shutdown: &CancellationToken,
    ) -> (Vec<Settle>, BatchOutcome) {
        let mut rows: Vec<ProcessedEnvelopeRow> = Vec::with_capacity(deliveries.len());
        let mut owners: Vec<usize> = Vec::with_capacity(deliveries.len());
        // (message index, reason code, detail)
        let mut dead: Vec<(usize, &'static str, String)> = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            match envelope::decode(&delivery.message.payload) {
                Ok(valid) => {
                    rows.push(ProcessedEnvelopeRow::new(valid, delivery.row_sequence));
                    owners.push(index);
                }
                Err(invalid) => {
                    tracing::warn!(
                        stream_sequence = delivery.stream_sequence,
                        subject = %delivery.message.subject,
                        reason = invalid.reason.as_str(),
                        detail = %invalid.detail,
                        "invalid envelope; dead-lettering it"
                    );
                    dead.push((index, invalid.reason.as_str(), invalid.detail.to_string()));
                }
            }
        }

        let mut decisions: Vec<Option<Settle>> = vec![None; deliveries.len()];
        let outcomes = {
            // Decoding above ran without a slot, overlapping the inserts before it.
            let _slot = self.insert_slots.acquire().await;
            self.store_holding(&rows, shutdown).await
        };
        let committed = outcomes
            .iter()
            .filter(|o| matches!(o, RowOutcome::Committed))
            .count();
        let batch_outcome = match (committed, rows.len()) {
            (_, 0) => BatchOutcome::NoRows,
            (c, n) if c == n => BatchOutcome::Committed,
            (0, _) => BatchOutcome::Failed,
            _ => BatchOutcome::Partial,
        };

        for (row, outcome) in outcomes.into_iter().enumerate() {
            let index = owners[row];
            let delivery = &deliveries[index];
            match outcome {
                RowOutcome::Committed => decisions[index] = Some(Settle::Ack),
                RowOutcome::Rejected(error) => {
                    tracing::warn!(
                        stream_sequence = delivery.stream_sequence,
                        error = %error,
                        "ClickHouse rejected this row on its own; dead-lettering it"
                    );
                    dead.push((index, REASON_REJECTED_BY_CLICKHOUSE, error.to_string()));
                }
                // Only reached when shutdown ended the hold, or for rows the
                // bisection did not try: on the last delivery, a NAK would leave the
                // message undelivered for good, so it is dead-lettered instead.
                RowOutcome::Failed(error) | RowOutcome::Untried(error)
                    if is_last_delivery(delivery.delivered, self.config.max_deliver) =>
                {
                    tracing::warn!(
                        stream_sequence = delivery.stream_sequence,
                        delivered = delivery.delivered,
                        error = %error,
                        "last delivery allowed by MaxDeliver and the row is not stored; dead-lettering it"
                    );
                    dead.push((index, REASON_MAX_DELIVER_EXCEEDED, error.to_string()));
                }
                RowOutcome::Failed(error) => {
                    // Shutdown ended the hold: the messages are fine, let them come
                    // back once the outage is over.
                    let reason = match error.class() {
                        ErrorClass::Destination | ErrorClass::Data => {
                            NakReason::PermanentDestination
                        }
                        ErrorClass::Retryable => NakReason::Retryable,
                    };
                    decisions[index] = Some(Settle::Nak(self.backoff(delivery.delivered), reason));
                }
                RowOutcome::Untried(_) => {
                    decisions[index] = Some(Settle::Nak(
                        self.backoff(delivery.delivered),
                        NakReason::Retryable,
                    ));
                }
            }
        }

        if !dead.is_empty() {
            let results = self.dead_letter_holding(deliveries, &dead).await;
            for ((index, reason, _), result) in dead.iter().zip(results) {
                let delivery = &deliveries[*index];
                decisions[*index] = Some(match result {
                    Ok(()) => {
                        self.metrics.dead_lettered(reason);
                        Settle::Term
                    }
                    Err(error) => {
                        tracing::error!(
                            stream_sequence = delivery.stream_sequence,
                            reason,
                            error = %error,
                            "dead-letter publish failed; NAKing the message so it comes back"
                        );
                        Settle::Nak(
                            self.backoff(delivery.delivered),
                            NakReason::DeadLetterFailed,
                        )
                    }
                });
            }
        }

        // Every message got a decision above; the fallback is a defensive NAK rather
        // than a silent drop should that ever change.
        let decisions = decisions
            .into_iter()
            .zip(deliveries)
            .map(|(decision, delivery)| {
                decision.unwrap_or_else(|| {
                    Settle::Nak(self.backoff(delivery.delivered), NakReason::Retryable)
                })
            })
            .collect();
        (decisions, batch_outcome)
    }

    /// Inserts the rows with one INSERT; on a data error, bisects to find the rows
    /// that ClickHouse rejects on their own (see the module docs).
    async fn store_rows(&self, rows: &[ProcessedEnvelopeRow]) -> Vec<RowOutcome> {
        let inserts = std::cell::Cell::new(0usize);
        let outcomes = insert_bisecting(rows, MAX_INSERTS_PER_BATCH, |chunk| {
            inserts.set(inserts.get() + 1);
            async move {
                let started = Instant::now();
                let result = self.store.insert_batch(chunk).await;
                let label = match &result {
                    Ok(()) => InsertResult::Ok,
                    Err(error) => InsertResult::from(error.class()),
                };
                self.metrics
                    .insert_finished(chunk.len(), started.elapsed(), label);
                result
            }
        })
        .await;
        if inserts.get() > 1 {
            let rejected = outcomes
                .iter()
                .filter(|o| matches!(o, RowOutcome::Rejected(_)))
                .count();
            tracing::warn!(
                rows = rows.len(),
                inserts = inserts.get(),
                rejected,
                "ClickHouse refused the batch's INSERT; bisected it to single out the rejected rows"
            );
        }
        outcomes
    }

    /// Sends every decision. See "Acknowledgement strategy" in the module docs.
    async fn settle(&self, deliveries: &[Delivery], decisions: &[Settle]) {
        let last_ack = decisions.iter().rposition(|d| *d == Settle::Ack);
        let mut acked = 0u64;
        for (index, (delivery, decision)) in deliveries.iter().zip(decisions).enumerate() {
            if Some(index) == last_ack {
                continue;
            }
            let kind = match *decision {
                Settle::Ack => AckKind::Ack,
                Settle::Term => AckKind::Term,
                Settle::Nak(delay, reason) => {
                    self.metrics.naked(reason);
                    AckKind::Nak(Some(delay))
                }
                Settle::Leave => continue,
            };
            match delivery.message.ack_with(kind).await {
                Ok(()) if *decision == Settle::Ack => acked += 1,
                Ok(()) => {}
                Err(error) => {
                    self.metrics.ack_failed(1);
                    tracing::warn!(
                        stream_sequence = delivery.stream_sequence,
                        ?decision,
                        %error,
                        "could not send the acknowledgement; the message will be redelivered"
                    );
                }
            }
        }
        if let Some(index) = last_ack {
            match deliveries[index].message.double_ack().await {
                Ok(()) => acked += 1,
                Err(error) => {
                    // Unconfirmed, not necessarily lost: count the whole batch's acks.
                    self.metrics.ack_failed(acked + 1);
                    tracing::warn!(
                        %error,
                        acks = acked + 1,
                        "the server did not confirm the batch's acks; its messages may be redelivered and stored twice"
                    );
                }
            }
        } else if let Err(error) = self.js.client().flush().await {
            tracing::warn!(%error, "flushing NAKs/TERMs failed; the server redelivers after AckWait");
        }
        self.metrics.acked(acked);
    }

    /// Runs `work`, sending progress for every message of the batch every AckWait/3
    /// so that the server does not redeliver them while the batch is being stored.
    async fn with_progress<F: Future>(&self, deliveries: &[Delivery], work: F) -> F::Output {
        let period = (self.config.ack_wait / 3).max(Duration::from_millis(100));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = ticker.tick() => {
                    tracing::debug!(messages = deliveries.len(), "batch still in progress; extending ack deadlines");
                    for delivery in deliveries {
                        if let Err(error) = delivery.message.ack_with(AckKind::Progress).await {
                            tracing::debug!(%error, "sending progress failed");
                        }
                    }
                }
            }
        }
    }

    fn backoff(&self, delivered: i64) -> Duration {
        nak_delay(
            delivered,
            self.config.nak_backoff_base,
            self.config.nak_backoff_max,
            fastrand::f64(),
        )
    }
}
