//! The messages the integration tests publish: simple valid envelopes, envelopes
//! drawn with a fixed seed from the shared strategies (every run sends the same
//! ones, so a failure can be replayed), and one message for every reason a message
//! is invalid.

use anyhow::{anyhow, ensure};
use ponix_writer::envelope::{self, DATETIME_MAX_SECS, ProcessedEnvelope};
use ponix_writer::payload;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use testkit::strategies;

/// Valid envelopes with unique device ids and simple payloads.
pub fn simple_envelopes(n: usize, tag: &str) -> Vec<ProcessedEnvelope> {
    (0..n)
        .map(|i| {
            let data = payload::json_str_to_struct(&format!(
                r#"{{"seq": {i}, "reading": {{"value": {}, "unit": "°C"}}, "ok": {}}}"#,
                i as f64 / 8.0,
                i % 2 == 0
            ))
            .expect("a JSON object");
            ProcessedEnvelope {
                organization_id: format!("org-{}", i % 7),
                end_device_id: format!("{tag}-{i:06}"),
                occurred_at: Some(Timestamp {
                    seconds: 1_700_000_000 + i as i64,
                    nanos: 500_000_000,
                }),
                processed_at: Some(Timestamp {
                    seconds: 1_700_000_060 + i as i64,
                    nanos: 0,
                }),
                data: Some(data),
            }
        })
        .collect()
}

/// `n` envelopes drawn with a fixed seed (every run sends the same ones): ids from the
/// shared strategies (unicode included) with a unique suffix, the key rows are matched
/// on; timestamps with sub-seconds, `processed_at` over the whole `DateTime` range;
/// payloads with the shared strategies' numbers (-0, subnormal, huge, integral beyond
/// 2^53) and strings (unicode, date-like, number-like), in nested objects and lists,
/// under keys that include dotted, empty, unicode and `%2E` ones.
///
/// Two things are bounded, as they are in real telemetry: `occurred_at`, the partition
/// key (by month), stays within one month, since ClickHouse refuses an INSERT spanning
/// more than 100 partitions (`max_partitions_per_insert_block`); and the keys come from
/// a fixed vocabulary. Fully random keys give a wide part thousands of JSON subcolumn
/// files, more than the chDB endpoint's open-files limit; chDB's streaming insert then
/// fails to write the part but reports the rows as written, and the endpoint answers
/// 200 with nothing stored (measured: 2,000 rows of `arb_struct` payloads).
pub fn generated_envelopes(n: usize, tag: &str) -> anyhow::Result<Vec<ProcessedEnvelope>> {
    const MONTH_START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z
    let strategy = (
        strategies::arb_id(),
        strategies::arb_id(),
        strategies::arb_timestamp_in_range(),
        strategies::arb_timestamp_in_range(),
        prop::option::weighted(0.95, bulk_payload()),
    );
    let mut runner = TestRunner::deterministic();
    let mut out = Vec::with_capacity(n);
    let mut rejected = 0usize;
    while out.len() < n {
        let (organization_id, device, occurred_at, processed_at, data) = strategy
            .new_tree(&mut runner)
            .map_err(|e| anyhow!("{e}"))?
            .current();
        let envelope = ProcessedEnvelope {
            organization_id,
            end_device_id: format!("{device}#{tag}-{:05}", out.len()),
            occurred_at: Some(Timestamp {
                seconds: MONTH_START + occurred_at.seconds % (28 * 86_400),
                nanos: occurred_at.nanos,
            }),
            processed_at: Some(processed_at),
            data,
        };
        // Every generated envelope should be valid; a few rejections would be a
        // writer bug worth a look, but this test is about storage.
        if envelope::decode(&envelope.encode_to_vec()).is_ok() {
            out.push(envelope);
        } else {
            rejected += 1;
            ensure!(
                rejected <= n / 100,
                "the writer rejects {rejected} generated envelopes; expected none"
            );
        }
    }
    Ok(out)
}

