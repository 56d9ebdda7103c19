//! What the tests expect in the table and what is there: the expected row is computed
//! from the message by the fidelity contract, so every generated envelope can be
//! checked field by field, and the comparison lists every wrong row (at-least-once
//! copies allowed only where a test says so).

use std::collections::HashMap;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clickhouse::Row;
use ponix_writer::envelope::ProcessedEnvelope;
use ponix_writer::payload;
use prost_types::{Struct, Timestamp};
use serde::Deserialize;
use testkit::Endpoints;

use crate::support;

/// What a valid envelope must look like in the table, computed from the message
/// itself: `DateTime` keeps whole seconds (the floor; a Timestamp's nanos are never
/// negative), the payload comes back as the fidelity contract says, and a missing
/// payload is `{}`.
#[derive(Debug)]
pub struct ExpectedRow {
    organization_id: String,
    end_device_id: String,
    occurred_at: DateTime<Utc>,
    processed_at: DateTime<Utc>,
    data: Struct,
}

impl ExpectedRow {
    pub fn of(envelope: &ProcessedEnvelope) -> Self {
        let seconds = |t: Option<Timestamp>| {
            let t = t.expect("a valid envelope has both timestamps");
            DateTime::from_timestamp(t.seconds, 0).expect("in range")
        };
        Self {
            organization_id: envelope.organization_id.clone(),
            end_device_id: envelope.end_device_id.clone(),
            occurred_at: seconds(envelope.occurred_at),
            processed_at: seconds(envelope.processed_at),
            data: envelope
                .data
                .as_ref()
                .map(payload::expected_after_clickhouse)
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Row, Deserialize)]
pub struct StoredRow {
    pub organization_id: String,
    pub end_device_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub processed_at: DateTime<Utc>,
    pub data: String,
}

pub async fn stored_rows(endpoints: &Endpoints, database: &str) -> anyhow::Result<Vec<StoredRow>> {
    support::clickhouse(endpoints, database)
        .query("SELECT ?fields FROM processed_envelopes ORDER BY end_device_id")
        .fetch_all::<StoredRow>()
        .await
        .context("reading the stored rows")
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Duplicates {
    Forbidden,
    /// At-least-once: a row may be stored twice, but every copy must be right.
    Allowed,
}

/// Matches stored rows to expected ones by device id and compares every field.
/// Returns the number of duplicate rows.
pub fn compare_rows(
    expected: &[ExpectedRow],
    stored: &[StoredRow],
    duplicates: Duplicates,
) -> anyhow::Result<usize> {
    let mut by_device: HashMap<&str, Vec<&StoredRow>> = HashMap::new();
    for row in stored {
        by_device
            .entry(row.end_device_id.as_str())
            .or_default()
            .push(row);
    }
    let mut problems = Vec::new();
    let mut extra_copies = 0;
    for want in expected {
        let Some(copies) = by_device.remove(want.end_device_id.as_str()) else {
            problems.push(format!("{:?}: not stored", want.end_device_id));
            continue;
        };
        if copies.len() > 1 && duplicates == Duplicates::Forbidden {
            problems.push(format!(
                "{:?}: stored {} times",
                want.end_device_id,
                copies.len()
            ));
        }
        extra_copies += copies.len() - 1;
        for row in copies {
            problems.extend(row_differences(want, row));
        }
    }
    for device in by_device.keys() {
        problems.push(format!("{device:?}: stored but never sent"));
    }
    if !problems.is_empty() {
        bail!(
            "{} of {} expected rows are wrong ({} rows stored); the first ones:\n{}",
            problems.len(),
            expected.len(),
            stored.len(),
            problems
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(extra_copies)
}

fn row_differences(want: &ExpectedRow, got: &StoredRow) -> Vec<String> {
    let device = &want.end_device_id;
    let mut problems = Vec::new();
    if got.organization_id != want.organization_id {
        problems.push(format!(
            "{device:?}: organization_id {:?}, sent {:?}",
            got.organization_id, want.organization_id
        ));
    }
    if got.occurred_at != want.occurred_at {
        problems.push(format!(
            "{device:?}: occurred_at {}, expected {}",
            got.occurred_at, want.occurred_at
        ));
    }
    if got.processed_at != want.processed_at {
        problems.push(format!(
            "{device:?}: processed_at {}, expected {}",
            got.processed_at, want.processed_at
        ));
    }
    match payload::json_str_to_struct(&got.data) {
        Ok(data) if payload::structs_identical(&data, &want.data) => {}
        Ok(_) => problems.push(format!(
            "{device:?}: data {}, the contract promises {}",
            got.data,
            payload::to_json_value(&want.data)
                .map(|v| v.to_string())
                .unwrap_or_default()
        )),
        Err(error) => problems.push(format!(
            "{device:?}: data {:?} is not a JSON object: {error}",
            got.data
        )),
    }
    problems
}
