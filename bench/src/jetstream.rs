//! The NATS side of the bench: publishing the backlog and paced traffic, the raw
//! consume-and-ack ceiling, and the consumer's backlog.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use ponix_writer::config::NatsConfig;
use ponix_writer::sample::{self, Payload};
use ponix_writer::store::Store;
use prost::Message as _;
use tokio::time::Instant;

use crate::measure::{PHASE_DEADLINE, Progress, Rate, thousands};

/// Publishes whose acknowledgements may be outstanding at once.
const PUBLISH_WINDOW: usize = 4_096;
/// The ceiling's durable consumer; deleted after use.
const CEILING_CONSUMER: &str = "ponix-bench-ceiling";

pub struct Nats {
    pub js: jetstream::Context,
    pub config: NatsConfig,
    /// A concrete subject the writer's filter matches.
    pub subject: String,
}

impl Nats {
    /// Connects and creates the stream, the dead-letter stream and the writer's
    /// consumer exactly as the writer would, so that the backlog is waiting for it.
    pub async fn connect(config: &NatsConfig, store: &Store) -> anyhow::Result<Nats> {
        let client = config
            .connect_options()?
            .name("ponix-bench")
            .connect(config.server_urls())
            .await
            .with_context(|| format!("connecting to NATS at {}", config.servers.join(",")))?;
        let js = jetstream::new(client);
        ponix_writer::streams::ensure(&js, config, store).await?;
        let nats = Nats {
            js,
            config: config.clone(),
            subject: concrete_subject(&config.subject),
        };
        let messages = nats.stream_messages().await?;
        if messages != 0 {
            bail!(
                "stream {} already holds {messages} messages: the bench needs a fresh environment (`cargo xtask down`, then `cargo xtask bench`)",
                config.stream
            );
        }
        Ok(nats)
    }

    async fn stream_messages(&self) -> anyhow::Result<u64> {
        let mut stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .with_context(|| format!("looking up stream {}", self.config.stream))?;
        Ok(stream.info().await?.state.messages)
    }

    /// Publishes envelopes `0..messages` as fast as JetStream acknowledges them.
    /// Envelope `i` lands at stream sequence `i + 1` (checked), which is what the
    /// ClickHouse ceiling writes into its rows.
    pub async fn publish_backlog(&self, payload: Payload, messages: u64) -> anyhow::Result<Rate> {
        let started = Instant::now();
        let mut progress = Progress::start();
        let mut acks: VecDeque<(u64, PublishAckFuture)> = VecDeque::with_capacity(PUBLISH_WINDOW);
        for index in 0..messages {
            if acks.len() == PUBLISH_WINDOW {
                let (oldest, ack) = acks.pop_front().expect("the window is full");
                expect_sequence(oldest, ack).await?;
            }
            let bytes = sample::envelope(payload, index).encode_to_vec();
            let ack = self
                .js
                .publish(self.subject.clone(), bytes.into())
                .await
                .with_context(|| format!("publishing envelope {index}"))?;
            acks.push_back((index, ack));
            if progress.due() {
                println!("  published {}", thousands(index));
            }
        }
        for (index, ack) in acks {
            expect_sequence(index, ack).await?;
        }
        Ok(Rate::new(messages, started.elapsed()))
    }

    /// Publishes envelopes `first..` at `rate` per second for `duration`, calling
    /// `sent` with each stream sequence and the instant its publish was handed to
    /// the client. Returns how many were published.
    pub async fn publish_paced(
        &self,
        payload: Payload,
        first: u64,
        rate: u64,
        duration: Duration,
        mut sent: impl FnMut(u64, Instant),
    ) -> anyhow::Result<u64> {
        let total = rate.saturating_mul(duration.as_secs());
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut acks: VecDeque<(Instant, PublishAckFuture)> = VecDeque::new();
        let mut published = 0u64;
        while published < total {
            ticker.tick().await;
            // Everything due by now on a fixed schedule, so that a late tick catches
            // up instead of lowering the rate.
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while published < due.min(total) {
                let bytes = sample::envelope(payload, first + published).encode_to_vec();
                let at = Instant::now();
                let ack = self
                    .js
                    .publish(self.subject.clone(), bytes.into())
                    .await
                    .context("publishing at a fixed rate")?;
                acks.push_back((at, ack));
                published += 1;
            }
            // Settled acknowledgements resolve at once; keep the queue short.
            while acks.len() > PUBLISH_WINDOW {
                let (at, ack) = acks.pop_front().expect("non-empty");
                sent(ack.await.context("publish acknowledgement")?.sequence, at);
            }
        }
        for (at, ack) in acks {
            sent(ack.await.context("publish acknowledgement")?.sequence, at);
        }
        Ok(published)
    }

