//! The `ProcessedEnvelope` message, and turning its bytes into a [`ValidEnvelope`] that
//! can be stored, or a reason why it cannot.
//!
//! Everything here is permanent: an envelope that is [`Invalid`] fails the same way on
//! every delivery, so it belongs in the dead-letter subject, never in a retry.

use chrono::{DateTime, SecondsFormat, Utc};
use prost::Message as _;
use prost_types::Timestamp;

use crate::payload::{self, PayloadError};

/// Wire-compatible with upstream `envelope/v1` `ProcessedEnvelope` (ponix-protobuf), which
/// producers already use. Defined here with prost's derive because upstream's generated
/// crate sits in a private registry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessedEnvelope {
    #[prost(string, tag = "1")]
    pub end_device_id: String,
    #[prost(message, optional, tag = "2")]
    pub occurred_at: Option<Timestamp>,
    #[prost(message, optional, tag = "3")]
    pub data: Option<prost_types::Struct>,
    #[prost(message, optional, tag = "4")]
    pub processed_at: Option<Timestamp>,
    #[prost(string, tag = "5")]
    pub organization_id: String,
}

/// The earliest second a ClickHouse `DateTime` holds: 1970-01-01 00:00:00 UTC.
pub const DATETIME_MIN_SECS: i64 = 0;
/// The last second a ClickHouse `DateTime` holds: 2106-02-07 06:28:15 UTC.
pub const DATETIME_MAX_SECS: i64 = u32::MAX as i64;

/// An envelope that passed validation, ready to become a row: the timestamps fit a
/// ClickHouse `DateTime` and the payload is already JSON text, so the hot path converts it
/// once.
///
/// Only [`decode`] and [`validate`] make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEnvelope {
    pub(crate) organization_id: String,
    pub(crate) end_device_id: String,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) processed_at: DateTime<Utc>,
    pub(crate) data: String,
}

impl ValidEnvelope {
    pub fn organization_id(&self) -> &str {
        &self.organization_id
    }

    pub fn end_device_id(&self) -> &str {
        &self.end_device_id
    }

    /// Whole seconds; see [`validate`] for how sub-seconds are dropped.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }

    /// Whole seconds; see [`validate`] for how sub-seconds are dropped.
    pub fn processed_at(&self) -> DateTime<Utc> {
        self.processed_at
    }

    /// The payload as JSON text (`{}` when the message has no `data`).
    pub fn data_json(&self) -> &str {
        &self.data
    }
}

/// Why an envelope cannot be stored. Permanent: redelivering it cannot help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{detail}")]
pub struct Invalid {
    pub reason: InvalidReason,
    /// A message for people, naming the field and the offending value.
    pub detail: String,
}

impl Invalid {
    fn new(reason: InvalidReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The rule an [`Invalid`] envelope broke, with a stable code for dead-letter headers and
/// metric labels. Every reason is permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// The bytes are not a `ProcessedEnvelope` (including strings that are not UTF-8).
    DecodeError,
    EmptyOrganizationId,
    EmptyEndDeviceId,
    MissingOccurredAt,
    MissingProcessedAt,
    /// Outside what a ClickHouse `DateTime` holds, or nanos outside 0..1e9.
    TimestampOutOfRange,
    /// A NaN or ±Infinity in the payload, which JSON cannot represent.
    NonFiniteNumber,
    /// Two payload keys ClickHouse would store as the same path; the insert would fail.
    JsonKeyCollision,
}

impl InvalidReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Self; 8] = [
        Self::DecodeError,
        Self::EmptyOrganizationId,
        Self::EmptyEndDeviceId,
        Self::MissingOccurredAt,
        Self::MissingProcessedAt,
        Self::TimestampOutOfRange,
        Self::NonFiniteNumber,
        Self::JsonKeyCollision,
    ];

    /// The stable code. Changing one breaks dead-letter consumers and dashboards.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DecodeError => "decode_error",
            Self::EmptyOrganizationId => "empty_organization_id",
            Self::EmptyEndDeviceId => "empty_end_device_id",
            Self::MissingOccurredAt => "missing_occurred_at",
            Self::MissingProcessedAt => "missing_processed_at",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::NonFiniteNumber => "non_finite_number",
            Self::JsonKeyCollision => "json_key_collision",
        }
    }
}

