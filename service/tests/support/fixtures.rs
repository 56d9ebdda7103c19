//! Loads `fixtures/`: envelopes in the protobuf JSON mapping, which the harness
//! encodes, and raw `.bin` files published as they are.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::DateTime;
use ponix_writer::envelope::ProcessedEnvelope;
use prost::Message as _;
use prost_types::Timestamp;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Fixture {
    /// The file stem, e.g. `01_sensor_reading`.
    pub name: String,
    pub valid: bool,
    /// The bytes to publish.
    pub bytes: Vec<u8>,
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Every fixture, valid ones first, each group in file-name order.
pub fn load_all() -> anyhow::Result<Vec<Fixture>> {
    let mut all = load_dir(&fixtures_dir().join("valid"), true)?;
    all.extend(load_dir(&fixtures_dir().join("invalid"), false)?);
    Ok(all)
}

fn load_dir(dir: &Path, valid: bool) -> anyhow::Result<Vec<Fixture>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    paths
        .into_iter()
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("json" | "bin")
            )
        })
        .map(|path| {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = if path.extension().is_some_and(|ext| ext == "bin") {
                std::fs::read(&path)?
            } else {
                let text = std::fs::read_to_string(&path)?;
                encode_json_mapping(&text)
                    .with_context(|| format!("{} is not a ProcessedEnvelope", path.display()))?
                    .encode_to_vec()
            };
            Ok(Fixture { name, valid, bytes })
        })
        .collect()
}

/// Parses the protobuf JSON mapping of `ProcessedEnvelope`: lowerCamelCase or
/// original field names, RFC 3339 timestamps, `data` as a JSON object.
pub fn encode_json_mapping(text: &str) -> anyhow::Result<ProcessedEnvelope> {
    let Value::Object(fields) = serde_json::from_str(text)? else {
        bail!("expected a JSON object");
    };
    let mut envelope = ProcessedEnvelope::default();
    for (key, value) in &fields {
        match key.as_str() {
            "organizationId" | "organization_id" => envelope.organization_id = string(key, value)?,
            "endDeviceId" | "end_device_id" => envelope.end_device_id = string(key, value)?,
            "occurredAt" | "occurred_at" => envelope.occurred_at = Some(timestamp(key, value)?),
            "processedAt" | "processed_at" => envelope.processed_at = Some(timestamp(key, value)?),
            "data" => {
                envelope.data = Some(
                    ponix_writer::payload::json_to_struct(value)
                        .with_context(|| format!("field {key}"))?,
                )
            }
            other => bail!("unknown field {other:?}"),
        }
    }
    Ok(envelope)
}

fn string(key: &str, value: &Value) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("field {key} must be a string"))
}

fn timestamp(key: &str, value: &Value) -> anyhow::Result<Timestamp> {
    let text = value
        .as_str()
        .with_context(|| format!("field {key} must be an RFC 3339 string"))?;
    let parsed =
        DateTime::parse_from_rfc3339(text).with_context(|| format!("field {key}: {text:?}"))?;
    Ok(Timestamp {
        seconds: parsed.timestamp(),
        nanos: parsed.timestamp_subsec_nanos() as i32,
    })
}
