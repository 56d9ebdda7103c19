//! The writer's per-envelope hot path, step by step, on three payloads.
//!
//! | step | what runs |
//! |---|---|
//! | `decode` | prost: wire bytes → `ProcessedEnvelope` (the `Struct` included) |
//! | `validate` | the envelope rules without the payload (ids, timestamps) |
//! | `convert` | `payload::struct_to_json`: `Struct` → JSON text, with the payload rules (non-finite numbers, key collisions) |
//! | `rowbinary` | the row's serde output as RowBinary, by [`RowBinary`] below |
//! | `total` | all of it, as the consumer runs it: `envelope::decode`, `ProcessedEnvelopeRow::new`, RowBinary |
//! | `total_prost` | the same through prost and `envelope::validate`, the path `envelope::decode` falls back to (and the only one before the fast path) |
//!
//! `decode`, `validate` and `convert` are the steps of the prost path; `envelope::decode`
//! reads valid envelopes straight from the wire instead (`envelope/wire.rs`), so `total`
//! is less than their sum. Comparing `total` with `total_prost` in one run keeps the
//! comparison fair on a busy machine.
//!
//! The payloads are [`ponix_writer::sample`]'s (small: 5 fields, medium: 30 nested,
//! large: 200), the same shapes `cargo xtask bench` publishes.
//!
//! Throughput is in bytes of the encoded envelope (what arrives from NATS).
//!
//! clickhouse-rs does not expose its RowBinary serializer, so [`RowBinary`] is a minimal
//! one with the same encoding for the row's field types (`String`: LEB128 length then
//! the bytes; `DateTime`: u32 little-endian; `UInt64`: little-endian). clickhouse-rs' own serializer also checks
//! each field against the table's column types (RowBinaryWithNamesAndTypes) and
//! compresses the body with LZ4; neither is measured here.
//!
//! Run: `cargo bench -p ponix-writer --bench hot_path` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ponix_writer::envelope::{self, ProcessedEnvelope};
use ponix_writer::payload;
use ponix_writer::row::ProcessedEnvelopeRow;
use ponix_writer::sample::{self, Payload};
use prost::Message as _;
use serde::Serialize as _;

/// A stream sequence for the rows.
const SEQUENCE: u64 = 1_234_567;

