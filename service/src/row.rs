//! The ClickHouse row for one envelope.

use chrono::{DateTime, Utc};

use crate::envelope::ValidEnvelope;

/// The columns the writer inserts, as `(name, ClickHouse type)` in [`ProcessedEnvelopeRow`]'s
/// field order: the types the migrations create, and what `ponix-writer check` compares
/// the table with. A test ties the names to the struct's fields.
pub const COLUMNS: [(&str, &str); 6] = [
    ("organization_id", "String"),
    ("end_device_id", "String"),
    ("occurred_at", "DateTime('UTC')"),
    ("processed_at", "DateTime('UTC')"),
    ("data", "JSON"),
    ("stream_sequence", "UInt64"),
];

/// A row of the `processed_envelopes` table. Fields are in the table's column order:
/// RowBinary is positional, so serde's field order is the wire order.
///
/// `stream_sequence` is the JetStream stream sequence of the message the row came from:
/// the row's identity. The table is a `ReplacingMergeTree` whose sorting key ends with
/// it, so a message stored twice (redelivered after its INSERT committed but before
/// its ack arrived) is one row once merged, and one row to queries with `FINAL`.
///
/// The timestamps need clickhouse's `DateTime` serde adapter (a u32 of seconds); without
/// it the client fails with "Cannot read all data". `data` is the payload's JSON text for
/// the `JSON` column, which needs [`crate::payload::CLICKHOUSE_JSON_SETTINGS`].
#[derive(Debug, Clone, PartialEq, clickhouse::Row, serde::Serialize, serde::Deserialize)]
pub struct ProcessedEnvelopeRow {
    pub organization_id: String,
    pub end_device_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub processed_at: DateTime<Utc>,
    pub data: String,
    pub stream_sequence: u64,
}

impl ProcessedEnvelopeRow {
    /// The row for `envelope`, which JetStream delivered as message `stream_sequence`
    /// of its stream.
    pub fn new(envelope: ValidEnvelope, stream_sequence: u64) -> Self {
        let ValidEnvelope {
            organization_id,
            end_device_id,
            occurred_at,
            processed_at,
            data,
        } = envelope;
        Self {
            organization_id,
            end_device_id,
            occurred_at,
            processed_at,
            data,
            stream_sequence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, ProcessedEnvelope};
    use prost::Message as _;
    use prost_types::Timestamp;

    fn row() -> ProcessedEnvelopeRow {
        let message = ProcessedEnvelope {
            end_device_id: "dev-7".into(),
            occurred_at: Some(Timestamp {
                seconds: 100,
                nanos: 5,
            }),
            data: Some(crate::payload::json_str_to_struct(r#"{"x":[1]}"#).unwrap()),
            processed_at: Some(Timestamp {
                seconds: 200,
                nanos: 0,
            }),
            organization_id: "org-3".into(),
        };
        ProcessedEnvelopeRow::new(envelope::decode(&message.encode_to_vec()).unwrap(), 42)
    }

    #[test]
    fn each_field_lands_in_its_column() {
        let row = row();
        assert_eq!(row.organization_id, "org-3");
        assert_eq!(row.end_device_id, "dev-7");
        assert_eq!(row.occurred_at.timestamp(), 100);
        assert_eq!(row.processed_at.timestamp(), 200);
        assert_eq!(row.data, r#"{"x":[1]}"#);
        assert_eq!(row.stream_sequence, 42);
    }

    /// clickhouse-rs does not expose its RowBinary serializer, but it drives serde, so the
    /// sequence serde emits is what goes on the wire: the columns in table order, and each
    /// `DateTime` as its u32 of seconds. serde_json writes that sequence as it comes.
    #[test]
    fn serde_emits_the_columns_in_table_order_with_datetimes_as_seconds() {
        assert_eq!(
            serde_json::to_string(&row()).unwrap(),
            r#"{"organization_id":"org-3","end_device_id":"dev-7","occurred_at":100,"processed_at":200,"data":"{\"x\":[1]}","stream_sequence":42}"#
        );
    }

    #[test]
    fn the_column_list_names_the_fields_in_order() {
        let value = serde_json::to_value(row()).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
        // serde emits the fields in wire order; the map above sorts them.
        let text = serde_json::to_string(&row()).unwrap();
        let at = |name: &str| text.find(&format!("\"{name}\":")).unwrap();
        assert!(
            names.windows(2).all(|pair| at(pair[0]) < at(pair[1])),
            "{text}"
        );
        fields.sort_unstable();
        names.sort_unstable();
        assert_eq!(fields, names);
    }

    /// Why `envelope::validate` checks the range: the adapter refuses times a `DateTime`
    /// cannot hold, which would fail the whole insert.
    #[test]
    fn times_outside_a_datetime_fail_to_serialize() {
        let mut row = row();
        row.processed_at = DateTime::from_timestamp(-1, 0).unwrap();
        assert!(serde_json::to_string(&row).is_err());
    }

    #[test]
    fn the_row_round_trips_through_serde() {
        let row = row();
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(
            serde_json::from_str::<ProcessedEnvelopeRow>(&json).unwrap(),
            row
        );
    }
}
