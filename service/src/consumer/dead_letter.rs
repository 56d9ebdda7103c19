//! Dead letters: the headers that say why and where from, a size that always fits
//! the server's `max_payload`, and the publish that must land before the original is
//! terminated (see "Dead letters" and "MaxDeliver" in the consumer's docs).

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;

use super::{Consumer, Delivery, is_last_delivery};

/// The reason code: one of [`envelope::InvalidReason::as_str`], [`REASON_MAX_DELIVER_EXCEEDED`]
/// or [`REASON_REJECTED_BY_CLICKHOUSE`].
pub const HEADER_REASON: &str = "Ponix-Dead-Letter-Reason";
/// Human-readable detail; control characters replaced, at most [`MAX_DETAIL_CHARS`].
pub const HEADER_DETAIL: &str = "Ponix-Dead-Letter-Detail";
pub const HEADER_ORIGINAL_SUBJECT: &str = "Ponix-Original-Subject";
pub const HEADER_STREAM_SEQUENCE: &str = "Ponix-Stream-Sequence";
pub const HEADER_DELIVERY_COUNT: &str = "Ponix-Delivery-Count";
/// Set only when the dead letter could not carry the original payload within the
/// server's `max_payload`: the original payload's size in bytes. The original stays
/// findable by [`HEADER_ORIGINAL_SUBJECT`] and [`HEADER_STREAM_SEQUENCE`].
pub const HEADER_PAYLOAD_DROPPED: &str = "Ponix-Dead-Letter-Payload-Dropped";

/// The message was valid but could not be stored before its last delivery.
pub const REASON_MAX_DELIVER_EXCEEDED: &str = "max_deliver_exceeded";
/// ClickHouse (or the row serializer) rejected this message's row on its own.
pub const REASON_REJECTED_BY_CLICKHOUSE: &str = "rejected_by_clickhouse";

/// Longest detail header; keeps a dead letter close to the original's size.
pub const MAX_DETAIL_CHARS: usize = 512;
/// A stable `Nats-Msg-Id` for the dead letter of one stream message.
pub fn dead_letter_message_id(stream: &str, stream_sequence: u64) -> String {
    format!("ponix-dead-letter:{stream}:{stream_sequence}")
}

/// Headers of a dead letter: the original's (minus `Nats-*`, which are the server's
/// or the publisher's instructions to JetStream), plus the Ponix-* headers.
pub fn dead_letter_headers(
    original: Option<&HeaderMap>,
    reason: &str,
    detail: &str,
    original_subject: &str,
    stream_sequence: u64,
    delivered: i64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let name_bytes: &[u8] = name.as_ref();
            if name_bytes.len() >= 5 && name_bytes[..5].eq_ignore_ascii_case(b"nats-") {
                continue;
            }
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers.insert(HEADER_REASON, header_value(reason, MAX_DETAIL_CHARS));
    headers.insert(HEADER_DETAIL, header_value(detail, MAX_DETAIL_CHARS));
    headers.insert(
        HEADER_ORIGINAL_SUBJECT,
        header_value(original_subject, usize::MAX),
    );
    headers.insert(HEADER_STREAM_SEQUENCE, stream_sequence.to_string());
    headers.insert(HEADER_DELIVERY_COUNT, delivered.to_string());
    headers
}

/// A header value must not contain CR or LF (they end the header in the wire
/// protocol); replace every control character and cut to at most `max` characters,
/// the last of which is `…` when the text was cut.
fn header_value(text: &str, max: usize) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if text.chars().nth(max).is_none() {
        return text.chars().map(clean).collect();
    }
    let mut out: String = text
        .chars()
        .take(max.saturating_sub(1))
        .map(clean)
        .collect();
    out.push('…');
    out
}

/// The bytes a header block takes on the wire, as the client and the server count it
/// against `max_payload`: `NATS/1.0\r\n`, each `Name: value\r\n`, then `\r\n`.
/// (async-nats computes the same, but only crate-privately.)
fn headers_wire_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        let name: &[u8] = name.as_ref();
        for value in values {
            len += name.len() + ": \r\n".len() + value.as_str().len();
        }
    }
    len
}