fn hot_path(c: &mut Criterion) {
    check_rowbinary();
    for payload in Payload::ALL {
        let name = payload.name();
        let message = sample::envelope(payload, 0);
        let data = message.data.clone().expect("samples have a payload");
        let bytes = message.encode_to_vec();
        let without_data = ProcessedEnvelope {
            data: None,
            ..message.clone()
        };
        let row = ProcessedEnvelopeRow::new(envelope::decode(&bytes).expect("valid"), SEQUENCE);

        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(bytes.len() as u64));

        group.bench_function("decode", |b| {
            b.iter(|| ProcessedEnvelope::decode(black_box(&bytes[..])).expect("decodes"));
        });
        group.bench_function("validate", |b| {
            b.iter_batched(
                || without_data.clone(),
                |e| envelope::validate(black_box(e)).expect("valid"),
                BatchSize::SmallInput,
            );
        });
        group.bench_function("convert", |b| {
            b.iter(|| payload::struct_to_json(black_box(&data)).expect("finite"));
        });
        let mut out = Vec::with_capacity(64 * 1024);
        group.bench_function("rowbinary", |b| {
            b.iter(|| {
                out.clear();
                black_box(&row)
                    .serialize(RowBinary(&mut out))
                    .expect("serializes");
                black_box(out.len())
            });
        });
        group.bench_function("total", |b| {
            b.iter(|| {
                out.clear();
                let valid = envelope::decode(black_box(&bytes)).expect("valid");
                ProcessedEnvelopeRow::new(valid, SEQUENCE)
                    .serialize(RowBinary(&mut out))
                    .expect("serializes");
                black_box(out.len())
            });
        });
        group.bench_function("total_prost", |b| {
            b.iter(|| {
                out.clear();
                let message = ProcessedEnvelope::decode(black_box(&bytes[..])).expect("decodes");
                let valid = envelope::validate(message).expect("valid");
                ProcessedEnvelopeRow::new(valid, SEQUENCE)
                    .serialize(RowBinary(&mut out))
                    .expect("serializes");
                black_box(out.len())
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = hot_path
}
criterion_main!(benches);

// ---------------------------------------------------------------------------------------
// RowBinary

/// Serializes a row as RowBinary into a buffer: fields in order, a `str` as its LEB128
/// length and bytes, a `u32` or `u64` little-endian. Other types are not needed by the row and
/// are refused.
struct RowBinary<'a>(&'a mut Vec<u8>);

#[derive(Debug)]
struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl serde::ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(format!("RowBinary bench serializer: {what}")))
}

fn put_leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

impl<'a> serde::Serializer for RowBinary<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = serde::ser::Impossible<(), Unsupported>;
    type SerializeTuple = serde::ser::Impossible<(), Unsupported>;
    type SerializeTupleStruct = serde::ser::Impossible<(), Unsupported>;
    type SerializeTupleVariant = serde::ser::Impossible<(), Unsupported>;
    type SerializeMap = serde::ser::Impossible<(), Unsupported>;
    type SerializeStruct = Self;
    type SerializeStructVariant = serde::ser::Impossible<(), Unsupported>;

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        put_leb128(self.0, v.len() as u64);
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }

    fn serialize_bool(self, _: bool) -> Result<(), Unsupported> {
        unsupported("bool")
    }
    fn serialize_i8(self, _: i8) -> Result<(), Unsupported> {
        unsupported("i8")
    }
    fn serialize_i16(self, _: i16) -> Result<(), Unsupported> {
        unsupported("i16")
    }
    fn serialize_i32(self, _: i32) -> Result<(), Unsupported> {
        unsupported("i32")
    }
    fn serialize_i64(self, _: i64) -> Result<(), Unsupported> {
        unsupported("i64")
    }
    fn serialize_u8(self, _: u8) -> Result<(), Unsupported> {
        unsupported("u8")
    }
    fn serialize_u16(self, _: u16) -> Result<(), Unsupported> {
        unsupported("u16")
    }
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
        unsupported("f32")
    }
    fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
        unsupported("f64")
    }
    fn serialize_char(self, _: char) -> Result<(), Unsupported> {
        unsupported("char")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
        unsupported("bytes")
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        unsupported("none")
    }
    fn serialize_some<T: ?Sized + serde::Serialize>(self, _: &T) -> Result<(), Unsupported> {
        unsupported("some")
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        unsupported("unit")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        unsupported("unit struct")
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), Unsupported> {
        unsupported("unit variant")
    }
    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        unsupported("newtype variant")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("seq")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("tuple")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("tuple struct")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("tuple variant")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("map")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("struct variant")
    }
}

impl serde::ser::SerializeStruct for RowBinary<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(RowBinary(self.0))
    }

    fn end(self) -> Result<(), Unsupported> {
        Ok(())
    }
}

/// The bench's serializer writes what ClickHouse's RowBinary expects for this row.
/// Checked on every run (a `#[test]` would not run in a `harness = false` target).
fn check_rowbinary() {
    use chrono::DateTime;
    let row = ProcessedEnvelopeRow {
        organization_id: "o".to_owned(),
        end_device_id: "d".repeat(200),
        occurred_at: DateTime::from_timestamp(1, 0).unwrap(),
        processed_at: DateTime::from_timestamp(0x0102_0304, 0).unwrap(),
        data: "{}".to_owned(),
        stream_sequence: 0x0102_0304_0506_0708,
    };
    let mut out = Vec::new();
    row.serialize(RowBinary(&mut out)).unwrap();
    let mut expected = vec![1, b'o', 200, 1];
    expected.extend(std::iter::repeat_n(b'd', 200));
    expected.extend([1, 0, 0, 0, 4, 3, 2, 1, 2, b'{', b'}']);
    expected.extend([8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(out, expected);
}