impl std::fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

mod wire;

/// Decodes a `ProcessedEnvelope` from NATS message bytes and [`validate`]s it.
///
/// Never panics, whatever the bytes. Valid envelopes in the usual encoding take a fast
/// path that writes the payload's JSON straight from the wire bytes; everything else
/// (errors included) goes through prost and [`validate`], with the same result (see
/// `wire`).
pub fn decode(bytes: &[u8]) -> Result<ValidEnvelope, Invalid> {
    match wire::decode_valid(bytes) {
        Some(valid) => Ok(valid),
        None => decode_with_prost(bytes),
    }
}

/// [`decode`] without the fast path: prost, then [`validate`].
fn decode_with_prost(bytes: &[u8]) -> Result<ValidEnvelope, Invalid> {
    let envelope = ProcessedEnvelope::decode(bytes).map_err(|e| {
        Invalid::new(
            InvalidReason::DecodeError,
            format!("not a ProcessedEnvelope: {e}"),
        )
    })?;
    validate(envelope)
}

/// Checks that an envelope can be stored, and converts it for the row.
///
/// Rules, checked in this order (the first broken one is reported):
///
/// 1. `organization_id` and `end_device_id` are not empty. An empty `organization_id`
///    would be accepted by ClickHouse, but it leads the table's sort key and every query
///    is per tenant: an unattributed row could never be found, so it goes to the dead
///    letters where someone can see it. An empty device id is refused for the same
///    reason.
/// 2. `occurred_at`, then `processed_at`, is present, has nanos in 0..=999_999_999, and
///    falls within a ClickHouse `DateTime`: 1970-01-01T00:00:00Z to
///    2106-02-07T06:28:15Z (seconds 0 to 4294967295). ClickHouse does not reject values
///    outside that range; it wraps or clamps them, silently storing another time.
/// 3. `data` has no NaN or ±Infinity and no keys ClickHouse would store as the same path
///    (see [`crate::payload`]). A missing `data` is stored as `{}`.
///
/// `DateTime` holds whole seconds, so sub-seconds are dropped, rounding towards negative
/// infinity (the floor, not towards zero). A protobuf `Timestamp` already counts its
/// non-negative nanos forward from `seconds`, so the floor is `seconds` itself, and an
/// instant within the last second (4294967295.999999999) is still in range.
pub fn validate(envelope: ProcessedEnvelope) -> Result<ValidEnvelope, Invalid> {
    let ProcessedEnvelope {
        end_device_id,
        occurred_at,
        data,
        processed_at,
        organization_id,
    } = envelope;

    if organization_id.is_empty() {
        return Err(Invalid::new(
            InvalidReason::EmptyOrganizationId,
            "organization_id is empty; every row must belong to an organization",
        ));
    }
    if end_device_id.is_empty() {
        return Err(Invalid::new(
            InvalidReason::EmptyEndDeviceId,
            "end_device_id is empty; every row must belong to a device",
        ));
    }
    let occurred_at = to_datetime("occurred_at", occurred_at, InvalidReason::MissingOccurredAt)?;
    let processed_at = to_datetime(
        "processed_at",
        processed_at,
        InvalidReason::MissingProcessedAt,
    )?;
    let data = match &data {
        Some(payload) => payload::struct_to_json(payload).map_err(payload_invalid)?,
        None => "{}".to_owned(),
    };

    Ok(ValidEnvelope {
        organization_id,
        end_device_id,
        occurred_at,
        processed_at,
        data,
    })
}