/// Makes a dead letter fit the server's `max_payload`, so that a message close to
/// that size can still be dead-lettered (the extra headers would otherwise make its
/// publish fail on every try). In order, until it fits: cut the detail header; drop
/// the payload (saying so in [`HEADER_PAYLOAD_DROPPED`]); drop the headers copied
/// from the original. The `Ponix-*` headers naming the original subject and stream
/// sequence, and the `Nats-*` ones that route and deduplicate it, are always kept.
fn fit_dead_letter(
    mut headers: HeaderMap,
    payload: bytes::Bytes,
    max_payload: usize,
) -> (HeaderMap, bytes::Bytes) {
    let size = |h: &HeaderMap, p: &bytes::Bytes| headers_wire_len(h) + p.len();
    let excess = size(&headers, &payload).saturating_sub(max_payload);
    if excess == 0 {
        return (headers, payload);
    }
    let detail = headers
        .get(HEADER_DETAIL)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    // `…` takes 3 bytes; cutting by characters of up to 4 bytes each keeps this safe.
    let keep_bytes = detail.len().saturating_sub(excess + 3);
    let mut cut = String::new();
    for c in detail.chars() {
        if cut.len() + c.len_utf8() > keep_bytes {
            break;
        }
        cut.push(c);
    }
    cut.push('…');
    headers.insert(HEADER_DETAIL, cut);
    if size(&headers, &payload) <= max_payload {
        return (headers, payload);
    }
    headers.insert(HEADER_PAYLOAD_DROPPED, payload.len().to_string());
    let payload = bytes::Bytes::new();
    if size(&headers, &payload) <= max_payload {
        return (headers, payload);
    }
    let mut kept = HeaderMap::new();
    for (name, values) in headers.iter() {
        let bytes: &[u8] = name.as_ref();
        let ours = |prefix: &[u8]| {
            bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        if ours(b"ponix-") || ours(b"nats-") {
            for value in values {
                kept.append(name.clone(), value.clone());
            }
        }
    }
    (kept, payload)
}

impl Consumer {
    /// Publishes the dead letters; a failed publish on a message's last delivery is
    /// retried with backoff (re-ensuring the dead-letter stream in between) until it
    /// lands, because a NAK there would leave the message in neither the table nor
    /// the dead-letter stream. Shutdown ends that only through the drain grace.
    pub(super) async fn dead_letter_holding(
        &self,
        deliveries: &[Delivery],
        dead: &[(usize, &'static str, String)],
    ) -> Vec<Result<(), String>> {
        let mut results = self.dead_letter(deliveries, dead).await;
        let count_failures = |results: &[Result<(), String>]| {
            for _ in results.iter().filter(|r| r.is_err()) {
                self.metrics.dead_letter_failed();
            }
        };
        count_failures(&results);
        let mut attempt: u32 = 0;
        loop {
            if results.iter().any(Result::is_err) {
                // Perhaps the dead-letter stream was deleted: recreate it (idempotent)
                // so that the retry, or the NAKed messages when they come back, find it.
                if let Err(error) =
                    crate::streams::ensure_dead_letter_stream(&self.js, &self.config).await
                {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "re-ensuring the dead-letter stream failed"
                    );
                }
            }
            let last: Vec<usize> = results
                .iter()
                .enumerate()
                .filter(|(k, result)| {
                    result.is_err()
                        && is_last_delivery(
                            deliveries[dead[*k].0].delivered,
                            self.config.max_deliver,
                        )
                })
                .map(|(k, _)| k)
                .collect();
            if last.is_empty() {
                return results;
            }
            attempt = attempt.saturating_add(1);
            let pause = self.backoff(i64::from(attempt));
            tracing::error!(
                messages = last.len(),
                attempt,
                retry_in = ?pause,
                error = results[last[0]].as_ref().err().map(String::as_str).unwrap_or_default(),
                "dead-letter publish failed on the messages' last delivery; retrying (they stay in progress)"
            );
            tokio::time::sleep(pause).await;
            let retry: Vec<(usize, &'static str, String)> =
                last.iter().map(|&k| dead[k].clone()).collect();
            let retried = self.dead_letter(deliveries, &retry).await;
            count_failures(&retried);
            for (k, result) in last.into_iter().zip(retried) {
                results[k] = result;
            }
        }
    }

    /// Publishes the dead letters and awaits JetStream's acknowledgement of each.
    /// The publishes go out back to back; the acknowledgements are awaited together.
    async fn dead_letter(
        &self,
        deliveries: &[Delivery],
        dead: &[(usize, &'static str, String)],
    ) -> Vec<Result<(), String>> {
        let max_payload = self.js.client().max_payload();
        let mut acks = Vec::with_capacity(dead.len());
        for (index, reason, detail) in dead {
            let delivery = &deliveries[*index];
            let mut headers = dead_letter_headers(
                delivery.message.headers.as_ref(),
                reason,
                detail,
                delivery.message.subject.as_str(),
                delivery.stream_sequence,
                delivery.delivered,
            );
            // Set here rather than through the publish builder, so that the size
            // check below sees every header that goes on the wire.
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                dead_letter_message_id(&self.config.stream, delivery.stream_sequence),
            );
            headers.insert(
                async_nats::header::NATS_EXPECTED_STREAM,
                self.config.dead_letter_stream.as_str(),
            );
            let (headers, payload) =
                fit_dead_letter(headers, delivery.message.payload.clone(), max_payload);
            if headers.get(HEADER_PAYLOAD_DROPPED).is_some() {
                tracing::warn!(
                    stream_sequence = delivery.stream_sequence,
                    size = delivery.message.payload.len(),
                    max_payload,
                    "the dead letter cannot carry the original payload within max_payload; \
                     it names the original's subject and stream sequence instead"
                );
            }
            let publish = PublishMessage::build().payload(payload).headers(headers);
            acks.push(
                self.js
                    .send_publish(self.config.dead_letter_subject.clone(), publish)
                    .await,
            );
        }
        futures::future::join_all(acks.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            }
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_headers_carry_reason_origin_and_original_headers() {
        let mut original = HeaderMap::new();
        original.insert("Trace-Id", "abc");
        original.insert("Nats-Msg-Id", "producer-1");
        original.insert("Nats-Expected-Stream", "other");
        let headers = dead_letter_headers(
            Some(&original),
            "missing_timestamp",
            "occurred_at is missing",
            "processed_envelopes.dev1",
            42,
            3,
        );
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get(HEADER_REASON).as_deref(), Some("missing_timestamp"));
        assert_eq!(
            get(HEADER_DETAIL).as_deref(),
            Some("occurred_at is missing")
        );
        assert_eq!(
            get(HEADER_ORIGINAL_SUBJECT).as_deref(),
            Some("processed_envelopes.dev1")
        );
        assert_eq!(get(HEADER_STREAM_SEQUENCE).as_deref(), Some("42"));
        assert_eq!(get(HEADER_DELIVERY_COUNT).as_deref(), Some("3"));
        assert_eq!(get("Trace-Id").as_deref(), Some("abc"));
        assert_eq!(get("Nats-Msg-Id"), None);
        assert_eq!(get("Nats-Expected-Stream"), None);
    }

    #[test]
    fn dead_letter_detail_is_single_line_and_bounded() {
        let detail = format!("line one\r\nline two\t{}", "x".repeat(2000));
        let headers = dead_letter_headers(None, "decode_failed", &detail, "s", 1, 1);
        let value = headers
            .get(HEADER_DETAIL)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(!value.contains('\r') && !value.contains('\n'), "{value:?}");
        assert!(value.starts_with("line one  line two "));
        assert_eq!(value.chars().count(), MAX_DETAIL_CHARS);
        assert!(value.ends_with('…'));
    }

    fn dead_letter_for(payload_len: usize, detail: &str) -> (HeaderMap, bytes::Bytes) {
        let mut original = HeaderMap::new();
        original.insert("Trace-Id", "t".repeat(200).as_str());
        let mut headers = dead_letter_headers(
            Some(&original),
            "decode_failed",
            detail,
            "processed_envelopes.dev1",
            42,
            20,
        );
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            "ponix-dead-letter:S:42",
        );
        (headers, bytes::Bytes::from(vec![b'x'; payload_len]))
    }

    #[test]
    fn headers_wire_len_matches_the_encoding_the_server_counts() {
        let (headers, _) = dead_letter_for(0, "some detail");
        let mut wire = String::from("NATS/1.0\r\n");
        for (name, values) in headers.iter() {
            for value in values {
                wire.push_str(&format!("{}: {}\r\n", name, value.as_str()));
            }
        }
        wire.push_str("\r\n");
        assert_eq!(headers_wire_len(&headers), wire.len());
    }

    #[test]
    fn a_dead_letter_that_fits_is_left_alone() {
        let (headers, payload) = dead_letter_for(1000, "detail");
        let max = headers_wire_len(&headers) + payload.len();
        let (fitted, kept) = fit_dead_letter(headers.clone(), payload.clone(), max);
        assert_eq!(kept, payload);
        assert_eq!(fitted.get(HEADER_DETAIL), headers.get(HEADER_DETAIL));
        assert!(fitted.get(HEADER_PAYLOAD_DROPPED).is_none());
    }

    #[test]
    fn a_dead_letter_near_max_payload_cuts_its_detail_first() {
        let detail = "d".repeat(MAX_DETAIL_CHARS * 2);
        let (headers, payload) = dead_letter_for(10_000, &detail);
        let max = headers_wire_len(&headers) + payload.len() - 100;
        let (fitted, kept) = fit_dead_letter(headers, payload.clone(), max);
        assert_eq!(
            kept, payload,
            "the payload is kept while cutting the detail suffices"
        );
        assert!(headers_wire_len(&fitted) + kept.len() <= max);
        let detail = fitted
            .get(HEADER_DETAIL)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(
            detail.ends_with('…') && detail.starts_with("ddd"),
            "{detail}"
        );
    }

    #[test]
    fn a_payload_at_max_payload_is_dropped_and_the_original_stays_named() {
        let (headers, payload) = dead_letter_for(1024 * 1024, "detail");
        let max = 1024 * 1024;
        let (fitted, kept) = fit_dead_letter(headers, payload, max);
        assert!(kept.is_empty());
        assert!(headers_wire_len(&fitted) + kept.len() <= max);
        let get = |name: &str| fitted.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get(HEADER_PAYLOAD_DROPPED).as_deref(), Some("1048576"));
        assert_eq!(
            get(HEADER_ORIGINAL_SUBJECT).as_deref(),
            Some("processed_envelopes.dev1")
        );
        assert_eq!(get(HEADER_STREAM_SEQUENCE).as_deref(), Some("42"));
        // Dropping the payload was enough: the original's own headers stay.
        assert!(get("Trace-Id").is_some());
    }

    #[test]
    fn when_even_the_headers_do_not_fit_only_ours_are_kept() {
        let (headers, payload) = dead_letter_for(5000, "detail");
        // Room for the Ponix-* and Nats-* headers, not for the 200-byte Trace-Id.
        let max = headers_wire_len(&headers) - 150;
        let (fitted, kept) = fit_dead_letter(headers, payload, max);
        assert!(kept.is_empty());
        assert!(
            headers_wire_len(&fitted) <= max,
            "{} > {max}",
            headers_wire_len(&fitted)
        );
        assert!(fitted.get("Trace-Id").is_none());
        assert!(fitted.get(HEADER_STREAM_SEQUENCE).is_some());
        assert!(fitted.get(async_nats::header::NATS_MESSAGE_ID).is_some());
    }

    #[test]
    fn dead_letter_ids_are_stable_per_stream_message() {
        assert_eq!(
            dead_letter_message_id("processed_envelopes", 7),
            "ponix-dead-letter:processed_envelopes:7"
        );
    }
}
