//! The envelope payload (`google.protobuf.Struct`) as the JSON text stored in ClickHouse's
//! `JSON` column, and the fidelity contract for that round trip.
//!
//! # Contract
//!
//! **What goes in.** [`struct_to_json`] writes a `Struct` as a JSON object:
//!
//! - A number is an f64. An integral value with |x| ≤ 2^53 is written as a JSON integer
//!   (`1.0` → `1`), so ClickHouse infers `Int64` for it instead of `Float64`; every other
//!   number is written as the shortest decimal that parses back to the same f64
//!   (`0.1`, `1e+308`, `5e-324`, `9007199254740994.0`). `-0.0` is written as `-0.0`,
//!   keeping its sign.
//! - NaN and ±Infinity have no JSON form: the payload is rejected
//!   ([`PayloadError::NonFinite`], naming the path). Writing `null` instead would silently
//!   change the data.
//! - `Value { kind: None }` (no kind set, which producers should not send) is written as
//!   `null`, like an explicit `NullValue`.
//! - Two keys of one object that ClickHouse stores as the same path (`"a.b"` and
//!   `"a%2Eb"`, see below) are rejected ([`PayloadError::KeyCollision`]): ClickHouse would
//!   fail the whole INSERT, taking every other envelope in the batch with it.
//! - Strings and keys are escaped by serde_json.
//!
//! **What comes back.** Reading the `JSON` column back yields what
//! [`expected_after_clickhouse`] computes, given the writer's [`CLICKHOUSE_JSON_SETTINGS`].
//! Measured on ClickHouse 26.9 (chDB) with single rows and with 10,000-row inserts of
//! generated payloads; the integration proptest re-checks it against the server.
//!
//! | input | read back |
//! |---|---|
//! | dotted key `{"a.b":1}` | unchanged (needs `json_type_escape_dots_in_keys=1`; without it, `{"a":{"b":1}}`) |
//! | key containing `%2E` | `%2E` becomes `.`: ClickHouse escapes `.` as `%2E` and unescapes every `%2E` on output (`%2e` is left alone) |
//! | object member that is `null` | dropped |
//! | object member that is `{}`, or becomes `{}` after dropping | dropped, recursively |
//! | list | kept with every element, including `null`, `[]` and `{}`; an object *inside* a list has its own null and empty-object members dropped, but stays in the list even if it becomes `{}` |
//! | `1.0`, `-0.0`, `1e20` | `1`, `-0`, `100000000000000000000`: the same f64, sign of zero included |
//! | `""` key, `""` string | unchanged |
//! | a string that looks like a date (`"2020-01-01T00:00:00Z"`) | unchanged (needs `input_format_try_infer_dates=0` and `input_format_try_infer_datetimes=0`; with the defaults it comes back as `"2020-01-01 00:00:00"`) |
//! | a list mixing booleans with numbers or strings (`[true,1]`) | unchanged (needs `input_format_json_read_bools_as_numbers=0` and `input_format_json_read_bools_as_strings=0`; with the defaults, `[1,1]`) |
//! | key order | not preserved: a `Struct` is a map, and ClickHouse returns its own order |
//!
//! So "the same payload" means map equality with numbers compared bit for bit
//! ([`structs_identical`]).
//!
//! **Not modelled.** A `null` element of a list that has no string, number or boolean
//! element (`[[1],null]`, `[{"k":1},null]`, `[null]`) may come back as `[]` or `{}`. Neither
//! an `Array` nor a `JSON` element can be null in ClickHouse, and whether the list gets
//! such a type depends on its other elements and on the same path in *other rows of the
//! same insert*, so no per-payload model can predict it. The shared test strategies leave
//! this shape out; producers that need the distinction should avoid it.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde::ser::{Error as _, Serialize, Serializer};

