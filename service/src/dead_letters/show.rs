//! `dead-letters show <sequence>`: one dead letter, its headers, and its envelope
//! decoded as far as it goes.

use std::fmt::Write as _;

use anyhow::Context;
use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use prost::Message;

use super::open;
use crate::config::NatsConfig;
use crate::envelope::{self, ProcessedEnvelope};
use crate::payload;

/// Bytes of an undecodable payload shown in hex.
const HEX_BYTES: usize = 64;

/// The dead letter at `sequence` of the dead-letter stream, as the command prints it.
pub async fn show(
    js: &jetstream::Context,
    config: &NatsConfig,
    sequence: u64,
) -> anyhow::Result<String> {
    let stream = open(js, config).await?;
    let message = match stream.get_raw_message(sequence).await {
        Ok(message) => message,
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => anyhow::bail!(
            "no dead letter at sequence {sequence} of {}; `ponix-writer dead-letters summary` shows the sequences there are",
            config.dead_letter_stream
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("reading dead letter {sequence}"));
        }
    };
    let mut out = format!(
        "dead letter {sequence} of {} (subject {}, {} bytes)\n\nheaders:\n",
        config.dead_letter_stream,
        message.subject,
        message.payload.len()
    );
    let mut headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), value.to_string()))
        })
        .collect();
    headers.sort();
    for (name, value) in headers {
        let _ = writeln!(out, "  {name}: {value}");
    }
    out.push('\n');
    out.push_str(&describe_payload(&message.payload));
    Ok(out)
}

/// The payload as far as it decodes: the protobuf fields, then whether the writer
/// would now accept it and why not.
pub fn describe_payload(bytes: &[u8]) -> String {
    let mut out = String::new();
    let decoded = match ProcessedEnvelope::decode(bytes) {
        Ok(decoded) => decoded,
        Err(error) => {
            let shown = &bytes[..bytes.len().min(HEX_BYTES)];
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(
                out,
                "payload: not a ProcessedEnvelope ({error}); first {} byte(s): {hex}",
                shown.len()
            );
            return out;
        }
    };
    let time = |t: &Option<prost_types::Timestamp>| match t {
        Some(t) => chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            .map_or_else(
                || format!("{}s {}ns (out of range)", t.seconds, t.nanos),
                |at| at.to_rfc3339(),
            ),
        None => "(missing)".to_owned(),
    };
    let data = match &decoded.data {
        Some(data) => payload::to_json_value(data).map_or_else(
            |error| format!("(not JSON: {error})"),
            |json| json.to_string(),
        ),
        None => "(missing)".to_owned(),
    };
    let _ = writeln!(out, "envelope:");
    let _ = writeln!(out, "  organization_id: {:?}", decoded.organization_id);
    let _ = writeln!(out, "  end_device_id:   {:?}", decoded.end_device_id);
    let _ = writeln!(out, "  occurred_at:     {}", time(&decoded.occurred_at));
    let _ = writeln!(out, "  processed_at:    {}", time(&decoded.processed_at));
    let _ = writeln!(out, "  data:            {data}");
    match envelope::decode(bytes) {
        Ok(_) => {
            let _ = writeln!(out, "valid now: the writer would store it");
        }
        Err(invalid) => {
            let _ = writeln!(
                out,
                "still invalid: {} ({})",
                invalid.reason.as_str(),
                invalid.detail
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_payload_is_shown_in_hex() {
        let text = describe_payload(&[0xff, 0xff, 0x01]);
        assert!(
            text.starts_with("payload: not a ProcessedEnvelope"),
            "{text}"
        );
        assert!(text.contains("first 3 byte(s): ffff01"), "{text}");
    }

    #[test]
    fn an_envelope_shows_its_fields_and_what_the_writer_says_now() {
        let envelope = crate::sample::envelope(crate::sample::Payload::Small, 3);
        let text = describe_payload(&envelope.encode_to_vec());
        assert!(
            text.contains(&format!("{:?}", envelope.end_device_id)),
            "{text}"
        );
        assert!(text.contains("valid now"), "{text}");

        let missing = ProcessedEnvelope {
            occurred_at: None,
            ..envelope
        };
        let text = describe_payload(&missing.encode_to_vec());
        assert!(text.contains("occurred_at:     (missing)"), "{text}");
        assert!(text.contains("still invalid: "), "{text}");
    }
}
