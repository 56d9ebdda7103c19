//! The envelopes a drill publishes: ids 1..=total, each unique, some deliberately
//! invalid in a known way.

use std::collections::BTreeMap;
use std::sync::Arc;

use ponix_writer::envelope::{InvalidReason, ProcessedEnvelope};
use prost::Message as _;
use prost_types::{Struct, Timestamp, Value, value::Kind};

/// 2026-03-01T00:00:00Z: ids are seconds after it, so 200,000 envelopes stay
/// within one month (one partition).
const BASE_SECONDS: i64 = 1_772_323_200;

/// The ways a drill envelope is made invalid, each with the reason the writer must
/// give when it dead-letters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Undecodable,
    MissingOccurredAt,
    YearOutOfRange,
    EmptyOrganization,
    NonFiniteNumber,
}

impl Invalid {
    const ALL: [Invalid; 5] = [
        Invalid::Undecodable,
        Invalid::MissingOccurredAt,
        Invalid::YearOutOfRange,
        Invalid::EmptyOrganization,
        Invalid::NonFiniteNumber,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Undecodable => InvalidReason::DecodeError.as_str(),
            Invalid::MissingOccurredAt => InvalidReason::MissingOccurredAt.as_str(),
            Invalid::YearOutOfRange => InvalidReason::TimestampOutOfRange.as_str(),
            Invalid::EmptyOrganization => InvalidReason::EmptyOrganizationId.as_str(),
            Invalid::NonFiniteNumber => InvalidReason::NonFiniteNumber.as_str(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub drill: &'static str,
    pub total: u64,
    pub invalid: Arc<BTreeMap<u64, Invalid>>,
}

impl Plan {
    /// `total` valid envelopes.
    pub fn valid(drill: &'static str, total: u64) -> Plan {
        Plan {
            drill,
            total,
            invalid: Arc::default(),
        }
    }

    /// `total` envelopes of which every hundredth (ids ending in 50) is invalid,
    /// cycling through every kind of [`Invalid`].
    pub fn with_one_percent_invalid(drill: &'static str, total: u64) -> Plan {
        let invalid = (1..=total)
            .filter(|id| id % 100 == 50)
            .enumerate()
            .map(|(n, id)| (id, Invalid::ALL[n % Invalid::ALL.len()]))
            .collect();
        Plan {
            drill,
            total,
            invalid: Arc::new(invalid),
        }
    }

    pub fn is_valid(&self, id: u64) -> bool {
        (1..=self.total).contains(&id) && !self.invalid.contains_key(&id)
    }

    pub fn organization(&self, id: u64) -> String {
        format!("org-{}", id % 3)
    }

    /// The bytes published for envelope `id`.
    pub fn payload(&self, id: u64) -> Vec<u8> {
        let Some(kind) = self.invalid.get(&id) else {
            return self.envelope(id).encode_to_vec();
        };
        let mut envelope = self.envelope(id);
        match kind {
            Invalid::Undecodable => {
                // 0xff starts a field key whose varint never ends.
                let mut bytes = vec![0xff; 11];
                bytes.extend(format!("drill envelope {id}").into_bytes());
                return bytes;
            }
            Invalid::MissingOccurredAt => envelope.occurred_at = None,
            Invalid::YearOutOfRange => {
                // 2200-01-01: past what a DateTime holds (2106).
                envelope.occurred_at = Some(Timestamp {
                    seconds: 7_258_118_400,
                    nanos: 0,
                });
            }
            Invalid::EmptyOrganization => envelope.organization_id.clear(),
            Invalid::NonFiniteNumber => {
                if let Some(data) = envelope.data.as_mut() {
                    data.fields.insert("reading".into(), number(f64::NAN));
                }
            }
        }
        envelope.encode_to_vec()
    }

    fn envelope(&self, id: u64) -> ProcessedEnvelope {
        let seconds = BASE_SECONDS + id as i64;
        let mut fields = BTreeMap::new();
        fields.insert("drill".to_owned(), text(self.drill));
        fields.insert("id".to_owned(), number(id as f64));
        fields.insert(
            "temperature_c".to_owned(),
            number(15.0 + (id % 200) as f64 / 10.0),
        );
        fields.insert("battery_pct".to_owned(), number((id % 101) as f64));
        fields.insert(
            "tags".to_owned(),
            Value {
                kind: Some(Kind::ListValue(prost_types::ListValue {
                    values: vec![
                        text("drill"),
                        number((id % 7) as f64),
                        Value {
                            kind: Some(Kind::BoolValue(id.is_multiple_of(2))),
                        },
                    ],
                })),
            },
        );
        ProcessedEnvelope {
            end_device_id: format!("dev-{:02}", id % 25),
            occurred_at: Some(Timestamp { seconds, nanos: 0 }),
            data: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            processed_at: Some(Timestamp {
                seconds: seconds + 1,
                nanos: 500_000_000,
            }),
            organization_id: self.organization(id),
        }
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}