/// ClickHouse settings the writer sends with every insert and select, so that a `String`
/// field maps to the `JSON` column and the payload survives as described in the module
/// documentation. The store and the tests share this one list.
pub const CLICKHOUSE_JSON_SETTINGS: &[(&str, &str)] = &[
    // RowBinary carries the JSON column as its text, which is what a `String` field holds.
    ("input_format_binary_read_json_as_string", "1"),
    ("output_format_binary_write_json_as_string", "1"),
    // Without it, `{"a.b":1}` is stored as `{"a":{"b":1}}`.
    ("json_type_escape_dots_in_keys", "1"),
    // With the defaults (1), a string that parses as a date or time is stored as
    // Date/DateTime64 and read back reformatted.
    ("input_format_try_infer_dates", "0"),
    ("input_format_try_infer_datetimes", "0"),
    // With the defaults (1), a list mixing booleans with numbers or strings comes back
    // with `true` as `1` or `"true"`.
    ("input_format_json_read_bools_as_numbers", "0"),
    ("input_format_json_read_bools_as_strings", "0"),
    // The defaults, pinned because the contract depends on them: `"123"` stays a string,
    // and a list of mixed types keeps each element's type.
    ("input_format_json_try_infer_numbers_from_strings", "0"),
    (
        "input_format_json_infer_array_of_dynamic_from_array_of_different_types",
        "1",
    ),
];

/// How ClickHouse writes `.` inside a key when `json_type_escape_dots_in_keys=1`.
const ESCAPED_DOT: &str = "%2E";

/// The largest magnitude below which every integer is exactly representable as an f64.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// Why a payload cannot be stored. Permanent: the same payload fails the same way every
/// time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// A NaN or ±Infinity, which JSON cannot represent. `path` is a JSONPath
    /// (`$.a["b.c"][2]`).
    #[error("{path} is {value}, which JSON cannot represent")]
    NonFinite { path: String, value: f64 },
    /// Two keys of the object at `path` that ClickHouse stores under the same path
    /// (`"a.b"` and `"a%2Eb"`); ClickHouse rejects the whole INSERT with "Duplicate path".
    #[error(
        "keys {first:?} and {second:?} of the object at {path} are the same ClickHouse JSON path"
    )]
    KeyCollision {
        path: String,
        first: String,
        second: String,
    },
    /// serde_json failed for a reason of its own. Not expected: it writes into memory and
    /// every key is a string. Reported rather than panicking on an input path.
    #[error("could not write JSON: {0}")]
    Serializer(String),
}

/// Writes `s` as compact JSON text, following the module's contract.
///
/// One pass, straight into the output buffer: no intermediate `serde_json::Value`.
pub fn struct_to_json(s: &Struct) -> Result<String, PayloadError> {
    let problem = Cell::new(None);
    let root = JsonObject {
        fields: &s.fields,
        path: Path::Root,
        problem: &problem,
    };
    serde_json::to_string(&root).map_err(|e| {
        problem
            .take()
            .unwrap_or(PayloadError::Serializer(e.to_string()))
    })
}

/// Like [`struct_to_json`], as a `serde_json::Value` (for tests and the demo; the hot path
/// uses [`struct_to_json`]).
pub fn to_json_value(s: &Struct) -> Result<serde_json::Value, PayloadError> {
    let problem = Cell::new(None);
    let root = JsonObject {
        fields: &s.fields,
        path: Path::Root,
        problem: &problem,
    };
    serde_json::to_value(&root).map_err(|e| {
        problem
            .take()
            .unwrap_or(PayloadError::Serializer(e.to_string()))
    })
}