fn to_datetime(
    field: &str,
    timestamp: Option<Timestamp>,
    missing: InvalidReason,
) -> Result<DateTime<Utc>, Invalid> {
    let Some(Timestamp { seconds, nanos }) = timestamp else {
        return Err(Invalid::new(missing, format!("{field} is missing")));
    };
    let out_of_range = |detail: String| Invalid::new(InvalidReason::TimestampOutOfRange, detail);

    let Ok(sub_second @ 0..=999_999_999) = u32::try_from(nanos) else {
        return Err(out_of_range(format!(
            "{field} has nanos {nanos}; a Timestamp's nanos must be from 0 to 999999999"
        )));
    };
    if seconds < DATETIME_MIN_SECS {
        return Err(out_of_range(format!(
            "{field} {} is before the DateTime minimum {}",
            describe(seconds, sub_second),
            describe(DATETIME_MIN_SECS, 0),
        )));
    }
    if seconds > DATETIME_MAX_SECS {
        return Err(out_of_range(format!(
            "{field} {} is after the DateTime maximum {}",
            describe(seconds, sub_second),
            describe(DATETIME_MAX_SECS, 0),
        )));
    }
    // Always `Some` within the checked range; kept as an error rather than a panic.
    DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| out_of_range(format!("{field} has seconds {seconds}, not a valid time")))
}

