//! What isolates one integration test from the others: its own stream, consumer,
//! dead-letter stream and database ([`Names`]), created fresh and removed after a
//! pass, so that the tests run in parallel against the shared endpoints; and the
//! writer started and stopped against them, waiting on conditions, never sleeps.

use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use ponix_writer::envelope::ProcessedEnvelope;
use prost::Message as _;
use testkit::Endpoints;

use crate::metrics::metric;
use crate::support::writer::WriterProcess;
use crate::{DRAIN_TIMEOUT, support};

/// The stream, consumer, dead-letter stream and database of one test. Fixed per test,
/// so a failed run leaves evidence behind and the next run starts by deleting it.
pub struct Names {
    pub database: String,
    pub stream: String,
    subject_prefix: String,
    pub consumer: String,
    pub dead_letter_stream: String,
    pub dead_letter_subject: String,
}

impl Names {
    pub fn new(tag: &str) -> Self {
        Self {
            database: format!("integration_{tag}"),
            stream: format!("INTEGRATION_{}", tag.to_uppercase()),
            subject_prefix: format!("integration.{tag}"),
            consumer: format!("integration-{tag}-writer"),
            dead_letter_stream: format!("INTEGRATION_{}_DEAD_LETTERS", tag.to_uppercase()),
            dead_letter_subject: format!("integration_dead_letter.{tag}"),
        }
    }

    pub fn subject(&self, token: &str) -> String {
        format!("{}.{token}", self.subject_prefix)
    }

    /// A valid envelope as a message: its subject is its device, with a safe token.
    pub fn message(&self, envelope: &ProcessedEnvelope) -> (String, Vec<u8>, HeaderMap) {
        let token: String = envelope
            .end_device_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        (
            self.subject(&token),
            envelope.encode_to_vec(),
            HeaderMap::new(),
        )
    }

    pub fn writer_vars(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("PONIX_CLICKHOUSE_DATABASE", self.database.clone()),
            ("PONIX_NATS_STREAM", self.stream.clone()),
            ("PONIX_NATS_SUBJECT", format!("{}.>", self.subject_prefix)),
            ("PONIX_NATS_CONSUMER", self.consumer.clone()),
            (
                "PONIX_NATS_DEAD_LETTER_STREAM",
                self.dead_letter_stream.clone(),
            ),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT",
                self.dead_letter_subject.clone(),
            ),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".into()),
        ];
        vars.extend(extra.iter().cloned());
        vars
    }

    /// Deletes what an earlier run left and creates an empty database on the shared
    /// ClickHouse.
    pub async fn setup(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let js = self.setup_streams(endpoints).await?;
        support::fresh_database(endpoints, &self.database).await?;
        Ok(js)
    }

    pub async fn setup_streams(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let nats = async_nats::connect(&endpoints.nats_url)
            .await
            .context("connecting to NATS")?;
        let js = jetstream::new(nats);
        self.delete_streams(&js).await?;
        Ok(js)
    }

    pub async fn delete_streams(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        support::delete_streams(js, &[&self.stream, &self.dead_letter_stream]).await
    }

    /// [`Names::setup`], then the stream as the writer would create it, so that
    /// messages can be published before the writer starts.
    pub async fn setup_with_stream(
        &self,
        endpoints: &Endpoints,
    ) -> anyhow::Result<jetstream::Context> {
        let js = self.setup(endpoints).await?;
        self.create_stream(&js).await?;
        Ok(js)
    }

    /// Creates the stream as the writer would, so that messages can be published
    /// before the writer starts.
    pub async fn create_stream(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        js.create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating stream {}", self.stream))?;
        Ok(())
    }

    pub async fn consumer_info(
        &self,
        js: &jetstream::Context,
    ) -> anyhow::Result<jetstream::consumer::Info> {
        let mut consumer: PullConsumer = js
            .get_consumer_from_stream(&self.consumer, &self.stream)
            .await
            .with_context(|| format!("looking up consumer {}", self.consumer))?;
        Ok(consumer.info().await?.clone())
    }

    /// Starts the writer binary and waits until it is ready and its consumer exists:
    /// `/readyz` answers 200 once the migrations are done, just before the writer
    /// creates its streams and consumer.
    pub async fn start_writer(
        &self,
        js: &jetstream::Context,
        name: &str,
        endpoints: &Endpoints,
        vars: &[(&str, String)],
    ) -> anyhow::Result<WriterProcess> {
        let writer = support::writer::start(name, endpoints, vars).await?;
        support::wait_for(
            "the writer's consumer exists",
            Duration::from_secs(30),
            || async {
                let found: Result<PullConsumer, _> = js
                    .get_consumer_from_stream(&self.consumer, &self.stream)
                    .await;
                Ok(found.map(drop).map_err(|error| error.to_string()))
            },
        )
        .await
        .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(30)))?;
        Ok(writer)
    }

    pub async fn wait_drained(
        &self,
        js: &jetstream::Context,
        writer: &WriterProcess,
    ) -> anyhow::Result<()> {
        support::wait_until_drained(js, &self.stream, &self.consumer, DRAIN_TIMEOUT)
            .await
            .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(30)))?;
        // The server sees the last ack before the writer has counted it.
        support::wait_for(
            "the writer's metrics count every settled message",
            Duration::from_secs(10),
            || async {
                let in_flight = metric(&writer.metrics()?, "ponix_writer_messages_in_flight", &[]);
                Ok(if in_flight == 0.0 {
                    Ok(())
                } else {
                    Err(in_flight)
                })
            },
        )
        .await
    }

    pub async fn stop_writer(&self, mut writer: WriterProcess) -> anyhow::Result<()> {
        let log = writer.log().to_owned();
        let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
        ensure!(
            status.success(),
            "the writer exited with {status} after SIGTERM:\n{}",
            tail(&log)
        );
        Ok(())
    }

    /// After a passing test: nothing left behind on the shared endpoints.
    pub async fn cleanup(
        &self,
        js: &jetstream::Context,
        endpoints: &Endpoints,
    ) -> anyhow::Result<()> {
        self.delete_streams(js).await?;
        support::clickhouse(endpoints, "default")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await?;
        Ok(())
    }
}

/// Runs a blocking infrastructure call (process start, stop, wait) off the async
/// worker threads.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub fn tail(log: &std::path::Path) -> String {
    testkit::localenv::process::log_tail(log, 40)
}

/// Publishes every message, pipelining the publishes (the acknowledgements are
/// awaited per chunk, within async-nats' limit on acks in flight), and returns each
/// message's stream sequence, in order.
pub async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<(String, Vec<u8>, HeaderMap)>,
) -> anyhow::Result<Vec<u64>> {
    let mut sequences = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, bytes, headers) in chunk {
            let ack = js
                .publish_with_headers(subject.clone(), headers.clone(), bytes.clone().into())
                .await
                .with_context(|| format!("publishing to {subject}"))?;
            acks.push(ack.into_future());
        }
        for ack in futures::future::try_join_all(acks)
            .await
            .context("awaiting publish acks")?
        {
            sequences.push(ack.sequence);
        }
    }
    Ok(sequences)
}
