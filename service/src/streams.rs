//! The JetStream objects the writer relies on: the stream, the dead-letter stream and
//! the durable pull consumer. Creation when missing, and the checks that an existing
//! one fits.

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream::{self, StorageType};

use crate::config::NatsConfig;

/// Creates what the writer needs on the server if it is missing: the stream, the
/// dead-letter stream (both file storage) and the durable pull consumer. The consumer
/// is created or updated, so AckWait, MaxDeliver, MaxAckPending and the filter
/// follow the configuration on every start.
pub async fn ensure(js: &jetstream::Context, config: &NatsConfig) -> anyhow::Result<PullConsumer> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: config.stream_subjects.clone(),
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("ensuring stream {}", config.stream))?;
    ensure_dead_letter_stream(js, config).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(config.consumer.clone()),
            description: Some("ponix-writer: ProcessedEnvelope to ClickHouse".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            filter_subject: config.subject.clone(),
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!(
                "creating or updating durable consumer {} on stream {} (filter {})",
                config.consumer, config.stream, config.subject
            )
        })?;
    Ok(consumer)
}

/// Creates the dead-letter stream if it is missing.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<()> {
    js.get_or_create_stream(stream::Config {
        name: config.dead_letter_stream.clone(),
        subjects: vec![config.dead_letter_subject.clone()],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| {
        format!(
            "ensuring dead-letter stream {} for subject {} (it must not overlap the subjects of another stream)",
            config.dead_letter_stream, config.dead_letter_subject
        )
    })?;
    Ok(())
}
