//! The fast path of [`super::decode`]: from wire bytes straight to a [`ValidEnvelope`],
//! with the payload written as JSON text without building a `prost_types::Struct`.
//!
//! prost's `Struct` is a `BTreeMap<String, Value>`: one allocation per key, per value
//! and per tree node, all dropped once the JSON is written. Here the JSON text is
//! written in one pass over the bytes when every object's entries come in key order
//! (as prost and most encoders write them); otherwise the payload is read into a small
//! tree of borrowed slices, sorted, and written. Either way the text is byte for byte
//! what [`crate::payload::struct_to_json`] writes: strings needing an escape go through
//! serde_json, numbers through the formatters serde_json calls (itoa, zmij; Cargo.lock
//! holds one version of each). About 4 times fewer instructions than the prost path
//! for a 30-field payload (`benches/hot_path.rs`: 16 k against 64 k per envelope,
//! counted with callgrind).
//!
//! # Equivalence
//!
//! [`decode_valid`] either returns exactly what the prost path (`ProcessedEnvelope::decode`
//! then [`super::validate`]) returns for the same bytes, or `None`, and then the caller
//! takes the prost path. It returns `None` for everything it does not model, which is
//! everything outside the plain encoding that encoders produce:
//!
//! - any field number or wire type other than the schema's (unknown fields, groups);
//! - a singular field that occurs twice (prost would keep the last string, or merge
//!   the messages), a `Value` with more than one kind, a map entry with a repeated key
//!   or value;
//! - two entries of one `Struct` with the same key (prost keeps the last);
//! - anything prost refuses (bad varints, lengths past the end, strings that are not
//!   UTF-8, nesting deeper than prost's recursion limit allows);
//! - any envelope [`super::validate`] refuses, so that every error, with its reason and
//!   detail, comes from the one prost path: a key containing `%2E` (a possible
//!   collision) or a non-finite number makes this path decline too.
//!
//! Map entries in any order are modelled: they are sorted as the `BTreeMap` would be.
//! The tests below compare both paths (and streaming with the tree) on generated envelopes, on messages built field by
//! field (entries out of order, keys or values left out, overlong varints, repeats,
//! unknown fields, wrong wire types, bad UTF-8, non-finite numbers, deep nesting), and
//! on arbitrary, mutated and truncated bytes.

use serde::ser::{Serialize, Serializer};

use super::{InvalidReason, ValidEnvelope, to_datetime};
use crate::payload;

/// Deepest message nesting read here (the payload's `Struct` is at depth 1). prost
/// refuses nesting past 100 messages; staying well below keeps "prost would fail" out of
/// the cases this path accepts, and the recursion shallow.
const MAX_DEPTH: u32 = 64;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// See the module documentation.
pub(super) fn decode_valid(bytes: &[u8]) -> Option<ValidEnvelope> {
    let mut r = Reader(bytes);
    let mut end_device_id = None;
    let mut occurred_at = None;
    let mut data = None;
    let mut processed_at = None;
    let mut organization_id = None;
    while !r.0.is_empty() {
        match r.key()? {
            (1, LEN) => once(&mut end_device_id, r.str()?)?,
            (2, LEN) => once(&mut occurred_at, timestamp(r.len_delimited()?)?)?,
            (3, LEN) => once(&mut data, r.len_delimited()?)?,
            (4, LEN) => once(&mut processed_at, timestamp(r.len_delimited()?)?)?,
            (5, LEN) => once(&mut organization_id, r.str()?)?,
            _ => return None,
        }
    }
    let organization_id = organization_id.filter(|s: &&str| !s.is_empty())?;
    let end_device_id = end_device_id.filter(|s: &&str| !s.is_empty())?;
    let occurred_at =
        to_datetime("occurred_at", occurred_at, InvalidReason::MissingOccurredAt).ok()?;
    let processed_at = to_datetime(
        "processed_at",
        processed_at,
        InvalidReason::MissingProcessedAt,
    )
    .ok()?;
    let data = match data {
        None => "{}".to_owned(),
        Some(bytes) => payload_json(bytes)?,
    };
    Some(ValidEnvelope {
        organization_id: organization_id.to_owned(),
        end_device_id: end_device_id.to_owned(),
        occurred_at,
        processed_at,
        data,
    })
}