/// Why JSON could not be turned into a `Struct`.
#[derive(Debug, thiserror::Error)]
pub enum FromJsonError {
    #[error("not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the top-level JSON value is {found}, not an object")]
    NotAnObject { found: &'static str },
    /// Only reachable if another crate enables serde_json's `arbitrary_precision`.
    #[error("the number {0} does not fit an f64")]
    NumberOutOfRange(String),
}

/// The inverse of [`struct_to_json`]: a JSON object as a `Struct`. Every number becomes
/// an f64, so integers beyond 2^53 are rounded.
pub fn json_to_struct(v: &serde_json::Value) -> Result<Struct, FromJsonError> {
    match v {
        serde_json::Value::Object(map) => object_to_struct(map),
        other => Err(FromJsonError::NotAnObject {
            found: json_kind_name(other),
        }),
    }
}

/// [`json_to_struct`] from JSON text.
pub fn json_str_to_struct(text: &str) -> Result<Struct, FromJsonError> {
    json_to_struct(&serde_json::from_str(text)?)
}

/// What reading the `JSON` column back yields for a payload that [`struct_to_json`]
/// accepts: the contract in the module documentation, as code.
pub fn expected_after_clickhouse(s: &Struct) -> Struct {
    Struct {
        fields: stored_members(&s.fields),
    }
}

/// Map equality with numbers compared bit for bit, so `-0.0` differs from `0.0` (and a
/// NaN equals the same NaN). `Struct`'s own `PartialEq` compares numbers with `==`.
pub fn structs_identical(a: &Struct, b: &Struct) -> bool {
    a.fields.len() == b.fields.len()
        && a.fields
            .iter()
            .zip(&b.fields)
            .all(|((ka, va), (kb, vb))| ka == kb && values_identical(va, vb))
}

fn values_identical(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::NumberValue(x)), Some(Kind::NumberValue(y))) => x.to_bits() == y.to_bits(),
        (Some(Kind::StructValue(x)), Some(Kind::StructValue(y))) => structs_identical(x, y),
        (Some(Kind::ListValue(x)), Some(Kind::ListValue(y))) => {
            x.values.len() == y.values.len()
                && x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(x, y)| values_identical(x, y))
        }
        (x, y) => x == y,
    }
}

// ---------------------------------------------------------------------------------------
// Struct → JSON

/// Where a value sits, as a chain of stack references: building it costs nothing unless
/// an error needs the text.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Key(parent, key) if is_plain_key(key) => write!(f, "{parent}.{key}"),
            Path::Key(parent, key) => write!(f, "{parent}[{key:?}]"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Keys that read unambiguously after a `.` in a path; the rest are bracketed and quoted.
fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Serializes an object. On a problem it records a [`PayloadError`] in `problem` and
/// fails; serde's error type cannot carry it back.
struct JsonObject<'a> {
    fields: &'a BTreeMap<String, Value>,
    path: Path<'a>,
    problem: &'a Cell<Option<PayloadError>>,
}

struct JsonValue<'a> {
    value: &'a Value,
    path: Path<'a>,
    problem: &'a Cell<Option<PayloadError>>,
}

impl Serialize for JsonObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some((first, second)) = key_collision(self.fields) {
            self.problem.set(Some(PayloadError::KeyCollision {
                path: self.path.to_string(),
                first: first.to_owned(),
                second: second.to_owned(),
            }));
            return Err(S::Error::custom("key collision"));
        }
        serializer.collect_map(self.fields.iter().map(|(key, value)| {
            (
                key,
                JsonValue {
                    value,
                    path: Path::Key(&self.path, key),
                    problem: self.problem,
                },
            )
        }))
    }
}

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.value.kind {
            None | Some(Kind::NullValue(_)) => serializer.serialize_unit(),
            Some(Kind::BoolValue(b)) => serializer.serialize_bool(*b),
            Some(Kind::StringValue(s)) => serializer.serialize_str(s),
            Some(Kind::NumberValue(x)) if !x.is_finite() => {
                self.problem.set(Some(PayloadError::NonFinite {
                    path: self.path.to_string(),
                    value: *x,
                }));
                Err(S::Error::custom("non-finite number"))
            }
            Some(Kind::NumberValue(x)) => match exact_integer(*x) {
                Some(i) => serializer.serialize_i64(i),
                None => serializer.serialize_f64(*x),
            },
            Some(Kind::StructValue(s)) => JsonObject {
                fields: &s.fields,
                path: self.path,
                problem: self.problem,
            }
            .serialize(serializer),
            Some(Kind::ListValue(list)) => {
                serializer.collect_seq(list.values.iter().enumerate().map(|(i, value)| JsonValue {
                    value,
                    path: Path::Index(&self.path, i),
                    problem: self.problem,
                }))
            }
        }
    }
}

/// `x` as an i64 when it is integral, within ±2^53 and not -0.0 (which would lose its
/// sign as the integer 0).
pub(crate) fn exact_integer(x: f64) -> Option<i64> {
    let integral = x.fract() == 0.0 && x.abs() <= MAX_EXACT_INTEGER;
    let negative_zero = x == 0.0 && x.is_sign_negative();
    // Exact: an integral value within ±2^53 fits an i64.
    (integral && !negative_zero).then_some(x as i64)
}

