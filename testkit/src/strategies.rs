//! The workspace's proptest strategies, in one place so unit, integration and end-to-end
//! tests draw from the same distributions.
//!
//! Payloads lean towards the inputs that have broken JSON storage before: dotted and empty
//! keys, keys containing `%2E`, unicode, date-like and number-like strings, signed zero,
//! subnormal and huge numbers, integral floats beyond 2^53, nulls and empty containers.
//! Depth and width are bounded so a case stays fast.
//!
//! This crate must not depend on `ponix-writer` (the service has it as a dev-dependency),
//! so envelopes are offered as parts the service tests assemble.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};

/// The last second a ClickHouse `DateTime` holds: 2106-02-07 06:28:15 UTC.
pub const DATETIME_MAX_SECS: i64 = u32::MAX as i64;

const NANOS_PER_SEC: i32 = 1_000_000_000;

/// An object key. Includes keys that need escaping in ClickHouse paths (`a.b`, `.`),
/// `%2E`, which ClickHouse reads back as `.`, and the empty key.
pub fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_][a-z0-9_]{0,6}",
        2 => "[a-z]{1,3}(\\.[a-z]{0,3}){1,2}",
        2 => prop::sample::select(&[
            "", ".", "..", "a.", ".a", "a%2Eb", "%2E", "a%2eb", "%", "é.ü", "😀", "k e y",
            "\"", "\\", "a/b", "\u{0}", "null", "0",
        ][..])
        .prop_map(str::to_owned),
        1 => "\\PC{0,6}",
    ]
}

/// A string value, with a bias towards strings that a schema-inferring store might turn
/// into another type.
pub fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,12}",
        1 => prop::sample::select(&[
            "", "2020-01-01", "2020-01-01 00:00:00", "2020-01-01T00:00:00Z",
            "2020-01-01T00:00:00.5+02:00", "Jan 1 2020", "12:34:56", "123", "-0", "1e5",
            "0x1F", "true", "null", "nan", "inf", "[1]", "{\"a\":1}", "127.0.0.1",
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "\u{0}\n\t\"\\/", "😀",
        ][..])
        .prop_map(str::to_owned),
    ]
}

/// A finite f64, biased towards the values whose JSON form is easy to get wrong.
pub fn arb_finite_number() -> impl Strategy<Value = f64> {
    const TWO_53: f64 = 9_007_199_254_740_992.0;
    const SPECIAL: &[f64] = &[
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        0.1,
        1.0 / 3.0,
        1e20,
        1e21,
        1e-7,
        1e308,
        -1e308,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        -f64::from_bits(1),
        TWO_53,
        -TWO_53,
        TWO_53 + 2.0,
        -(TWO_53 + 2.0),
        TWO_53 * 2.0,
        9_223_372_036_854_775_808.0,
        18_446_744_073_709_551_616.0,
    ];
    prop_oneof![
        2 => prop::sample::select(SPECIAL),
        2 => any::<i32>().prop_map(f64::from),
        // Integral values beyond 2^53 as well as below it.
        1 => any::<i64>().prop_map(i64_as_f64),
        3 => prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
    ]
}

/// The nearest f64, as a generator of integral values (the rounding is the point).
#[allow(clippy::cast_precision_loss)]
fn i64_as_f64(i: i64) -> f64 {
    i as f64
}

/// NaN or ±Infinity: the numbers a `Struct` can hold and JSON cannot.
pub fn arb_non_finite_number() -> impl Strategy<Value = f64> {
    const NON_FINITE: &[f64] = &[f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    prop::sample::select(NON_FINITE)
}

/// A `Value` without non-finite numbers, nested up to four levels. Nulls are
/// `NullValue(0)`, never `kind: None`, so a JSON round trip gives back the same value.
pub fn arb_finite_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Kind::NullValue(0)),
        1 => any::<bool>().prop_map(Kind::BoolValue),
        3 => arb_finite_number().prop_map(Kind::NumberValue),
        3 => arb_string().prop_map(Kind::StringValue),
    ]
    .prop_map(|kind| Value { kind: Some(kind) });
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|values| Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: without_ambiguous_nulls(values),
                })),
            }),
            prop::collection::btree_map(arb_key(), inner, 0..6).prop_map(|fields| Value {
                kind: Some(Kind::StructValue(storable(fields))),
            }),
        ]
    })
}

/// A payload that a writer can store: finite numbers and no two keys of one object that
/// ClickHouse would store as the same path.
pub fn arb_struct() -> impl Strategy<Value = Struct> {
    prop::collection::btree_map(arb_key(), arb_finite_value(), 0..8).prop_map(storable)
}

/// One step of a path into a `Struct`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

