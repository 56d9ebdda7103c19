//! Invalid messages leave the stream as dead letters that carry everything needed to
//! find and replay the original (reason, subject, sequence, delivery count, payload and
//! the original's own headers), while the valid messages of the same batch are stored;
//! and a dead letter that would not fit `max_payload` still lands, without its payload,
//! on its first delivery.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream;
use ponix_writer::consumer::{
    HEADER_DELIVERY_COUNT, HEADER_DETAIL, HEADER_ORIGINAL_SUBJECT, HEADER_PAYLOAD_DROPPED,
    HEADER_REASON, HEADER_STREAM_SEQUENCE,
};
use testkit::Endpoints;

use crate::envelopes::{invalid_messages, simple_envelopes};
use crate::metrics::expect_metric;
use crate::names::{Names, publish_all};
use crate::rows::{Duplicates, ExpectedRow, compare_rows, stored_rows};

/// One batch interleaves 30 valid envelopes with one message for every reason a
/// message is invalid. The valid ones are stored (field by field); each invalid one is
/// on the dead-letter stream with its reason, original subject, stream sequence,
/// delivery count 1, its payload and its own headers; nothing stays pending; the
/// metrics agree.
pub async fn a_mixed_batch_stores_the_valid_and_dead_letters_the_invalid(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("mixed");
    let js = names.setup_with_stream(&endpoints).await?;

    let valid = simple_envelopes(30, "mixed");
    let invalid = invalid_messages();
    // Interleaved: an invalid message after every third valid one, the rest at the end.
    let mut messages: Vec<(String, Vec<u8>, HeaderMap, Option<&'static str>)> = Vec::new();
    let mut invalid_iter = invalid.iter();
    for (i, envelope) in valid.iter().enumerate() {
        let (subject, bytes, headers) = names.message(envelope);
        messages.push((subject, bytes, headers, None));
        if i % 3 == 2
            && let Some((name, reason, bytes)) = invalid_iter.next()
        {
            messages.push((
                names.subject(name),
                bytes.clone(),
                trace_headers(name),
                Some(*reason),
            ));
        }
    }
    for (name, reason, bytes) in invalid_iter {
        messages.push((
            names.subject(name),
            bytes.clone(),
            trace_headers(name),
            Some(*reason),
        ));
    }
    let sequences = publish_all(
        &js,
        messages
            .iter()
            .map(|(s, b, h, _)| (s.clone(), b.clone(), h.clone()))
            .collect(),
    )
    .await?;

    // Published first, so that the writer's first pull takes them all as one batch.
    let writer = names
        .start_writer(
            &js,
            "integration-mixed",
            &endpoints,
            &names.writer_vars(&[
                // One pull of exactly this size returns as soon as it is full.
                ("PONIX_NATS_BATCH_SIZE", messages.len().to_string()),
                ("PONIX_NATS_BATCH_WAIT_SECS", "2".into()),
            ]),
        )
        .await?;
    names.wait_drained(&js, &writer).await?;

    let rows = stored_rows(&endpoints, &names.database).await?;
    let expected: Vec<ExpectedRow> = valid.iter().map(ExpectedRow::of).collect();
    compare_rows(&expected, &rows, Duplicates::Forbidden)?;

    let letters = dead_letters(&js, &names.dead_letter_stream).await?;
    ensure!(
        letters.len() == invalid.len(),
        "{} dead letters for {} invalid messages: {letters:#?}",
        letters.len(),
        invalid.len()
    );
    let by_sequence: HashMap<String, &DeadLetter> = letters
        .iter()
        .map(|letter| (letter.header(HEADER_STREAM_SEQUENCE), letter))
        .collect();
    ensure!(
        by_sequence.len() == letters.len(),
        "two dead letters name the same sequence: {letters:#?}"
    );
    for ((subject, bytes, _, reason), sequence) in messages.iter().zip(&sequences) {
        let Some(reason) = reason else {
            ensure!(
                !by_sequence.contains_key(&sequence.to_string()),
                "the valid message at sequence {sequence} was dead-lettered"
            );
            continue;
        };
        let letter = by_sequence.get(&sequence.to_string()).with_context(|| {
            format!("no dead letter for {subject} (sequence {sequence}); letters: {letters:#?}")
        })?;
        let context = || format!("dead letter of {subject}: {letter:#?}");
        ensure!(letter.subject == names.dead_letter_subject, "{}", context());
        ensure!(
            letter.header(HEADER_REASON) == *reason,
            "reason should be {reason}: {}",
            context()
        );
        ensure!(
            letter.header(HEADER_ORIGINAL_SUBJECT) == *subject,
            "{}",
            context()
        );
        ensure!(letter.header(HEADER_DELIVERY_COUNT) == "1", "{}", context());
        ensure!(
            !letter.header(HEADER_DETAIL).is_empty(),
            "no detail: {}",
            context()
        );
        // The original's own headers travel along; JetStream's are not copied.
        let name = subject.rsplit('.').next().unwrap_or_default();
        ensure!(letter.header("Ponix-Test-Message") == name, "{}", context());
        ensure!(
            letter.header("Nats-Msg-Id")
                == format!("ponix-dead-letter:{}:{sequence}", names.stream),
            "{}",
            context()
        );
        ensure!(
            letter.payload == *bytes,
            "the payload changed: {}",
            context()
        );
    }

    let metrics = writer.metrics()?;
    let total = messages.len() as f64;
    expect_metric(&metrics, "ponix_writer_messages_received_total", &[], total)?;
    expect_metric(&metrics, "ponix_writer_redeliveries_total", &[], 0.0)?;
    // One batch, and it counts as committed: every valid row of it went in.
    expect_metric(&metrics, "ponix_writer_batches_total", &[], 1.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_batches_total",
        &[("outcome", "committed")],
        1.0,
    )?;
    expect_metric(
        &metrics,
        "ponix_writer_rows_inserted_total",
        &[],
        valid.len() as f64,
    )?;
    expect_metric(&metrics, "ponix_writer_acks_total", &[], valid.len() as f64)?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_dead_lettered_total",
        &[],
        invalid.len() as f64,
    )?;
    expect_metric(
        &metrics,
        "ponix_writer_dead_letter_failures_total",
        &[],
        0.0,
    )?;
    let mut per_reason: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, reason, _) in &invalid {
        *per_reason.entry(reason).or_default() += 1.0;
    }
    for (reason, count) in per_reason {
        expect_metric(
            &metrics,
            "ponix_writer_dead_lettered_total",
            &[("reason", reason)],
            count,
        )?;
    }

    names.stop_writer(writer).await?;
    names.cleanup(&js, &endpoints).await
}