/// The payload's JSON text, from the encoded `Struct`.
///
/// Streamed when every object's entries come in key order with the key first, which is
/// how prost (a `BTreeMap`) and most encoders write them: nothing but the text is built.
/// Otherwise the payload is read into a [`Node`] tree and sorted first.
fn payload_json(bytes: &[u8]) -> Option<String> {
    // About the size the text usually has (somewhat more than the encoded `Struct`), so
    // that the buffer rarely grows.
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2 + 16);
    if stream_object(bytes, 1, &mut out).is_none() {
        out.clear();
        serde_json::to_writer(&mut out, &Node::Object(object(bytes, 1)?)).ok()?;
    }
    // The one UTF-8 check of the payload's strings: `stream_object` copies keys and
    // string values unchecked, and everything else it writes is ASCII or serde_json's
    // (valid) output, so the text is valid exactly when every string was. If one was
    // not, prost refuses the message too, and the caller takes that path.
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------
// Streaming: the text of the payload in one pass over the bytes.
//
// The structure (`{`, `:`, `,`, `}`, `[`, `]`) is what serde_json's compact formatter
// writes; `null`, `true` and `false` are its literals; numbers go through the
// formatters its `serialize_i64` and `serialize_f64` call, and strings needing an
// escape through serde_json itself (the tests compare every case with the tree path,
// which serde_json writes). `None` where the tree path would decline, and also where an
// object's entries are not in key order or an entry has its value before its key: the
// caller then discards the partial text and takes the tree path.

/// What one pass over a string's bytes finds: whether JSON needs an escape in it
/// (serde_json escapes exactly the control characters, `"` and `\`), and whether it
/// contains `%`. One table lookup per byte: keys and strings are short, too short for
/// the compiler's vectorized loop to pay for its set-up.
fn scan(bytes: &[u8]) -> (bool, bool) {
    let mut found = 0u8;
    for &b in bytes {
        found |= BYTE_CLASS[usize::from(b)];
    }
    (found & NEEDS_ESCAPE != 0, found & PERCENT != 0)
}

const NEEDS_ESCAPE: u8 = 1;
const PERCENT: u8 = 2;
static BYTE_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        class[b] = NEEDS_ESCAPE;
        b += 1;
    }
    class[b'"' as usize] = NEEDS_ESCAPE;
    class[b'\\' as usize] = NEEDS_ESCAPE;
    class[b'%' as usize] = PERCENT;
    class
};

/// A string's bytes as a JSON string, byte for byte what serde_json writes for it.
/// The bytes are not checked for UTF-8 here: the caller checks the whole text once at
/// the end (`payload_json`), and declines if it is not, as prost would.
fn write_json_str(out: &mut Vec<u8>, bytes: &[u8], needs_escape: bool) -> Option<()> {
    if needs_escape {
        let text = std::str::from_utf8(bytes).ok()?;
        text.serialize(&mut serde_json::Serializer::new(out)).ok()
    } else {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        Some(())
    }
}

fn stream_object(bytes: &[u8], depth: u32, out: &mut Vec<u8>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    let mut previous: Option<&[u8]> = None;
    out.push(b'{');
    while !r.0.is_empty() {
        if !r.next_key_is(1, LEN)? {
            return None;
        }
        let (key, value) = stream_entry(r.len_delimited()?, depth + 1)?;
        // In order and without duplicates, or the tree path sorts (or declines). Byte
        // order is `str` order.
        if previous.is_some_and(|previous| previous >= key) {
            return None;
        }
        if previous.is_some() {
            out.push(b',');
        }
        let (needs_escape, has_percent) = scan(key);
        // ClickHouse reads `%2E` back as `.`: leave the collision check to the prost path.
        if has_percent && key.windows(3).any(|w| w == b"%2E") {
            return None;
        }
        write_json_str(out, key, needs_escape)?;
        out.push(b':');
        stream_value(value, depth + 2, out)?;
        previous = Some(key);
    }
    out.push(b'}');
    Some(())
}

/// A map entry's key (default "", bytes not yet checked for UTF-8) and the bytes of its
/// value (default: no kind), in that order, each at most once.
fn stream_entry(bytes: &[u8], depth: u32) -> Option<(&[u8], &[u8])> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    let mut key: &[u8] = b"";
    let mut value: &[u8] = &[];
    if !r.0.is_empty() && r.next_key_is(1, LEN)? {
        key = r.len_delimited()?;
    }
    if !r.0.is_empty() {
        if !r.next_key_is(2, LEN)? {
            return None;
        }
        value = r.len_delimited()?;
    }
    if !r.0.is_empty() {
        return None;
    }
    Some((key, value))
}