/// A payload with exactly one NaN or ±Infinity, and the path to it.
pub fn arb_struct_with_non_finite() -> impl Strategy<Value = (Struct, Vec<PathStep>)> {
    (
        arb_struct(),
        arb_non_finite_number(),
        any::<Index>(),
        arb_key(),
        any::<Index>(),
    )
        .prop_map(|(mut payload, bad, container, key, position)| {
            let mut containers = Vec::new();
            collect_containers(&payload.fields, &mut Vec::new(), &mut containers);
            // The root object is always there.
            let mut path = containers.swap_remove(container.index(containers.len()));
            let bad = Value {
                kind: Some(Kind::NumberValue(bad)),
            };
            match container_at(&mut payload, &path) {
                Some(Container::Object(fields)) => {
                    // Replace the member that reads back as the same key, so the object
                    // gains no colliding key.
                    let key = fields
                        .keys()
                        .find(|k| stored_key(k) == stored_key(&key))
                        .cloned()
                        .unwrap_or(key);
                    fields.insert(key.clone(), bad);
                    path.push(PathStep::Key(key));
                }
                Some(Container::List(values)) => {
                    let i = position.index(values.len() + 1);
                    values.insert(i, bad);
                    path.push(PathStep::Index(i));
                }
                None => unreachable!("the path was collected from this payload"),
            }
            (payload, path)
        })
}

/// A timestamp a ClickHouse `DateTime` can hold (sub-seconds included; they are dropped).
pub fn arb_timestamp_in_range() -> impl Strategy<Value = Timestamp> {
    (
        prop_oneof![
            1 => Just(0),
            1 => Just(DATETIME_MAX_SECS),
            6 => 0..=DATETIME_MAX_SECS,
        ],
        prop_oneof![1 => Just(0), 1 => Just(NANOS_PER_SEC - 1), 2 => 0..NANOS_PER_SEC],
    )
        .prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

/// Any timestamp, mostly outside the `DateTime` range or with invalid nanos.
pub fn arb_timestamp_any() -> impl Strategy<Value = Timestamp> {
    (
        prop_oneof![
            Just(-1_i64),
            Just(DATETIME_MAX_SECS + 1),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>(),
            0..=DATETIME_MAX_SECS,
        ],
        prop_oneof![
            Just(-1),
            Just(NANOS_PER_SEC),
            any::<i32>(),
            0..NANOS_PER_SEC
        ],
    )
        .prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

/// A non-empty identifier, such as an organization or device id.
pub fn arb_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(org|dev)-[0-9a-f]{1,8}",
        1 => "\\PC{1,16}",
    ]
}

/// The fields of a valid `ProcessedEnvelope`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeParts {
    pub organization_id: String,
    pub end_device_id: String,
    pub occurred_at: Timestamp,
    pub processed_at: Timestamp,
    /// `None` is a message without the field, which the writer stores as `{}`.
    pub data: Option<Struct>,
}

/// Parts of an envelope the writer must accept.
pub fn arb_envelope_parts() -> impl Strategy<Value = EnvelopeParts> {
    (
        arb_id(),
        arb_id(),
        arb_timestamp_in_range(),
        arb_timestamp_in_range(),
        prop::option::weighted(0.9, arb_struct()),
    )
        .prop_map(
            |(organization_id, end_device_id, occurred_at, processed_at, data)| EnvelopeParts {
                organization_id,
                end_device_id,
                occurred_at,
                processed_at,
                data,
            },
        )
}

/// How ClickHouse reads a key back with `json_type_escape_dots_in_keys=1`. Mirrors the
/// service's model, which this crate cannot depend on.
fn stored_key(key: &str) -> String {
    key.replace("%2E", ".")
}

/// A `null` element of a list without strings, numbers or booleans may come back from
/// ClickHouse as `[]` or `{}`: its type is inferred from the neighbouring lists and
/// objects, or from the same path in other rows of the insert, and neither an `Array` nor
/// a `JSON` element can be null. The service's model does not reproduce that inference,
/// so payloads leave the shape out: such lists lose their nulls.
fn without_ambiguous_nulls(mut values: Vec<Value>) -> Vec<Value> {
    let is_scalar = |v: &Value| {
        matches!(
            v.kind,
            Some(Kind::NumberValue(_) | Kind::StringValue(_) | Kind::BoolValue(_))
        )
    };
    if !values.iter().any(is_scalar) {
        values.retain(|v| !matches!(v.kind, Some(Kind::NullValue(_)) | None));
    }
    values
}

/// Drops keys that would collide with an earlier key once stored.
fn storable(fields: BTreeMap<String, Value>) -> Struct {
    let mut seen = std::collections::HashSet::new();
    Struct {
        fields: fields
            .into_iter()
            .filter(|(key, _)| seen.insert(stored_key(key)))
            .collect(),
    }
}