/// RFC 3339 when chrono can represent the instant, else the raw seconds (years beyond
/// ±262143 do not fit chrono).
fn describe(seconds: i64, nanos: u32) -> String {
    DateTime::from_timestamp(seconds, nanos).map_or_else(
        || format!("{seconds} s after the Unix epoch"),
        |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

fn payload_invalid(error: PayloadError) -> Invalid {
    let reason = match &error {
        PayloadError::NonFinite { .. } => InvalidReason::NonFiniteNumber,
        PayloadError::KeyCollision { .. } => InvalidReason::JsonKeyCollision,
        // Not expected (see `PayloadError::Serializer`); the closest permanent reason.
        PayloadError::Serializer(_) => InvalidReason::DecodeError,
    };
    Invalid::new(reason, format!("data: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost_types::value::Kind;
    use prost_types::{Struct, Value};
    use testkit::strategies::{EnvelopeParts, arb_envelope_parts, arb_timestamp_any};

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn good() -> ProcessedEnvelope {
        ProcessedEnvelope {
            end_device_id: "dev-1".into(),
            occurred_at: ts(1_700_000_000, 0),
            data: Some(payload::json_str_to_struct(r#"{"t":21.5}"#).unwrap()),
            processed_at: ts(1_700_000_001, 0),
            organization_id: "org-1".into(),
        }
    }

    fn reason_of(envelope: ProcessedEnvelope) -> InvalidReason {
        decode(&envelope.encode_to_vec())
            .expect_err("should be invalid")
            .reason
    }

    fn with_time(set: impl FnOnce(&mut ProcessedEnvelope)) -> Result<ValidEnvelope, Invalid> {
        let mut envelope = good();
        set(&mut envelope);
        decode(&envelope.encode_to_vec())
    }

    /// The envelope generated parts describe; the wire tests use it too.
    pub(super) fn from_parts(parts: EnvelopeParts) -> ProcessedEnvelope {
        ProcessedEnvelope {
            end_device_id: parts.end_device_id,
            occurred_at: Some(parts.occurred_at),
            data: parts.data,
            processed_at: Some(parts.processed_at),
            organization_id: parts.organization_id,
        }
    }

    #[test]
    fn a_good_envelope_decodes() {
        let valid = decode(&good().encode_to_vec()).unwrap();
        assert_eq!(valid.organization_id(), "org-1");
        assert_eq!(valid.end_device_id(), "dev-1");
        assert_eq!(valid.occurred_at().timestamp(), 1_700_000_000);
        assert_eq!(valid.processed_at().timestamp(), 1_700_000_001);
        assert_eq!(valid.data_json(), r#"{"t":21.5}"#);
    }

    /// Field numbers are the upstream contract: a hand-encoded message pins them.
    #[test]
    fn the_wire_format_matches_upstream() {
        let bytes = [
            0x0a, 0x01, b'd', // 1: end_device_id "d"
            0x12, 0x02, 0x08, 0x01, // 2: occurred_at { seconds: 1 }
            0x1a, 0x00, // 3: data {}
            0x22, 0x02, 0x08, 0x02, // 4: processed_at { seconds: 2 }
            0x2a, 0x01, b'o', // 5: organization_id "o"
        ];
        let envelope = ProcessedEnvelope::decode(&bytes[..]).unwrap();
        assert_eq!(envelope.end_device_id, "d");
        assert_eq!(envelope.occurred_at, ts(1, 0));
        assert_eq!(envelope.data, Some(Struct::default()));
        assert_eq!(envelope.processed_at, ts(2, 0));
        assert_eq!(envelope.organization_id, "o");
        assert_eq!(envelope.encode_to_vec(), bytes);
    }

    #[test]
    fn undecodable_bytes_are_a_decode_error() {
        for bytes in [&[0xff_u8][..], &[0x0a, 0x05, b'x'], &[0x0a, 0x01, 0xff]] {
            let invalid = decode(bytes).unwrap_err();
            assert_eq!(invalid.reason, InvalidReason::DecodeError);
            assert!(invalid.to_string().starts_with("not a ProcessedEnvelope: "));
        }
    }

    #[test]
    fn empty_ids_are_invalid() {
        let mut envelope = good();
        envelope.organization_id.clear();
        assert_eq!(reason_of(envelope), InvalidReason::EmptyOrganizationId);
        let mut envelope = good();
        envelope.end_device_id.clear();
        assert_eq!(reason_of(envelope), InvalidReason::EmptyEndDeviceId);
        // An empty message fails on the first rule.
        assert_eq!(
            reason_of(ProcessedEnvelope::default()),
            InvalidReason::EmptyOrganizationId
        );
    }

    #[test]
    fn missing_timestamps_are_invalid() {
        let mut envelope = good();
        envelope.occurred_at = None;
        assert_eq!(reason_of(envelope), InvalidReason::MissingOccurredAt);
        let mut envelope = good();
        envelope.processed_at = None;
        let invalid = decode(&envelope.encode_to_vec()).unwrap_err();
        assert_eq!(invalid.reason, InvalidReason::MissingProcessedAt);
        assert_eq!(invalid.to_string(), "processed_at is missing");
    }

    #[test]
    fn both_datetime_bounds_are_inclusive() {
        for seconds in [0, DATETIME_MAX_SECS] {
            let valid = with_time(|e| {
                e.occurred_at = ts(seconds, 0);
                e.processed_at = ts(seconds, 999_999_999);
            })
            .unwrap();
            assert_eq!(valid.occurred_at().timestamp(), seconds);
            assert_eq!(valid.processed_at().timestamp(), seconds);
        }
        assert_eq!(
            DateTime::from_timestamp(DATETIME_MAX_SECS, 0).unwrap(),
            "2106-02-07T06:28:15Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn timestamps_just_outside_the_bounds_are_invalid() {
        let before = with_time(|e| e.occurred_at = ts(-1, 0)).unwrap_err();
        assert_eq!(before.reason, InvalidReason::TimestampOutOfRange);
        assert_eq!(
            before.to_string(),
            "occurred_at 1969-12-31T23:59:59Z is before the DateTime minimum 1970-01-01T00:00:00Z"
        );
        // Half a second before the epoch is before it too.
        let before = with_time(|e| e.occurred_at = ts(-1, 500_000_000)).unwrap_err();
        assert_eq!(
            before.to_string(),
            "occurred_at 1969-12-31T23:59:59.500Z is before the DateTime minimum 1970-01-01T00:00:00Z"
        );
        let after = with_time(|e| e.processed_at = ts(DATETIME_MAX_SECS + 1, 0)).unwrap_err();
        assert_eq!(after.reason, InvalidReason::TimestampOutOfRange);
        assert_eq!(
            after.to_string(),
            "processed_at 2106-02-07T06:28:16Z is after the DateTime maximum 2106-02-07T06:28:15Z"
        );
        let far = with_time(|e| e.occurred_at = ts(7_258_118_400, 0)).unwrap_err();
        assert_eq!(
            far.to_string(),
            "occurred_at 2200-01-01T00:00:00Z is after the DateTime maximum 2106-02-07T06:28:15Z"
        );
        let beyond_chrono = with_time(|e| e.occurred_at = ts(i64::MAX, 0)).unwrap_err();
        assert!(
            beyond_chrono
                .to_string()
                .starts_with("occurred_at 9223372036854775807 s after the Unix epoch is after")
        );
    }

    #[test]
    fn nanos_outside_a_second_are_invalid() {
        for nanos in [-1, 1_000_000_000, i32::MIN, i32::MAX] {
            let invalid = with_time(|e| e.occurred_at = ts(10, nanos)).unwrap_err();
            assert_eq!(invalid.reason, InvalidReason::TimestampOutOfRange);
            assert_eq!(
                invalid.to_string(),
                format!(
                    "occurred_at has nanos {nanos}; a Timestamp's nanos must be from 0 to 999999999"
                )
            );
        }
    }

    #[test]
    fn sub_seconds_are_dropped_towards_the_past() {
        let valid = with_time(|e| e.occurred_at = ts(1_700_000_000, 999_999_999)).unwrap();
        assert_eq!(valid.occurred_at().timestamp(), 1_700_000_000);
        assert_eq!(valid.occurred_at().timestamp_subsec_nanos(), 0);
    }

    #[test]
    fn a_missing_payload_is_an_empty_object() {
        let valid = with_time(|e| e.data = None).unwrap();
        assert_eq!(valid.data_json(), "{}");
    }

    #[test]
    fn a_non_finite_number_in_the_payload_is_invalid() {
        let mut data = Struct::default();
        data.fields.insert(
            "temp".into(),
            Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        );
        let invalid = with_time(|e| e.data = Some(data)).unwrap_err();
        assert_eq!(invalid.reason, InvalidReason::NonFiniteNumber);
        assert_eq!(
            invalid.to_string(),
            "data: $.temp is NaN, which JSON cannot represent"
        );
    }

    #[test]
    fn colliding_payload_keys_are_invalid() {
        let data = payload::json_str_to_struct(r#"{"a.b":1,"a%2Eb":2}"#).unwrap();
        let invalid = with_time(|e| e.data = Some(data)).unwrap_err();
        assert_eq!(invalid.reason, InvalidReason::JsonKeyCollision);
    }

    #[test]
    fn reason_codes_are_stable_and_distinct() {
        let codes: Vec<_> = InvalidReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            codes,
            [
                "decode_error",
                "empty_organization_id",
                "empty_end_device_id",
                "missing_occurred_at",
                "missing_processed_at",
                "timestamp_out_of_range",
                "non_finite_number",
                "json_key_collision",
            ]
        );
        assert_eq!(
            InvalidReason::NonFiniteNumber.to_string(),
            "non_finite_number"
        );
    }

    proptest! {
        #[test]
        fn valid_parts_always_decode(parts in arb_envelope_parts()) {
            let expected_data = match &parts.data {
                Some(s) => payload::struct_to_json(s).map_err(|e| TestCaseError::fail(e.to_string()))?,
                None => "{}".to_owned(),
            };
            let envelope = from_parts(parts.clone());
            let valid = decode(&envelope.encode_to_vec())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(valid.organization_id(), parts.organization_id.as_str());
            prop_assert_eq!(valid.end_device_id(), parts.end_device_id.as_str());
            prop_assert_eq!(valid.occurred_at().timestamp(), parts.occurred_at.seconds);
            prop_assert_eq!(valid.processed_at().timestamp(), parts.processed_at.seconds);
            prop_assert_eq!(valid.data_json(), expected_data.as_str());
        }

        #[test]
        fn any_timestamp_is_accepted_exactly_when_in_range(occurred_at in arb_timestamp_any()) {
            let in_range = (DATETIME_MIN_SECS..=DATETIME_MAX_SECS).contains(&occurred_at.seconds)
                && (0..1_000_000_000).contains(&occurred_at.nanos);
            let result = with_time(|e| e.occurred_at = Some(occurred_at));
            prop_assert_eq!(result.is_ok(), in_range);
            if let Err(invalid) = result {
                prop_assert_eq!(invalid.reason, InvalidReason::TimestampOutOfRange);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_valid_messages_never_panic(
            parts in arb_envelope_parts(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = from_parts(parts).encode_to_vec();
            if !bytes.is_empty() {
                for (at, xor) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= xor;
                }
            }
            let _ = decode(&bytes);
        }
    }

    /// `data` nested `objects` objects deep (`data` itself is the first), the innermost
    /// holding a number.
    fn nested_objects(objects: usize) -> ProcessedEnvelope {
        let mut inner = Kind::NumberValue(1.0);
        for _ in 1..objects {
            let fields = [("a".to_owned(), Value { kind: Some(inner) })].into();
            inner = Kind::StructValue(Struct { fields });
        }
        ProcessedEnvelope {
            data: Some(Struct {
                fields: [("a".to_owned(), Value { kind: Some(inner) })].into(),
            }),
            ..good()
        }
    }

    /// `data` holding a list nested `lists` lists deep around a number.
    fn nested_lists(lists: usize) -> ProcessedEnvelope {
        let mut inner = Kind::NumberValue(1.0);
        for _ in 0..lists {
            inner = Kind::ListValue(prost_types::ListValue {
                values: vec![Value { kind: Some(inner) }],
            });
        }
        ProcessedEnvelope {
            data: Some(Struct {
                fields: [("l".to_owned(), Value { kind: Some(inner) })].into(),
            }),
            ..good()
        }
    }

    /// The README's nesting limit ("Validation rules"): 33 levels of objects (`data`
    /// included) or `data` holding 48 levels of lists decode; one more is refused as
    /// `decode_error`, by both decode paths (the fast one declines, prost refuses).
    #[test]
    fn payload_nesting_is_limited_as_documented() {
        for (envelope, deepest) in [(nested_objects(33), "objects"), (nested_lists(48), "lists")] {
            let valid = decode(&envelope.encode_to_vec())
                .unwrap_or_else(|e| panic!("deepest {deepest} refused: {e:?}"));
            let json = payload::struct_to_json(envelope.data.as_ref().unwrap()).unwrap();
            assert_eq!(valid.data, json, "{deepest}");
        }
        for envelope in [nested_objects(34), nested_lists(49)] {
            let invalid = decode(&envelope.encode_to_vec()).unwrap_err();
            assert_eq!(invalid.reason, InvalidReason::DecodeError, "{invalid:?}");
            assert!(invalid.detail.contains("recursion limit"), "{invalid:?}");
        }
        // Mixed: 3 per object level, 2 per list level, 99 in all.
        let mut mixed = nested_lists(24);
        for _ in 0..8 {
            mixed = ProcessedEnvelope {
                data: Some(Struct {
                    fields: [(
                        "o".to_owned(),
                        Value {
                            kind: Some(Kind::StructValue(mixed.data.unwrap())),
                        },
                    )]
                    .into(),
                }),
                ..good()
            };
        }
        // data + 8 objects + the list's holder: 3 × 9 + 2 × 24 + the envelope = 76.
        assert!(decode(&mixed.encode_to_vec()).is_ok());
    }
}