    /// Fetches and acknowledges `messages` messages with a consumer of its own that
    /// inserts nothing: batch size, byte limit, batch wait, MaxAckPending and the ack
    /// strategy (plain acks, the last one a double ack) are the writer's.
    pub async fn consume_ceiling(&self, messages: u64) -> anyhow::Result<Rate> {
        let stream = self.js.get_stream(&self.config.stream).await?;
        let consumer: PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(CEILING_CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                max_ack_pending: self.config.max_ack_pending,
                filter_subject: self.config.subject.clone(),
                ..Default::default()
            })
            .await
            .context("creating the ceiling's consumer")?;
        let started = Instant::now();
        let mut progress = Progress::start();
        let mut acked = 0u64;
        while acked < messages {
            if started.elapsed() > PHASE_DEADLINE {
                bail!(
                    "the JetStream ceiling acked only {acked} of {messages} within {PHASE_DEADLINE:?}"
                );
            }
            let mut batch = consumer
                .batch()
                .max_messages(self.config.batch_size)
                .max_bytes(self.config.batch_max_bytes)
                .expires(self.config.batch_wait)
                .messages()
                .await
                .context("pulling a batch")?;
            let mut received = Vec::with_capacity(self.config.batch_size);
            while let Some(message) = batch.next().await {
                received.push(message.map_err(|e| anyhow::anyhow!("pull: {e}"))?);
            }
            if let Some((last, rest)) = received.split_last() {
                for message in rest {
                    message
                        .ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                }
                last.double_ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("double ack: {e}"))?;
            }
            acked += received.len() as u64;
            if progress.due() {
                println!("  acked {}", thousands(acked));
            }
        }
        let rate = Rate::new(acked, started.elapsed());
        stream
            .delete_consumer(CEILING_CONSUMER)
            .await
            .context("deleting the ceiling's consumer")?;
        Ok(rate)
    }

    /// (pending, ack pending) of the writer's consumer.
    pub async fn backlog(&self) -> anyhow::Result<(u64, u64)> {
        let mut consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(&self.config.consumer, &self.config.stream)
            .await
            .context("looking up the writer's consumer")?;
        let info = consumer.info().await.context("consumer info")?;
        Ok((info.num_pending, info.num_ack_pending as u64))
    }

    /// Messages in the dead-letter stream.
    pub async fn dead_letters(&self) -> anyhow::Result<u64> {
        let mut stream = self
            .js
            .get_stream(&self.config.dead_letter_stream)
            .await
            .context("looking up the dead-letter stream")?;
        Ok(stream.info().await?.state.messages)
    }
}

async fn expect_sequence(index: u64, ack: PublishAckFuture) -> anyhow::Result<()> {
    let ack = ack
        .await
        .with_context(|| format!("acknowledgement of envelope {index}"))?;
    if ack.sequence != index + 1 {
        bail!(
            "envelope {index} landed at stream sequence {}, not {}: was something else publishing to the stream?",
            ack.sequence,
            index + 1
        );
    }
    Ok(())
}

/// A subject the filter matches: every wildcard token becomes `bench`.
fn concrete_subject(filter: &str) -> String {
    filter
        .split('.')
        .map(|token| {
            if token == "*" || token == ">" {
                "bench"
            } else {
                token
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    #[test]
    fn wildcards_become_a_concrete_token() {
        assert_eq!(
            super::concrete_subject("processed_envelopes.>"),
            "processed_envelopes.bench"
        );
        assert_eq!(super::concrete_subject("a.*.b"), "a.bench.b");
    }
}