enum Container<'a> {
    Object(&'a mut BTreeMap<String, Value>),
    List(&'a mut Vec<Value>),
}

/// Paths to every object and list in `fields`, the root (`[]`) included.
fn collect_containers(
    fields: &BTreeMap<String, Value>,
    here: &mut Vec<PathStep>,
    out: &mut Vec<Vec<PathStep>>,
) {
    out.push(here.clone());
    for (key, value) in fields {
        here.push(PathStep::Key(key.clone()));
        collect_value_containers(value, here, out);
        here.pop();
    }
}

fn collect_value_containers(value: &Value, here: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match &value.kind {
        Some(Kind::StructValue(s)) => collect_containers(&s.fields, here, out),
        Some(Kind::ListValue(list)) => {
            out.push(here.clone());
            for (i, item) in list.values.iter().enumerate() {
                here.push(PathStep::Index(i));
                collect_value_containers(item, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn container_at<'a>(payload: &'a mut Struct, path: &[PathStep]) -> Option<Container<'a>> {
    let mut current = Container::Object(&mut payload.fields);
    for step in path {
        let value = match (current, step) {
            (Container::Object(fields), PathStep::Key(key)) => fields.get_mut(key)?,
            (Container::List(values), PathStep::Index(i)) => values.get_mut(*i)?,
            _ => return None,
        };
        current = match &mut value.kind {
            Some(Kind::StructValue(s)) => Container::Object(&mut s.fields),
            Some(Kind::ListValue(list)) => Container::List(&mut list.values),
            _ => return None,
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    fn has_non_finite(value: &Value) -> usize {
        match &value.kind {
            Some(Kind::NumberValue(x)) => usize::from(!x.is_finite()),
            Some(Kind::StructValue(s)) => s.fields.values().map(has_non_finite).sum(),
            Some(Kind::ListValue(l)) => l.values.iter().map(has_non_finite).sum(),
            _ => 0,
        }
    }

    fn at<'a>(payload: &'a Struct, path: &[PathStep]) -> Option<&'a Value> {
        let (first, rest) = path.split_first()?;
        let PathStep::Key(key) = first else {
            return None;
        };
        let mut value = payload.fields.get(key)?;
        for step in rest {
            value = match (&value.kind, step) {
                (Some(Kind::StructValue(s)), PathStep::Key(k)) => s.fields.get(k)?,
                (Some(Kind::ListValue(l)), PathStep::Index(i)) => l.values.get(*i)?,
                _ => return None,
            };
        }
        Some(value)
    }

    proptest! {
        #[test]
        fn injection_puts_exactly_one_non_finite_number_at_the_path(
            (payload, path) in arb_struct_with_non_finite()
        ) {
            let count: usize = payload.fields.values().map(has_non_finite).sum();
            prop_assert_eq!(count, 1);
            let injected = matches!(
                at(&payload, &path),
                Some(Value { kind: Some(Kind::NumberValue(x)) }) if !x.is_finite()
            );
            prop_assert!(injected, "nothing non-finite at {:?}", path);
        }

        #[test]
        fn structs_have_no_colliding_keys(payload in arb_struct()) {
            fn check(s: &Struct) -> bool {
                let mut seen = std::collections::HashSet::new();
                s.fields.keys().all(|k| seen.insert(stored_key(k)))
                    && s.fields.values().all(check_value)
            }
            fn check_value(v: &Value) -> bool {
                match &v.kind {
                    Some(Kind::StructValue(s)) => check(s),
                    Some(Kind::ListValue(l)) => l.values.iter().all(check_value),
                    _ => true,
                }
            }
            prop_assert!(check(&payload));
        }

        #[test]
        fn envelope_parts_are_valid(parts in arb_envelope_parts()) {
            for ts in [parts.occurred_at, parts.processed_at] {
                prop_assert!((0..=DATETIME_MAX_SECS).contains(&ts.seconds));
                prop_assert!((0..NANOS_PER_SEC).contains(&ts.nanos));
            }
            prop_assert!(!parts.organization_id.is_empty() && !parts.end_device_id.is_empty());
        }
    }

    #[test]
    fn payloads_cover_the_awkward_cases() {
        // A cheap check that the distribution is not accidentally narrowed: in a few
        // hundred payloads, the special cases appear.
        let mut runner = TestRunner::deterministic();
        let strategy = arb_struct();
        let (mut neg_zero, mut dotted, mut nested, mut empty_key) = (false, false, false, false);
        for _ in 0..500 {
            let payload = strategy.new_tree(&mut runner).expect("strategy").current();
            let json = format!("{payload:?}");
            neg_zero |= json.contains("NumberValue(-0.0)");
            dotted |= payload.fields.keys().any(|k| k.contains('.'));
            nested |= json.contains("StructValue");
            empty_key |= payload.fields.contains_key("");
        }
        assert!(neg_zero && dotted && nested && empty_key);
    }
}
