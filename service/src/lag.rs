//! The durable consumer's backlog, read from JetStream every few seconds into the
//! `consumer_pending` and `consumer_ack_pending` gauges.
//!
//! The consumer's own counters are the truth an operator alerts on: they cover every
//! replica on the durable consumer and messages no writer has fetched yet, which the
//! writer's own counters cannot see. A read that fails (NATS away, the consumer being
//! recreated) leaves the gauges as they were and lets `consumer_info_age_seconds`
//! grow; nothing else waits on this task.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the consumer info is read: often enough for an alert's `rate()` over a
/// minute, cheap for the server (one small request per writer).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Reads the consumer info every `every` until `shutdown`.
pub async fn watch(
    consumer: PullConsumer,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match consumer.get_info().await {
            Ok(info) => metrics.consumer_lag(info.num_pending, info.num_ack_pending as u64),
            Err(error) => {
                tracing::debug!(%error, "reading the consumer info failed; the lag gauges keep their last values")
            }
        }
    }
}
