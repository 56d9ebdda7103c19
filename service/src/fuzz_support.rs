//! The invariants of the decode path, shared by the fuzz target
//! (`fuzz/fuzz_targets/decode_envelope.rs`) and the regression test
//! (`service/tests/fuzz_regressions.rs`), so a crash the fuzzer finds fails the same
//! check in `cargo test`. Not part of the writer's API.

use prost::Message as _;

use crate::envelope::{self, DATETIME_MAX_SECS, DATETIME_MIN_SECS, Invalid, InvalidReason};
use crate::envelope::{ProcessedEnvelope, ValidEnvelope};
use crate::payload;
use crate::row::ProcessedEnvelopeRow;

/// Runs `bytes` through the path a NATS message takes (decode, validate, Struct → JSON,
/// row) and panics if any invariant breaks:
///
/// 1. [`envelope::decode`] does not panic, whatever the bytes.
/// 2. It agrees with the reference path, prost then [`envelope::validate`]: the same
///    [`ValidEnvelope`], or the same [`Invalid`] (reason and detail), and a
///    `decode_error` exactly when prost refuses the bytes. This is the equivalence that
///    `envelope::wire` promises for its fast path.
/// 3. A valid envelope has non-empty ids and whole-second timestamps within a
///    ClickHouse `DateTime` (seconds 0 to 2^32 − 1).
/// 4. Its `data_json()` parses with serde_json as a JSON object,
///    [`payload::json_str_to_struct`] accepts it, and writing that `Struct` again gives
///    the same text.
/// 5. The row made from it holds the same values and serializes (the `DateTime` adapter
///    refuses out-of-range times, which would fail a whole insert).
///
/// Returns the decode result, for callers that also check which inputs are valid.
pub fn check_decode_invariants(bytes: &[u8]) -> Result<ValidEnvelope, Invalid> {
    let decoded = envelope::decode(bytes);

    match ProcessedEnvelope::decode(bytes) {
        Ok(message) => assert_eq!(
            decoded,
            envelope::validate(message),
            "decode disagrees with prost + validate"
        ),
        Err(prost_error) => match &decoded {
            Ok(valid) => panic!("decode accepted bytes prost refuses ({prost_error}): {valid:?}"),
            Err(invalid) => assert_eq!(
                invalid.reason,
                InvalidReason::DecodeError,
                "prost refuses the bytes ({prost_error}), but decode reports {invalid:?}"
            ),
        },
    }

    match &decoded {
        Ok(valid) => check_valid(valid),
        Err(invalid) => assert!(!invalid.detail.is_empty(), "no detail in {invalid:?}"),
    }
    decoded
}

fn check_valid(valid: &ValidEnvelope) {
    assert!(!valid.organization_id().is_empty(), "{valid:?}");
    assert!(!valid.end_device_id().is_empty(), "{valid:?}");
    for (field, time) in [
        ("occurred_at", valid.occurred_at()),
        ("processed_at", valid.processed_at()),
    ] {
        assert!(
            (DATETIME_MIN_SECS..=DATETIME_MAX_SECS).contains(&time.timestamp()),
            "{field} {time} is outside a ClickHouse DateTime: {valid:?}"
        );
        assert_eq!(
            time.timestamp_subsec_nanos(),
            0,
            "{field} {time} is not whole seconds"
        );
    }

    let json = valid.data_json();
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(other) => panic!("data_json is not a JSON object: {other} (from {json:?})"),
        Err(e) => panic!("data_json is not JSON ({e}): {json:?}"),
    }
    let data = payload::json_str_to_struct(json)
        .unwrap_or_else(|e| panic!("json_str_to_struct refuses data_json ({e}): {json:?}"));
    let rewritten = payload::struct_to_json(&data)
        .unwrap_or_else(|e| panic!("data_json does not convert back ({e}): {json:?}"));
    assert_eq!(rewritten, json, "data_json changes on a second round");
    let _ = payload::expected_after_clickhouse(&data);

    let row = ProcessedEnvelopeRow::new(valid.clone(), u64::MAX);
    assert_eq!(row.organization_id, valid.organization_id());
    assert_eq!(row.end_device_id, valid.end_device_id());
    assert_eq!(row.occurred_at, valid.occurred_at());
    assert_eq!(row.processed_at, valid.processed_at());
    assert_eq!(row.data, json);
    if let Err(e) = serde_json::to_string(&row) {
        panic!("the row does not serialize ({e}): {row:?}");
    }
}