/// A `Value` with at most one kind; none is null.
fn stream_value(bytes: &[u8], depth: u32, out: &mut Vec<u8>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    if r.0.is_empty() {
        out.extend_from_slice(b"null");
        return Some(());
    }
    match r.key()? {
        (1, VARINT) => {
            r.varint()?;
            out.extend_from_slice(b"null");
        }
        (2, FIXED64) => {
            let x = f64::from_bits(r.fixed64()?);
            if !x.is_finite() {
                return None;
            }
            // serde_json's own formatters, the versions it uses (one of each in
            // Cargo.lock), as `serialize_i64` and `serialize_f64` call them.
            match payload::exact_integer(x) {
                Some(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
                None => out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes()),
            }
        }
        (3, LEN) => {
            let text = r.len_delimited()?;
            write_json_str(out, text, scan(text).0)?;
        }
        (4, VARINT) => {
            let b = r.varint()? != 0;
            out.extend_from_slice(if b { b"true" } else { b"false" });
        }
        (5, LEN) => stream_object(r.len_delimited()?, depth + 1, out)?,
        (6, LEN) => stream_list(r.len_delimited()?, depth + 1, out)?,
        _ => return None,
    }
    // A second kind (prost keeps the last, or merges) or an unknown field.
    r.0.is_empty().then_some(())
}

fn stream_list(bytes: &[u8], depth: u32, out: &mut Vec<u8>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    out.push(b'[');
    let mut first = true;
    while !r.0.is_empty() {
        if !r.next_key_is(1, LEN)? {
            return None;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        stream_value(r.len_delimited()?, depth + 1, out)?;
    }
    out.push(b']');
    Some(())
}

// ---------------------------------------------------------------------------------------
// The tree: for objects whose entries are out of order.

/// Sets a field that must occur at most once.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

fn timestamp(bytes: &[u8]) -> Option<prost_types::Timestamp> {
    let mut r = Reader(bytes);
    let mut seconds = None;
    let mut nanos = None;
    while !r.0.is_empty() {
        match r.key()? {
            // prost reads int64 and int32 as a varint cast to the type (truncating).
            (1, VARINT) => once(&mut seconds, r.varint()? as i64)?,
            (2, VARINT) => once(&mut nanos, r.varint()? as i32)?,
            _ => return None,
        }
    }
    Some(prost_types::Timestamp {
        seconds: seconds.unwrap_or(0),
        nanos: nanos.unwrap_or(0),
    })
}

/// A payload value, borrowing its strings from the message.
enum Node<'a> {
    Null,
    Bool(bool),
    /// Finite: a non-finite number makes this path decline.
    Number(f64),
    String(&'a str),
    /// Sorted by key, without duplicates.
    Object(Vec<(&'a str, Node<'a>)>),
    List(Vec<Node<'a>>),
}

/// A `Struct` at nesting `depth`: its map entries, sorted by key as a `BTreeMap` is.
fn object(bytes: &[u8], depth: u32) -> Option<Vec<(&str, Node<'_>)>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    let mut fields = Vec::new();
    let mut sorted = true;
    while !r.0.is_empty() {
        if !r.next_key_is(1, LEN)? {
            return None;
        }
        let (key, value) = entry(r.len_delimited()?, depth + 1)?;
        if let Some((last, _)) = fields.last() {
            sorted &= *last < key;
        }
        fields.push((key, value));
    }
    if !sorted {
        fields.sort_unstable_by_key(|(key, _)| *key);
        if fields.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return None;
        }
    }
    Some(fields)
}

/// A map entry: key 1 (string, default ""), value 2 (`Value`, default: no kind).
fn entry(bytes: &[u8], depth: u32) -> Option<(&str, Node<'_>)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    let mut key = None;
    let mut value = None;
    while !r.0.is_empty() {
        match r.key()? {
            (1, LEN) => once(&mut key, r.str()?)?,
            (2, LEN) => once(&mut value, self::value(r.len_delimited()?, depth + 1)?)?,
            _ => return None,
        }
    }
    let key = key.unwrap_or("");
    // ClickHouse reads `%2E` back as `.`: leave the collision check (and its error) to
    // the prost path.
    if key.as_bytes().contains(&b'%') && key.contains("%2E") {
        return None;
    }
    Some((key, value.unwrap_or(Node::Null)))
}

/// A `Value`: at most one kind; none is null.
fn value(bytes: &[u8], depth: u32) -> Option<Node<'_>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    let mut node = None;
    while !r.0.is_empty() {
        let kind = match r.key()? {
            // NullValue: any enum number is null.
            (1, VARINT) => r.varint().map(|_| Node::Null)?,
            (2, FIXED64) => {
                let x = f64::from_bits(r.fixed64()?);
                if !x.is_finite() {
                    return None;
                }
                Node::Number(x)
            }
            (3, LEN) => Node::String(r.str()?),
            (4, VARINT) => Node::Bool(r.varint()? != 0),
            (5, LEN) => Node::Object(object(r.len_delimited()?, depth + 1)?),
            (6, LEN) => Node::List(list(r.len_delimited()?, depth + 1)?),
            _ => return None,
        };
        once(&mut node, kind)?;
    }
    Some(node.unwrap_or(Node::Null))
}

