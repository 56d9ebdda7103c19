//! Deterministic sample envelopes of three sizes, shared by the micro-benchmarks
//! (`benches/hot_path.rs`) and the end-to-end bench (`cargo xtask bench`), so that
//! both measure the same shapes and a bench run can rebuild exactly the rows it
//! published (the insert ceiling) from the message index alone.
//!
//! | payload | leaf fields | shape |
//! |---|---|---|
//! | [`Payload::Small`] | 5 | flat |
//! | [`Payload::Medium`] | 30 | 18 top-level, two nested objects (8 leaves), a list of 4 numbers |
//! | [`Payload::Large`] | 200 | 160 top-level, 4 nested objects of 10 |
//!
//! Values vary with the index (so that rows do not compress to nothing) but the
//! shape does not; every envelope passes validation.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};

use crate::envelope::ProcessedEnvelope;

/// 2026-11-01T00:00:00Z: occurred_at of envelope 0. Envelope `i` occurred `i / 100`
/// seconds later, so a million envelopes span under three hours of one month (one
/// partition of the table).
const EPOCH_SECONDS: i64 = 1_793_491_200;

/// Organizations and devices the envelopes are spread over.
const ORGANIZATIONS: u64 = 10;
pub const DEVICES: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Small,
    Medium,
    Large,
}

impl Payload {
    pub const ALL: [Payload; 3] = [Payload::Small, Payload::Medium, Payload::Large];

    pub fn name(self) -> &'static str {
        match self {
            Payload::Small => "small",
            Payload::Medium => "medium",
            Payload::Large => "large",
        }
    }

    /// The payload of envelope `index`.
    pub fn data(self, index: u64) -> Struct {
        match self {
            Payload::Small => small(index),
            Payload::Medium => medium(index),
            Payload::Large => large(index),
        }
    }
}

/// Envelope `index` with the given payload size.
pub fn envelope(payload: Payload, index: u64) -> ProcessedEnvelope {
    let occurred = EPOCH_SECONDS + i64::try_from(index / 100).unwrap_or(i64::MAX / 2);
    ProcessedEnvelope {
        end_device_id: format!("dev-{:06}", index % DEVICES),
        occurred_at: Some(Timestamp {
            seconds: occurred,
            nanos: i32::try_from((index % 100) * 10_000_000).unwrap_or(0),
        }),
        data: Some(payload.data(index)),
        processed_at: Some(Timestamp {
            seconds: occurred + 1,
            nanos: 0,
        }),
        organization_id: format!("org-{}", index % ORGANIZATIONS),
    }
}

fn number(x: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

fn string(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(b)),
    }
}

fn object(fields: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: fields.into_iter().collect(),
        })),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

/// A sensor reading's worth of scalars: numbers (integral and not), strings, booleans.
fn scalar(field: u64, index: u64) -> Value {
    let varied = (field + index) as f64;
    match field % 4 {
        0 => number(varied * 1.37),
        1 => string(format!("value-{}", (field + index) % 1000)),
        2 => number(varied),
        _ => boolean((field + index) % 8 == 3),
    }
}

fn small(index: u64) -> Struct {
    let wobble = (index % 100) as f64 / 10.0;
    Struct {
        fields: [
            ("temperature".to_owned(), number(21.5 + wobble)),
            ("humidity".to_owned(), number(48.0 - wobble)),
            ("battery".to_owned(), number(3.61)),
            ("status".to_owned(), string("ok".to_owned())),
            ("door_open".to_owned(), boolean(index.is_multiple_of(7))),
        ]
        .into_iter()
        .collect(),
    }
}

fn medium(index: u64) -> Struct {
    let wobble = (index % 1000) as f64 / 1000.0;
    let mut fields: BTreeMap<String, Value> = (0..18)
        .map(|field| (format!("field_{field}"), scalar(field, index)))
        .collect();
    fields.insert(
        "location".to_owned(),
        object([
            ("lat".to_owned(), number(52.520_008 + wobble)),
            ("lon".to_owned(), number(13.404_954 - wobble)),
            ("alt".to_owned(), number(34.0)),
            ("source".to_owned(), string("gps".to_owned())),
        ]),
    );
    fields.insert(
        "radio".to_owned(),
        object([
            ("rssi".to_owned(), number(-97.0 + (index % 20) as f64)),
            ("snr".to_owned(), number(7.25)),
            (
                "gateway".to_owned(),
                object([
                    ("id".to_owned(), string(format!("gw-{:04}", index % 50))),
                    ("channel".to_owned(), number((index % 8) as f64)),
                ]),
            ),
        ]),
    );
    fields.insert(
        "samples".to_owned(),
        list(vec![
            number(1.5 + wobble),
            number(2.5),
            number(3.0),
            number(-0.5),
        ]),
    );
    Struct { fields }
}

fn large(index: u64) -> Struct {
    let mut fields: BTreeMap<String, Value> = (0..160)
        .map(|field| (format!("measurement_{field:03}"), scalar(field, index)))
        .collect();
    for group in 0..4 {
        fields.insert(
            format!("group_{group}"),
            object((0..10).map(|field| (format!("m{field}"), scalar(group * 10 + field, index)))),
        );
    }
    Struct { fields }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn leaves(value: &Value) -> usize {
        match &value.kind {
            Some(Kind::StructValue(s)) => s.fields.values().map(leaves).sum(),
            Some(Kind::ListValue(l)) => l.values.iter().map(leaves).sum(),
            _ => 1,
        }
    }

    #[test]
    fn payloads_have_their_documented_number_of_leaves() {
        for (payload, expected) in [
            (Payload::Small, 5),
            (Payload::Medium, 30),
            (Payload::Large, 200),
        ] {
            let count: usize = payload.data(7).fields.values().map(leaves).sum();
            assert_eq!(count, expected, "{}", payload.name());
        }
    }

    #[test]
    fn every_sample_is_valid_and_deterministic() {
        for payload in Payload::ALL {
            for index in [0, 1, 99, 100, 12_345, 999_999, 1_999_999] {
                let bytes = envelope(payload, index).encode_to_vec();
                assert_eq!(bytes, envelope(payload, index).encode_to_vec());
                if let Err(invalid) = crate::envelope::decode(&bytes) {
                    panic!(
                        "{} envelope {index} is invalid: {}",
                        payload.name(),
                        invalid.reason.as_str()
                    );
                }
            }
        }
    }

    #[test]
    fn a_million_envelopes_stay_in_one_month() {
        let last = envelope(Payload::Small, 999_999)
            .occurred_at
            .unwrap()
            .seconds;
        let month_end = EPOCH_SECONDS + 29 * 86_400;
        assert!(last < month_end, "{last}");
    }
}