/// An undecodable message of nearly `max_payload` bytes: its dead letter, with the
/// writer's headers added, would not fit, and before it was fitted every publish
/// failed and the message was NAKed until MaxDeliver left it undelivered. It must land
/// on the dead-letter stream without its payload, naming where the original is, on
/// its first delivery; a valid message published with it is stored.
pub async fn a_dead_letter_of_a_message_near_max_payload_lands(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("maxpayload");
    let js = names.setup_with_stream(&endpoints).await?;
    let max_payload = js.client().server_info().max_payload;
    // 0xFF bytes are no valid protobuf: the message is dead-lettered as undecodable.
    let big = vec![0xFFu8; max_payload - 256];
    let valid = simple_envelopes(1, "maxpayload");
    let sequences = publish_all(
        &js,
        vec![
            (names.subject("big"), big.clone(), HeaderMap::new()),
            names.message(&valid[0]),
        ],
    )
    .await?;
    let writer = names
        .start_writer(
            &js,
            "integration-maxpayload",
            &endpoints,
            &names.writer_vars(&[("PONIX_NATS_MAX_DELIVER", "3".into())]),
        )
        .await?;
    names.wait_drained(&js, &writer).await?;

    let letters = dead_letters(&js, &names.dead_letter_stream).await?;
    ensure!(letters.len() == 1, "expected one dead letter: {letters:#?}");
    let letter = &letters[0];
    ensure!(
        letter.payload.is_empty(),
        "the payload should have been left out"
    );
    ensure!(
        letter.header(HEADER_PAYLOAD_DROPPED) == big.len().to_string(),
        "{letter:#?}"
    );
    ensure!(
        letter.header(HEADER_ORIGINAL_SUBJECT) == names.subject("big"),
        "{letter:#?}"
    );
    ensure!(
        letter.header(HEADER_STREAM_SEQUENCE) == sequences[0].to_string(),
        "{letter:#?}"
    );
    ensure!(letter.header(HEADER_DELIVERY_COUNT) == "1", "{letter:#?}");
    ensure!(!letter.header(HEADER_REASON).is_empty(), "{letter:#?}");
    let rows = stored_rows(&endpoints, &names.database).await?;
    compare_rows(&[ExpectedRow::of(&valid[0])], &rows, Duplicates::Forbidden)?;
    let metrics = writer.metrics()?;
    expect_metric(&metrics, "ponix_writer_dead_lettered_total", &[], 1.0)?;
    expect_metric(
        &metrics,
        "ponix_writer_dead_letter_failures_total",
        &[],
        0.0,
    )?;
    expect_metric(&metrics, "ponix_writer_naks_total", &[], 0.0)?;

    names.stop_writer(writer).await?;
    names.cleanup(&js, &endpoints).await
}

fn trace_headers(name: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Ponix-Test-Message", name);
    headers
}

#[derive(Debug)]
struct DeadLetter {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    }
}

/// Every message on the dead-letter stream, in stream order.
async fn dead_letters(
    js: &jetstream::Context,
    stream_name: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("the dead-letter stream {stream_name}"))?;
    let state = stream.info().await?.state.clone();
    let mut letters = Vec::new();
    for sequence in state.first_sequence.max(1)..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await?;
        letters.push(DeadLetter {
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload.to_vec(),
        });
    }
    Ok(letters)
}