/// How ClickHouse (with `json_type_escape_dots_in_keys=1`) reads a key back: it escapes
/// `.` as `%2E` on insert and unescapes every `%2E` on output.
fn stored_key(key: &str) -> Cow<'_, str> {
    if key.contains(ESCAPED_DOT) {
        Cow::Owned(key.replace(ESCAPED_DOT, "."))
    } else {
        Cow::Borrowed(key)
    }
}

/// Two keys that ClickHouse stores as the same path. Keys collide exactly when they read
/// back the same ([`stored_key`]), which needs one of them to contain `%2E`: escaping `.`
/// is injective on keys without it. That makes the common case one substring scan per key.
fn key_collision(fields: &BTreeMap<String, Value>) -> Option<(&str, &str)> {
    if !fields.keys().any(|k| k.contains(ESCAPED_DOT)) {
        return None;
    }
    let mut seen: HashMap<Cow<'_, str>, &str> = HashMap::with_capacity(fields.len());
    for key in fields.keys() {
        if let Some(first) = seen.insert(stored_key(key), key) {
            return Some((first, key));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// The ClickHouse model

fn stored_members(fields: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    fields
        .iter()
        .filter_map(|(key, value)| {
            let stored = match &value.kind {
                None | Some(Kind::NullValue(_)) => return None,
                Some(Kind::StructValue(inner)) => {
                    let members = stored_members(&inner.fields);
                    if members.is_empty() {
                        return None;
                    }
                    struct_value(members)
                }
                _ => stored_element(value),
            };
            Some((stored_key(key).into_owned(), stored))
        })
        .collect()
}

/// A list element: kept whatever it is, but an object's own members are still filtered.
fn stored_element(value: &Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => null_value(),
        Some(Kind::StructValue(inner)) => struct_value(stored_members(&inner.fields)),
        Some(Kind::ListValue(list)) => Value {
            kind: Some(Kind::ListValue(ListValue {
                values: list.values.iter().map(stored_element).collect(),
            })),
        },
        Some(_) => value.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// JSON → Struct

fn object_to_struct(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Struct, FromJsonError> {
    let fields = map
        .iter()
        .map(|(k, v)| Ok((k.clone(), json_to_value(v)?)))
        .collect::<Result<_, FromJsonError>>()?;
    Ok(Struct { fields })
}

fn json_to_value(v: &serde_json::Value) -> Result<Value, FromJsonError> {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(
            n.as_f64()
                .ok_or_else(|| FromJsonError::NumberOutOfRange(n.to_string()))?,
        ),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect::<Result<_, _>>()?,
        }),
        J::Object(map) => Kind::StructValue(object_to_struct(map)?),
    };
    Ok(Value { kind: Some(kind) })
}

fn json_kind_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn null_value() -> Value {
    Value {
        kind: Some(Kind::NullValue(prost_types::NullValue::NullValue.into())),
    }
}

fn struct_value(fields: BTreeMap<String, Value>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use testkit::strategies::{PathStep, arb_struct, arb_struct_with_non_finite};

    fn s(json: &str) -> Struct {
        json_str_to_struct(json).expect("test JSON is a valid object")
    }

    fn num(x: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(x)),
        }
    }

    fn with(key: &str, value: Value) -> Struct {
        Struct {
            fields: BTreeMap::from([(key.to_owned(), value)]),
        }
    }

    fn to_json(st: &Struct) -> String {
        struct_to_json(st).expect("finite payload")
    }

    /// Renders steps in the documented path syntax, independently of `Path`.
    fn render(steps: &[PathStep]) -> String {
        let mut out = String::from("$");
        for step in steps {
            match step {
                PathStep::Key(k) if is_plain_key(k) => out += &format!(".{k}"),
                PathStep::Key(k) => out += &format!("[{k:?}]"),
                PathStep::Index(i) => out += &format!("[{i}]"),
            }
        }
        out
    }

    #[test]
    fn numbers_are_written_as_integers_only_when_exact_and_signed_zero_keeps_its_sign() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1"),
            (-3.0, "-3"),
            (0.0, "0"),
            (-0.0, "-0.0"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (-9_007_199_254_740_992.0, "-9007199254740992"),
            (9_007_199_254_740_994.0, "9007199254740994.0"),
            (1e20, "1e+20"),
            (1e308, "1e+308"),
            (f64::from_bits(1), "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for &(x, expected) in cases {
            assert_eq!(
                to_json(&with("n", num(x))),
                format!(r#"{{"n":{expected}}}"#),
                "{x:e}"
            );
        }
    }

    #[test]
    fn every_kind_is_written() {
        let st = s(r#"{"a":[1,"x",true,null,{"k":{}}],"b":"","":{"c.d":false}}"#);
        assert_eq!(
            to_json(&st),
            r#"{"":{"c.d":false},"a":[1,"x",true,null,{"k":{}}],"b":""}"#
        );
        assert_eq!(to_json(&Struct::default()), "{}");
    }

    #[test]
    fn a_value_without_kind_and_any_null_value_are_written_as_null() {
        let mut st = with("a", Value { kind: None });
        st.fields.insert(
            "b".into(),
            Value {
                kind: Some(Kind::NullValue(5)),
            },
        );
        assert_eq!(to_json(&st), r#"{"a":null,"b":null}"#);
    }

    #[test]
    fn strings_and_keys_are_escaped() {
        let st = with(
            "q\"\\\n\u{0}",
            Value {
                kind: Some(Kind::StringValue("\u{1f}é😀</".into())),
            },
        );
        let json = to_json(&st);
        assert_eq!(json, r#"{"q\"\\\n\u0000":"\u001fé😀</"}"#);
        assert!(structs_identical(&json_str_to_struct(&json).unwrap(), &st));
    }

    #[test]
    fn non_finite_numbers_are_rejected_with_their_path() {
        let cases = [
            (with("t", num(f64::NAN)), "$.t"),
            (with("a.b", num(f64::INFINITY)), r#"$["a.b"]"#),
            (
                with(
                    "x",
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![
                                num(1.0),
                                struct_value(with("", num(f64::NEG_INFINITY)).fields),
                            ],
                        })),
                    },
                ),
                r#"$.x[1][""]"#,
            ),
        ];
        for (st, path) in cases {
            match struct_to_json(&st) {
                Err(PayloadError::NonFinite { path: p, .. }) => assert_eq!(p, path),
                other => panic!("expected NonFinite at {path}, got {other:?}"),
            }
            assert!(matches!(
                to_json_value(&st),
                Err(PayloadError::NonFinite { .. })
            ));
        }
    }

    #[test]
    fn keys_clickhouse_would_store_as_one_path_are_rejected() {
        let err = struct_to_json(&s(r#"{"o":[{"a.b":1,"a%2Eb":2}]}"#)).unwrap_err();
        assert_eq!(
            err,
            PayloadError::KeyCollision {
                path: "$.o[0]".into(),
                first: "a%2Eb".into(),
                second: "a.b".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            r#"keys "a%2Eb" and "a.b" of the object at $.o[0] are the same ClickHouse JSON path"#
        );
        // `%2e` is not unescaped, and `%2E` alone is fine.
        assert!(struct_to_json(&s(r#"{"a.b":1,"a%2eb":2,"c%2Ed":3}"#)).is_ok());
    }

    #[test]
    fn to_json_value_matches_the_text() {
        let st = s(r#"{"a":[1.5,-0.0,{"b":null}],"c":"d"}"#);
        let value = to_json_value(&st).unwrap();
        assert_eq!(value.to_string(), to_json(&st));
    }

    #[test]
    fn negative_zero_read_back_as_an_integer_keeps_its_sign() {
        // ClickHouse writes -0.0 back as `-0`.
        let back = json_str_to_struct(r#"{"k":-0,"l":[-0]}"#).unwrap();
        assert!(structs_identical(&back, &s(r#"{"k":-0.0,"l":[-0.0]}"#)));
    }

    #[test]
    fn json_to_struct_rejects_non_objects() {
        assert!(matches!(
            json_str_to_struct("[1]"),
            Err(FromJsonError::NotAnObject { found: "an array" })
        ));
        assert!(matches!(
            json_str_to_struct("{"),
            Err(FromJsonError::Parse(_))
        ));
    }

    /// One case per row of the field notes' table (§4) and the measurements behind the
    /// module documentation, as (inserted, read back).
    #[test]
    fn expected_after_clickhouse_follows_the_measured_behaviour() {
        let cases = [
            (r#"{"a.b":1,"c":{"d":2}}"#, r#"{"a.b":1,"c":{"d":2}}"#),
            (r#"{"e":{},"f":null,"g":[]}"#, r#"{"g":[]}"#),
            (
                r#"{"n":[[1,2],[3]],"o":{"p":{"q":{}}}}"#,
                r#"{"n":[[1,2],[3]]}"#,
            ),
            (
                r#"{"h":[1,"x",true,null,{"k":1}]}"#,
                r#"{"h":[1,"x",true,null,{"k":1}]}"#,
            ),
            (
                r#"{"i":1.0,"k":-0.0,"l":9007199254740993}"#,
                r#"{"i":1,"k":-0.0,"l":9007199254740993}"#,
            ),
            (r#"{"":1,"m":""}"#, r#"{"":1,"m":""}"#),
            // Objects inside lists lose null and empty members but stay in the list.
            (
                r#"{"h":[{"a":null},{"b":{}},{"c":{"d":null}},[{"x":null}],{"k":1,"z":null}]}"#,
                r#"{"h":[{},{},{},[{}],{"k":1}]}"#,
            ),
            // Measured on a single-row insert; see "Not modelled".
            (
                r#"{"l":[{},null,[],[null]]}"#,
                r#"{"l":[{},null,[],[null]]}"#,
            ),
            (r#"{"b":[true,1,"x",null]}"#, r#"{"b":[true,1,"x",null]}"#),
            (r#"{"":{"":{"x":null}},"b":1}"#, r#"{"b":1}"#),
            (
                r#"{"a%2Eb":1,"%2E%2E":2,"a%2eb":3}"#,
                r#"{"a.b":1,"..":2,"a%2eb":3}"#,
            ),
            (
                r#"{"d":"2020-01-01T00:00:00Z"}"#,
                r#"{"d":"2020-01-01T00:00:00Z"}"#,
            ),
            ("{}", "{}"),
        ];
        for (inserted, read_back) in cases {
            let got = expected_after_clickhouse(&s(inserted));
            assert!(
                structs_identical(&got, &s(read_back)),
                "{inserted}: expected {read_back}, got {}",
                to_json(&got)
            );
        }
        // A value without kind reads back as null inside a list, and is dropped as a member.
        let mut st = with("a", Value { kind: None });
        st.fields.insert(
            "l".into(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![Value { kind: None }],
                })),
            },
        );
        assert!(structs_identical(
            &expected_after_clickhouse(&st),
            &s(r#"{"l":[null]}"#)
        ));
    }

    #[test]
    fn structs_identical_tells_signed_zeros_apart() {
        assert!(!structs_identical(
            &with("z", num(0.0)),
            &with("z", num(-0.0))
        ));
        assert_eq!(
            with("z", num(0.0)),
            with("z", num(-0.0)),
            "prost's PartialEq does not"
        );
        assert!(structs_identical(
            &with("z", num(f64::NAN)),
            &with("z", num(f64::NAN))
        ));
        assert!(!structs_identical(&s(r#"{"a":[1]}"#), &s(r#"{"a":[1,2]}"#)));
    }

    proptest! {
        #[test]
        fn round_trips_exactly(st in arb_struct()) {
            let json = struct_to_json(&st).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = json_str_to_struct(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(structs_identical(&back, &st), "{json}");
            prop_assert_eq!(to_json_value(&st).map(|v| v.to_string()), Ok(json));
        }

        #[test]
        fn a_non_finite_number_anywhere_is_named((st, steps) in arb_struct_with_non_finite()) {
            match struct_to_json(&st) {
                Err(PayloadError::NonFinite { path, value }) => {
                    prop_assert!(!value.is_finite());
                    prop_assert_eq!(path, render(&steps));
                }
                other => prop_assert!(false, "expected NonFinite, got {:?}", other),
            }
        }

        #[test]
        fn the_model_is_idempotent(st in arb_struct()) {
            let once = expected_after_clickhouse(&st);
            prop_assert!(structs_identical(&expected_after_clickhouse(&once), &once));
        }
    }
}