/// A `ListValue`: field 1, repeated `Value`.
fn list(bytes: &[u8], depth: u32) -> Option<Vec<Node<'_>>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader(bytes);
    let mut values = Vec::new();
    while !r.0.is_empty() {
        if !r.next_key_is(1, LEN)? {
            return None;
        }
        values.push(value(r.len_delimited()?, depth + 1)?);
    }
    Some(values)
}

/// The same serializer calls as `payload::JsonValue`, so the same text.
impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => serializer.serialize_unit(),
            Node::Bool(b) => serializer.serialize_bool(*b),
            Node::String(s) => serializer.serialize_str(s),
            Node::Number(x) => match payload::exact_integer(*x) {
                Some(i) => serializer.serialize_i64(i),
                None => serializer.serialize_f64(*x),
            },
            Node::Object(fields) => serializer.collect_map(fields.iter().map(|(k, v)| (*k, v))),
            Node::List(values) => serializer.collect_seq(values),
        }
    }
}

/// Reads protobuf wire format; every method returns `None` where prost fails.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// prost's `decode_varint`: at most 10 bytes, and a 10th byte of at most 1.
    #[inline(always)]
    fn varint(&mut self) -> Option<u64> {
        // Tags, lengths and small numbers: one byte, read inline.
        if let Some((&byte, rest)) = self.0.split_first()
            && byte < 0x80
        {
            self.0 = rest;
            return Some(u64::from(byte));
        }
        self.long_varint()
    }

    #[cold]
    #[inline(never)]
    fn long_varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            if i == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// Whether the next key is `(tag, wire_type)`, which is then read; another key is
    /// left unread. `None` where reading a key fails. Encoders write a key below field
    /// 16 as one byte, which is compared without decoding it.
    #[inline(always)]
    fn next_key_is(&mut self, tag: u32, wire_type: u8) -> Option<bool> {
        if let Some((&byte, rest)) = self.0.split_first()
            && tag < 16
            && u32::from(byte) == (tag << 3 | u32::from(wire_type))
        {
            self.0 = rest;
            return Some(true);
        }
        let mut probe = Reader(self.0);
        let is = probe.key()? == (tag, wire_type);
        if is {
            *self = probe;
        }
        Some(is)
    }

    /// prost's `decode_key`: (field number, wire type); a key past u32, a wire type
    /// above 5 or field number 0 fail.
    #[inline(always)]
    fn key(&mut self) -> Option<(u32, u8)> {
        let key = u32::try_from(self.varint()?).ok()?;
        let wire_type = (key & 7) as u8;
        let tag = key >> 3;
        (wire_type <= 5 && tag >= 1).then_some((tag, wire_type))
    }

    #[inline]
    fn fixed64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*bytes))
    }

    #[inline(always)]
    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let (bytes, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(bytes)
    }

    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.len_delimited()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use prost::Message as _;
    use testkit::strategies::{
        arb_envelope_parts, arb_finite_number, arb_id, arb_key, arb_string, arb_timestamp_any,
        arb_timestamp_in_range,
    };

    use super::*;
    use crate::envelope::tests::from_parts;
    use crate::envelope::{ProcessedEnvelope, decode_with_prost};

    proptest! {
        #[test]
        fn json_strings_are_written_as_serde_json_writes_them(text in any::<String>()) {
            let mut out = Vec::new();
            write_json_str(&mut out, text.as_bytes(), scan(text.as_bytes()).0).unwrap();
            prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    #[test]
    fn json_strings_needing_escapes_match_serde_json() {
        for text in [
            "",
            "plain",
            "quote\"",
            "back\\slash",
            "tab\t",
            "nul\0",
            "\u{1f}",
            "\u{7f}",
            "é€😀",
            "100%2E",
        ] {
            let mut out = Vec::new();
            let (needs_escape, has_percent) = scan(text.as_bytes());
            assert_eq!(has_percent, text.contains('%'), "{text:?}");
            write_json_str(&mut out, text.as_bytes(), needs_escape).unwrap();
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    /// The property: whenever the fast path answers, prost and `validate` answer the same.
    fn agrees(bytes: &[u8]) -> Result<bool, TestCaseError> {
        match decode_valid(bytes) {
            Some(fast) => {
                prop_assert_eq!(Ok(fast), decode_with_prost(bytes), "bytes: {:02x?}", bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    // --- Encoding helpers: the wire format, field by field. ---

    fn put_varint(out: &mut Vec<u8>, mut n: u64, overlong: bool) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                if overlong {
                    // Same value, one byte longer: prost accepts it.
                    out.extend([byte | 0x80, 0]);
                } else {
                    out.push(byte);
                }
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// One field of a message, as it goes on the wire.
    #[derive(Debug, Clone)]
    enum Field {
        Varint(u32, u64),
        Fixed64(u32, u64),
        Fixed32(u32, u32),
        Bytes(u32, Vec<u8>),
    }

    fn encode(fields: &[Field], overlong: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for field in fields {
            match field {
                Field::Varint(tag, n) => {
                    put_varint(&mut out, u64::from(*tag) << 3, false);
                    put_varint(&mut out, *n, overlong);
                }
                Field::Fixed64(tag, n) => {
                    put_varint(&mut out, u64::from(*tag) << 3 | 1, false);
                    out.extend(n.to_le_bytes());
                }
                Field::Fixed32(tag, n) => {
                    put_varint(&mut out, u64::from(*tag) << 3 | 5, false);
                    out.extend(n.to_le_bytes());
                }
                Field::Bytes(tag, bytes) => {
                    put_varint(&mut out, u64::from(*tag) << 3 | 2, false);
                    put_varint(&mut out, bytes.len() as u64, overlong);
                    out.extend(bytes);
                }
            }
        }
        out
    }

    /// Fields a message of any type might carry but the schema does not expect: unknown
    /// numbers, and known numbers with each wire type.
    fn arb_stray_field() -> impl Strategy<Value = Field> {
        (
            1u32..12,
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..4),
        )
            .prop_flat_map(|(tag, n, bytes)| {
                prop_oneof![
                    Just(Field::Varint(tag, n)),
                    Just(Field::Fixed64(tag, n)),
                    Just(Field::Fixed32(tag, n as u32)),
                    Just(Field::Bytes(tag, bytes)),
                ]
            })
    }

    /// A message's fields: usually the expected ones in order, sometimes shuffled,
    /// repeated, or mixed with a stray field.
    fn arb_message(
        expected: impl Strategy<Value = Vec<Field>>,
        overlong: bool,
    ) -> impl Strategy<Value = Vec<u8>> {
        (
            expected,
            prop::collection::vec(arb_stray_field(), 0..2),
            any::<prop::sample::Index>(),
            0..30u8,
        )
            .prop_map(move |(mut fields, stray, at, mode)| {
                match mode {
                    // Reversed: map entries out of order, fields in another order.
                    0 => fields.reverse(),
                    // A field repeated.
                    1 if !fields.is_empty() => {
                        let i = at.index(fields.len());
                        fields.push(fields[i].clone());
                    }
                    2 => {
                        for field in stray {
                            fields.insert(at.index(fields.len() + 1), field);
                        }
                    }
                    _ => {}
                }
                encode(&fields, overlong && mode == 3)
            })
    }

    fn arb_utf8_or_not() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            20 => arb_string().prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..6),
        ]
    }

    fn arb_value_bytes() -> impl Strategy<Value = Vec<u8>> {
        let number = prop_oneof![
            20 => arb_finite_number().prop_map(f64::to_bits),
            1 => prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY][..])
                .prop_map(f64::to_bits),
        ];
        let scalar = prop_oneof![
            1 => prop_oneof![Just(0u64), any::<u64>()].prop_map(|n| vec![Field::Varint(1, n)]),
            3 => number.prop_map(|bits| vec![Field::Fixed64(2, bits)]),
            3 => arb_utf8_or_not().prop_map(|s| vec![Field::Bytes(3, s)]),
            1 => prop_oneof![Just(0u64), Just(1), any::<u64>()]
                .prop_map(|n| vec![Field::Varint(4, n)]),
            1 => Just(Vec::new()),
        ];
        arb_message(scalar, true).prop_recursive(4, 40, 5, |inner| {
            let entry = (
                prop_oneof![
                    20 => arb_key().prop_map(String::into_bytes),
                    1 => prop::collection::vec(any::<u8>(), 0..3),
                ],
                inner.clone(),
                0..16u8,
            )
                .prop_map(|(key, value, shape)| match shape {
                    0 => vec![Field::Bytes(2, value)],
                    1 => vec![Field::Bytes(1, key)],
                    2 => vec![Field::Bytes(2, value), Field::Bytes(1, key)],
                    _ => vec![Field::Bytes(1, key), Field::Bytes(2, value)],
                });
            let object =
                prop::collection::vec(arb_message(entry, true), 0..5).prop_map(|entries| {
                    entries
                        .into_iter()
                        .map(|entry| Field::Bytes(1, entry))
                        .collect::<Vec<_>>()
                });
            let list = prop::collection::vec(inner, 0..5)
                .prop_map(|values| values.into_iter().map(|v| Field::Bytes(1, v)).collect());
            prop_oneof![
                arb_message(object, true).prop_map(|s| vec![Field::Bytes(5, s)]),
                arb_message(list, true).prop_map(|l| vec![Field::Bytes(6, l)]),
            ]
            .prop_flat_map(|fields| arb_message(Just(fields), true))
        })
    }

    /// A `Struct` (the envelope's `data`) from `Value` bytes holding a struct, or random.
    fn arb_struct_bytes() -> impl Strategy<Value = Vec<u8>> {
        let entry = (arb_key(), arb_value_bytes()).prop_map(|(key, value)| {
            vec![Field::Bytes(1, key.into_bytes()), Field::Bytes(2, value)]
        });
        let entries = prop::collection::vec(arb_message(entry, true), 0..6)
            .prop_map(|entries| entries.into_iter().map(|e| Field::Bytes(1, e)).collect());
        arb_message(entries, true)
    }

    fn arb_timestamp_bytes() -> impl Strategy<Value = Vec<u8>> {
        let fields = (
            prop_oneof![9 => arb_timestamp_in_range(), 1 => arb_timestamp_any()],
            0..4u8,
        )
            .prop_map(|(t, shape)| {
                // int64/int32 go on the wire as the two's complement u64.
                let seconds = Field::Varint(1, t.seconds as u64);
                let nanos = Field::Varint(2, i64::from(t.nanos) as u64);
                match shape {
                    0 => vec![seconds],
                    1 => vec![nanos],
                    _ => vec![seconds, nanos],
                }
            });
        arb_message(fields, true)
    }

    /// A whole envelope, field by field.
    fn arb_envelope_bytes() -> impl Strategy<Value = Vec<u8>> {
        let id = prop_oneof![
            18 => arb_id().prop_map(String::into_bytes),
            1 => Just(Vec::new()),
            1 => arb_utf8_or_not(),
        ];
        let fields = (
            id.clone(),
            arb_timestamp_bytes(),
            prop::option::weighted(0.9, arb_struct_bytes()),
            arb_timestamp_bytes(),
            id,
            0..40u8,
        )
            .prop_map(|(device, occurred, data, processed, org, drop)| {
                let mut fields = vec![
                    Field::Bytes(1, device),
                    Field::Bytes(2, occurred),
                    Field::Bytes(4, processed),
                    Field::Bytes(5, org),
                ];
                if let Some(data) = data {
                    fields.insert(2, Field::Bytes(3, data));
                }
                if usize::from(drop) < fields.len() {
                    fields.remove(usize::from(drop));
                }
                fields
            });
        arb_message(fields, true)
    }

    /// Runs `strategy` for `cases` cases with the `agrees` property; returns how many the
    /// fast path answered.
    fn run_agreement(strategy: impl Strategy<Value = Vec<u8>>, cases: u32) -> u32 {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let answered = Cell::new(0);
        runner
            .run(&strategy, |bytes| {
                if agrees(&bytes)? {
                    answered.set(answered.get() + 1);
                }
                Ok(())
            })
            .unwrap();
        answered.get()
    }

    #[test]
    fn messages_built_field_by_field_decode_as_prost_decodes_them() {
        let cases = 2000;
        let answered = run_agreement(arb_envelope_bytes(), cases);
        // The generator must reach the fast path often, or the property proves little.
        assert!(
            answered > cases / 10,
            "fast path answered {answered} of {cases}"
        );
    }

    #[test]
    fn mutated_messages_decode_as_prost_decodes_them() {
        let mutated = (
            arb_envelope_bytes(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|(mut bytes, flips)| {
                if !bytes.is_empty() {
                    for (at, xor) in flips {
                        let i = at.index(bytes.len());
                        bytes[i] ^= xor;
                    }
                }
                bytes
            });
        run_agreement(mutated, 2000);
        let truncated = (arb_envelope_bytes(), any::<prop::sample::Index>())
            .prop_map(|(bytes, at)| bytes[..at.index(bytes.len() + 1)].to_vec());
        run_agreement(truncated, 500);
    }

    #[test]
    fn arbitrary_bytes_decode_as_prost_decodes_them() {
        run_agreement(prop::collection::vec(any::<u8>(), 0..64), 2000);
    }

    /// The streamed text as `payload_json` takes it: `None` where streaming declines,
    /// and where the text is not UTF-8 (a key or string was not: streaming copies them
    /// unchecked), in which case the tree, which checks each one, must decline too.
    fn streamed(bytes: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        stream_object(bytes, 1, &mut out)?;
        match String::from_utf8(out) {
            Ok(text) => Some(text),
            Err(_) => {
                assert!(
                    from_tree(bytes).is_none(),
                    "the stream copied invalid UTF-8 where the tree answers: {bytes:?}"
                );
                None
            }
        }
    }

    /// A key or a string value that is not UTF-8 is copied by the stream but caught by
    /// the one check at the end, so the payload (and the fast path) declines, and the
    /// envelope goes to prost, which refuses it.
    #[test]
    fn invalid_utf8_in_a_key_or_a_string_makes_the_payload_decline() {
        // Struct { "k": Value { string_value: [byte] } } and Struct { [byte]: null }.
        let with_string =
            |byte: u8| vec![0x0A, 0x08, 0x0A, 0x01, b'k', 0x12, 0x03, 0x1A, 0x01, byte];
        let with_key = |byte: u8| vec![0x0A, 0x03, 0x0A, 0x01, byte];
        // A valid envelope without a payload, then the payload as field 3.
        let envelope = |payload: &[u8]| {
            let mut bytes = ProcessedEnvelope {
                end_device_id: "d".into(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                data: None,
                processed_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_001,
                    nanos: 0,
                }),
                organization_id: "o".into(),
            }
            .encode_to_vec();
            bytes.push(0x1A);
            bytes.push(u8::try_from(payload.len()).unwrap());
            bytes.extend_from_slice(payload);
            bytes
        };
        for build in [&with_string as &dyn Fn(u8) -> Vec<u8>, &with_key] {
            // The same shape with a valid byte takes the fast path, so it is the UTF-8
            // check that makes the difference below.
            assert!(decode_valid(&envelope(&build(b'x'))).is_some());

            let bytes = build(0x8A);
            let mut out = Vec::new();
            assert!(stream_object(&bytes, 1, &mut out).is_some(), "{bytes:?}");
            assert!(std::str::from_utf8(&out).is_err(), "{bytes:?}");
            assert_eq!(payload_json(&bytes), None, "{bytes:?}");
            assert!(decode_valid(&envelope(&bytes)).is_none(), "{bytes:?}");
            assert!(decode_with_prost(&envelope(&bytes)).is_err(), "{bytes:?}");
        }
    }

    fn from_tree(bytes: &[u8]) -> Option<String> {
        serde_json::to_string(&Node::Object(object(bytes, 1)?)).ok()
    }

    /// Streaming answers for fewer inputs than the tree (it also needs keys in order),
    /// and where it answers, it writes the same text.
    #[test]
    fn streaming_writes_what_the_tree_writes() {
        let mut runner = TestRunner::new(Config {
            cases: 2000,
            failure_persistence: None,
            ..Config::default()
        });
        let streamed_count = Cell::new(0);
        let tree_count = Cell::new(0);
        runner
            .run(&arb_struct_bytes(), |bytes| {
                let tree = from_tree(&bytes);
                tree_count.set(tree_count.get() + u32::from(tree.is_some()));
                if let Some(text) = streamed(&bytes) {
                    streamed_count.set(streamed_count.get() + 1);
                    prop_assert_eq!(Some(text), tree, "bytes: {:02x?}", bytes);
                }
                Ok(())
            })
            .unwrap();
        // Both paths are exercised, and the tree takes what streaming leaves.
        assert!(streamed_count.get() > 200, "{}", streamed_count.get());
        assert!(
            tree_count.get() > streamed_count.get(),
            "{}",
            tree_count.get()
        );
    }

    proptest! {
        /// A payload as prost encodes it is streamed (unless a key holds `%2E`).
        #[test]
        fn encoded_structs_are_streamed(data in testkit::strategies::arb_struct()) {
            let has_escaped_dot = format!("{data:?}").contains("%2E");
            let bytes = data.encode_to_vec();
            let text = streamed(&bytes);
            prop_assert!(text.is_some() || has_escaped_dot);
            if let Some(text) = text {
                prop_assert_eq!(Ok(text), crate::payload::struct_to_json(&data));
            }
        }

        /// Envelopes as producers encode them take the fast path (unless a key holds
        /// `%2E`, left to prost for the collision check) and give the same result.
        #[test]
        fn generated_envelopes_take_the_fast_path(parts in arb_envelope_parts()) {
            let has_escaped_dot = parts.data.as_ref().is_some_and(|data| {
                format!("{data:?}").contains("%2E")
            });
            let bytes = from_parts(parts).encode_to_vec();
            let fast = decode_valid(&bytes);
            prop_assert!(fast.is_some() || has_escaped_dot);
            agrees(&bytes)?;
        }
    }

    #[test]
    fn what_the_fast_path_leaves_to_prost() {
        let good = ProcessedEnvelope {
            end_device_id: "d".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            data: Some(crate::payload::json_str_to_struct(r#"{"a":[1,{"b":null}]}"#).unwrap()),
            processed_at: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 0,
            }),
            organization_id: "o".into(),
        };
        let bytes = good.encode_to_vec();
        assert_eq!(
            decode_valid(&bytes).unwrap().data_json(),
            r#"{"a":[1,{"b":null}]}"#
        );
        // An unknown field at the end: prost skips it, the fast path declines.
        let mut unknown = bytes.clone();
        unknown.extend([0x30, 0x01]); // field 6, varint 1
        assert!(decode_valid(&unknown).is_none());
        assert!(decode_with_prost(&unknown).is_ok());
        // A repeated string field: prost keeps the last.
        let mut repeated = bytes.clone();
        repeated.extend([0x2a, 0x01, b'p']);
        assert!(decode_valid(&repeated).is_none());
        assert_eq!(decode_with_prost(&repeated).unwrap().organization_id(), "p");
        // Nesting: each level of objects is three messages (Struct, map entry, Value).
        // The fast path takes the shallow ones and declines before prost's limit.
        let mut deep = prost_types::Struct::default();
        let mut prost_limit = None;
        for levels in 0..40 {
            let nested = ProcessedEnvelope {
                data: Some(deep.clone()),
                ..good.clone()
            }
            .encode_to_vec();
            if levels <= 20 {
                assert!(decode_valid(&nested).is_some(), "{levels} levels");
            }
            if decode_with_prost(&nested).is_err() && prost_limit.is_none() {
                prost_limit = Some(levels);
            }
            agrees(&nested).unwrap();
            let mut outer = prost_types::Struct::default();
            outer.fields.insert(
                "k".into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(deep)),
                },
            );
            deep = outer;
        }
        assert_eq!(prost_limit, Some(34), "prost's recursion limit moved");
    }
}