/// A payload for the bulk test: see [`generated_envelopes`].
fn bulk_payload() -> impl Strategy<Value = Struct> {
    const KEYS: &[&str] = &[
        "temperature",
        "humidity",
        "status",
        "readings",
        "meta",
        "a.b",
        "x.y.z",
        "",
        "é.ü",
        "k e y",
        "a%2Ec",
        "😀",
    ];
    const INNER_KEYS: &[&str] = &["value", "unit", "c.d", "", "n"];
    let scalar = prop_oneof![
        1 => Just(Kind::NullValue(0)),
        1 => any::<bool>().prop_map(Kind::BoolValue),
        3 => strategies::arb_finite_number().prop_map(Kind::NumberValue),
        3 => strategies::arb_string().prop_map(Kind::StringValue),
    ]
    .prop_map(|kind| Value { kind: Some(kind) });
    let object = |values: BoxedStrategy<Value>| {
        prop::collection::btree_map(
            prop::sample::select(INNER_KEYS).prop_map(str::to_owned),
            values,
            0..4,
        )
        .prop_map(|fields| Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        })
    };
    let list = prop::collection::vec(
        prop_oneof![4 => scalar.clone(), 1 => object(scalar.clone().boxed())],
        0..5,
    )
    .prop_map(|values| Value {
        kind: Some(Kind::ListValue(ListValue {
            values: without_ambiguous_nulls(values),
        })),
    });
    let member = prop_oneof![
        4 => scalar.clone(),
        2 => list.clone(),
        2 => object(prop_oneof![3 => scalar, 1 => list].boxed()),
    ];
    prop::collection::btree_map(
        prop::sample::select(KEYS).prop_map(str::to_owned),
        member,
        0..8,
    )
    .prop_map(|fields| Struct { fields })
}

/// The contract does not model a `null` in a list without a string, number or boolean
/// element (it may come back as `[]` or `{}`); such lists lose their nulls, as in the
/// shared strategies.
fn without_ambiguous_nulls(mut values: Vec<Value>) -> Vec<Value> {
    let scalar = |v: &Value| {
        matches!(
            v.kind,
            Some(Kind::NumberValue(_) | Kind::StringValue(_) | Kind::BoolValue(_))
        )
    };
    if !values.iter().any(scalar) {
        values.retain(|v| !matches!(v.kind, Some(Kind::NullValue(_)) | None));
    }
    values
}

/// One message for every reason a message is invalid: (name, expected reason, bytes).
pub fn invalid_messages() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let good = || ProcessedEnvelope {
        organization_id: "org-bad".into(),
        end_device_id: "device-bad".into(),
        occurred_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        processed_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        data: Some(payload::json_str_to_struct(r#"{"t": 1}"#).expect("a JSON object")),
    };
    let with = |change: &dyn Fn(&mut ProcessedEnvelope)| {
        let mut envelope = good();
        change(&mut envelope);
        envelope.encode_to_vec()
    };
    let data = |fields: Vec<(&str, f64)>| {
        Some(Struct {
            fields: fields
                .into_iter()
                .map(|(key, number)| {
                    (
                        key.to_owned(),
                        Value {
                            kind: Some(Kind::NumberValue(number)),
                        },
                    )
                })
                .collect(),
        })
    };
    let mut truncated = good().encode_to_vec();
    truncated.truncate(truncated.len() - 3);
    vec![
        // Field 1 with wire type 7, which does not exist.
        ("garbage", "decode_error", vec![0x0f, 0x01, 0x02]),
        ("truncated", "decode_error", truncated),
        (
            "no-org",
            "empty_organization_id",
            with(&|e| e.organization_id.clear()),
        ),
        (
            "no-device",
            "empty_end_device_id",
            with(&|e| e.end_device_id.clear()),
        ),
        (
            "no-occurred",
            "missing_occurred_at",
            with(&|e| e.occurred_at = None),
        ),
        (
            "no-processed",
            "missing_processed_at",
            with(&|e| e.processed_at = None),
        ),
        (
            "before-1970",
            "timestamp_out_of_range",
            with(&|e| {
                e.occurred_at = Some(Timestamp {
                    seconds: -1,
                    nanos: 0,
                })
            }),
        ),
        (
            "after-2106",
            "timestamp_out_of_range",
            with(&|e| {
                e.processed_at = Some(Timestamp {
                    seconds: DATETIME_MAX_SECS + 1,
                    nanos: 0,
                })
            }),
        ),
        (
            "bad-nanos",
            "timestamp_out_of_range",
            with(&|e| {
                e.occurred_at = Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: -1,
                })
            }),
        ),
        (
            "nan",
            "non_finite_number",
            with(&|e| e.data = data(vec![("t", f64::NAN)])),
        ),
        (
            "infinity",
            "non_finite_number",
            with(&|e| e.data = data(vec![("t", f64::NEG_INFINITY)])),
        ),
        (
            "collision",
            "json_key_collision",
            with(&|e| e.data = data(vec![("a.b", 1.0), ("a%2Eb", 2.0)])),
        ),
    ]
}
