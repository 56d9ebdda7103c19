//! Demo producer, off by default (`demo_interval` unset).
//!
//! Publishes one plausible sensor reading every interval to the stream, on a subject
//! the consumer's filter matches, so that a fresh deployment shows data flowing end
//! to end. The seed's all-in-one binary did the same.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{Struct, Timestamp, Value};
use tokio_util::sync::CancellationToken;

use crate::envelope::ProcessedEnvelope;

/// Devices the demo cycles through.
const DEVICES: usize = 5;

/// A concrete subject matched by `filter`: each `*` token and a trailing `>` become
/// `demo` (`processed_envelopes.>` → `processed_envelopes.demo`).
fn demo_subject(filter: &str) -> String {
    filter
        .split('.')
        .map(|token| match token {
            "*" | ">" => "demo",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Publishes until `shutdown` is cancelled. Failures are logged, never fatal: the
/// demo must not take the writer down.
pub async fn run(
    js: jetstream::Context,
    filter_subject: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let subject = demo_subject(&filter_subject);
    tracing::info!(%subject, ?interval, "demo producer started");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let envelope = sample_envelope(sequence, SystemTime::now());
        sequence += 1;
        let payload = envelope.encode_to_vec();
        let published = async {
            js.publish(subject.clone(), payload.into()).await?.await?;
            Ok::<(), async_nats::Error>(())
        };
        // The publish ack wait is bounded by the JetStream context's timeout.
        match published.await {
            Ok(()) => tracing::debug!(
                end_device_id = %envelope.end_device_id,
                "demo envelope published"
            ),
            Err(error) => tracing::warn!(%error, "demo publish failed"),
        }
    }
    tracing::info!("demo producer stopped");
}

/// A reading from one of a few fake devices: temperature, humidity, battery,
/// firmware, location. Values vary smoothly with `sequence`.
fn sample_envelope(sequence: u64, now: SystemTime) -> ProcessedEnvelope {
    let device = sequence % DEVICES as u64;
    let phase = sequence as f64 / 10.0;
    let processed_at = timestamp(now);
    // Sensors report a little before the pipeline processes the reading.
    let occurred_at = timestamp(now.checked_sub(Duration::from_millis(250)).unwrap_or(now));
    let data = Struct {
        fields: [
            (
                "temperature_c",
                number(20.0 + 5.0 * phase.sin() + device as f64),
            ),
            ("humidity_pct", number(45.0 + 10.0 * phase.cos())),
            ("battery_v", number(3.7 - (sequence % 100) as f64 * 0.001)),
            ("firmware", string("1.4.2")),
            (
                "location",
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [
                            ("lat", number(52.37 + device as f64 * 0.01)),
                            ("lon", number(4.89 + device as f64 * 0.01)),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    })),
                },
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    ProcessedEnvelope {
        end_device_id: format!("demo-device-{device}"),
        occurred_at: Some(occurred_at),
        data: Some(data),
        processed_at: Some(processed_at),
        organization_id: "demo-org".to_owned(),
    }
}

fn number(value: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(value)),
    }
}

fn string(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

fn timestamp(at: SystemTime) -> Timestamp {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_subject_matches_the_filter() {
        assert_eq!(
            demo_subject("processed_envelopes.>"),
            "processed_envelopes.demo"
        );
        assert_eq!(demo_subject("a.*.b"), "a.demo.b");
        assert_eq!(demo_subject("a.*.>"), "a.demo.demo");
        assert_eq!(demo_subject("plain.subject"), "plain.subject");
    }

    #[test]
    fn sample_envelopes_pass_validation() {
        let now = SystemTime::now();
        for sequence in 0..20 {
            let bytes = sample_envelope(sequence, now).encode_to_vec();
            if let Err(invalid) = crate::envelope::decode(&bytes) {
                panic!(
                    "demo envelope {sequence} is invalid: {}",
                    invalid.reason.as_str()
                );
            }
        }
    }
}
