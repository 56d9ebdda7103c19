//! `ponix-writer dead-letters`: the round trip an operator makes after an incident,
//! against real NATS and ClickHouse.
//!
//! A table constraint (the "schema mistake") rejects 100 of 1,000 envelopes, which
//! are dead-lettered as `rejected_by_clickhouse`, beside 10 that can never be
//! stored. `summary` counts them; the constraint is dropped (the "migration");
//! `replay --all` brings all 110 back: the 100 are stored, each exactly once, and
//! the 10 are dead-lettered again with their reason and are all the dead-letter
//! stream holds. A second replay changes nothing. And a dead letter whose row was in
//! fact committed ends, replayed, as that one row.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use ponix_writer::consumer::{
    HEADER_ORIGINAL_SUBJECT, HEADER_REASON, HEADER_REPLAY_OF_SEQUENCE, HEADER_STREAM_SEQUENCE,
    REASON_MAX_DELIVER_EXCEEDED, REASON_REJECTED_BY_CLICKHOUSE,
};
use ponix_writer::envelope::InvalidReason;
use ponix_writer::sample::{self, Payload};
use prost::Message;
use testkit::Endpoints;

testkit::integration_tests!(
    dead_letters_are_counted_replayed_once_fixed_and_do_not_loop,
    a_replayed_dead_letter_whose_row_was_committed_stays_one_row,
);

const VALID: u64 = 1_000;
const BLOCKED: u64 = 100;
const INVALID: u64 = 10;
const DRAIN: Duration = Duration::from_secs(120);
const COMMAND: Duration = Duration::from_secs(120);

/// One test's streams, consumer and database, and the writer's variables for them.
struct Names {
    tag: &'static str,
}

impl Names {
    fn database(&self) -> String {
        format!("dead_letters_{}", self.tag)
    }
    fn stream(&self) -> String {
        format!("DEAD_LETTERS_{}", self.tag.to_uppercase())
    }
    fn dead_letter_stream(&self) -> String {
        format!("DEAD_LETTERS_{}_DLQ", self.tag.to_uppercase())
    }
    fn consumer(&self) -> String {
        format!("dead-letters-{}", self.tag)
    }
    fn subject(&self, device: &str) -> String {
        format!("dead_letters.{}.{device}", self.tag)
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PONIX_CLICKHOUSE_DATABASE", self.database()),
            ("PONIX_NATS_STREAM", self.stream()),
            ("PONIX_NATS_SUBJECT", format!("dead_letters.{}.>", self.tag)),
            ("PONIX_NATS_CONSUMER", self.consumer()),
            ("PONIX_NATS_DEAD_LETTER_STREAM", self.dead_letter_stream()),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT",
                format!("dead_letters_dlq.{}", self.tag),
            ),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".into()),
        ]
    }

    async fn setup(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let nats = async_nats::connect(&endpoints.nats_url)
            .await
            .context("connecting to NATS")?;
        let js = jetstream::new(nats);
        support::delete_streams(&js, &[&self.stream(), &self.dead_letter_stream()]).await?;
        support::migrated_database(endpoints, &self.database()).await?;
        Ok(js)
    }

    /// `ponix-writer dead-letters <args>`; it must exit 0. Its output.
    async fn command(&self, endpoints: &Endpoints, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["dead-letters"];
        all.extend_from_slice(args);
        let name = format!(
            "dead-letters-{}-{}",
            self.tag,
            args.join("-").replace("--", "")
        );
        let (code, output) =
            support::writer::run_command(&name, endpoints, &all, &self.vars(), COMMAND).await?;
        ensure!(
            code == Some(0),
            "`dead-letters {}` exited with {code:?}:\n{output}",
            args.join(" ")
        );
        Ok(output)
    }

    async fn drained(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        support::wait_until_drained(js, &self.stream(), &self.consumer(), DRAIN).await
    }

    async fn rows(&self, endpoints: &Endpoints) -> anyhow::Result<u64> {
        Ok(support::clickhouse(endpoints, &self.database())
            .query("SELECT count() FROM processed_envelopes FINAL")
            .fetch_one()
            .await?)
    }

    /// The dead-letter stream's messages: (reason, replay-of header present).
    async fn dead_letters(&self, js: &jetstream::Context) -> anyhow::Result<Vec<(String, bool)>> {
        let stream = js.get_stream(self.dead_letter_stream()).await?;
        let state = stream.get_info().await?.state;
        let mut letters = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let reason = message
                .headers
                .get(HEADER_REASON)
                .map(|v| v.to_string())
                .unwrap_or_default();
            letters.push((
                reason,
                message.headers.get(HEADER_REPLAY_OF_SEQUENCE).is_some(),
            ));
        }
        Ok(letters)
    }
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    payload: Vec<u8>,
) -> anyhow::Result<u64> {
    Ok(js
        .publish(subject, payload.into())
        .await?
        .await
        .context("publishing an envelope")?
        .sequence)
}

/// The count a `summary` line gives for `reason`.
fn summary_count(summary: &str, reason: &str) -> Option<u64> {
    summary.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == reason).then(|| fields.next()?.parse().ok())?
    })
}

async fn dead_letters_are_counted_replayed_once_fixed_and_do_not_loop(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names { tag: "round_trip" };
    let js = names.setup(&endpoints).await?;
    let client = support::clickhouse(&endpoints, &names.database());
    // The incident: a constraint that refuses the "blocked-" devices.
    client
        .query("ALTER TABLE processed_envelopes ADD CONSTRAINT not_blocked CHECK NOT startsWith(end_device_id, 'blocked-')")
        .execute()
        .await
        .context("adding the constraint")?;

    let mut writer =
        support::writer::start("dead-letters-round-trip", &endpoints, &names.vars()).await?;
    for index in 0..VALID {
        let mut envelope = sample::envelope(Payload::Small, index);
        if index % (VALID / BLOCKED) == 0 {
            envelope.end_device_id = format!("blocked-{index}");
        }
        publish(&js, names.subject("device"), envelope.encode_to_vec()).await?;
    }
    for index in 0..INVALID {
        publish(&js, names.subject("garbage"), vec![0xff, 0xff, index as u8]).await?;
    }
    names
        .drained(&js)
        .await
        .with_context(|| writer.log_tail(30))?;
    ensure!(
        names.rows(&endpoints).await? == VALID - BLOCKED,
        "rows before the replay"
    );

    let summary = names.command(&endpoints, &["summary"]).await?;
    let decode = InvalidReason::DecodeError.as_str();
    ensure!(
        summary_count(&summary, REASON_REJECTED_BY_CLICKHOUSE) == Some(BLOCKED)
            && summary_count(&summary, decode) == Some(INVALID),
        "summary does not count {BLOCKED} {REASON_REJECTED_BY_CLICKHOUSE} and {INVALID} {decode}:\n{summary}"
    );
    let dry = names
        .command(&endpoints, &["replay", "--all", "--dry-run"])
        .await?;
    ensure!(
        dry.contains(&format!("would replay {}", BLOCKED + INVALID)),
        "{dry}"
    );
    ensure!(
        names.dead_letters(&js).await?.len() as u64 == BLOCKED + INVALID,
        "a dry run changed the dead letters"
    );

    // The fix, then the replay.
    client
        .query("ALTER TABLE processed_envelopes DROP CONSTRAINT not_blocked")
        .execute()
        .await?;
    let replay = names.command(&endpoints, &["replay", "--all"]).await?;
    ensure!(
        replay.contains(&format!("replayed {}", BLOCKED + INVALID)),
        "{replay}"
    );
    names
        .drained(&js)
        .await
        .with_context(|| writer.log_tail(30))?;

    ensure!(
        names.rows(&endpoints).await? == VALID,
        "rows after the replay"
    );
    let left = names.dead_letters(&js).await?;
    ensure!(
        left.len() as u64 == INVALID
            && left
                .iter()
                .all(|(reason, replayed)| reason == decode && *replayed),
        "the dead-letter stream should hold the {INVALID} invalid envelopes, marked as replays: {left:?}"
    );

    // Again: nothing left to replay by default, nothing changes.
    let again = names.command(&endpoints, &["replay", "--all"]).await?;
    ensure!(
        again.contains("replayed 0")
            && again.contains(&format!(
                "skipped {INVALID:>8}  replayed before and failed again"
            )),
        "{again}"
    );
    names.drained(&js).await?;
    ensure!(
        names.rows(&endpoints).await? == VALID,
        "rows after the second replay"
    );
    ensure!(
        names.dead_letters(&js).await?.len() as u64 == INVALID,
        "dead letters after the second replay"
    );

    let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
    ensure!(status.success(), "the writer exited with {status}");
    Ok(())
}

async fn a_replayed_dead_letter_whose_row_was_committed_stays_one_row(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names { tag: "committed" };
    let js = names.setup(&endpoints).await?;
    let mut writer =
        support::writer::start("dead-letters-committed", &endpoints, &names.vars()).await?;
    let envelope = sample::envelope(Payload::Small, 7).encode_to_vec();
    let subject = names.subject("device");
    let sequence = publish(&js, subject.clone(), envelope.clone()).await?;
    names.drained(&js).await?;
    ensure!(
        names.rows(&endpoints).await? == 1,
        "the envelope was not stored"
    );

    // Its dead letter anyway, as after an INSERT that committed past its last delivery.
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REASON, REASON_MAX_DELIVER_EXCEEDED);
    headers.insert(HEADER_ORIGINAL_SUBJECT, subject.as_str());
    headers.insert(HEADER_STREAM_SEQUENCE, sequence.to_string());
    js.send_publish(
        format!("dead_letters_dlq.{}", names.tag),
        PublishMessage::build()
            .payload(envelope.into())
            .headers(headers),
    )
    .await?
    .await
    .context("filing the dead letter")?;

    let before = support::writer::metric_sum(&writer, "ponix_writer_rows_inserted_total")?;
    let replay = names
        .command(
            &endpoints,
            &["replay", "--reason", REASON_MAX_DELIVER_EXCEEDED],
        )
        .await?;
    ensure!(replay.contains("replayed 1"), "{replay}");
    names.drained(&js).await?;
    let after = support::writer::metric_sum(&writer, "ponix_writer_rows_inserted_total")?;
    ensure!(
        after == before + 1.0,
        "the replay was not inserted ({before} → {after} rows)"
    );
    ensure!(
        names.rows(&endpoints).await? == 1,
        "the replayed envelope became a second row"
    );
    ensure!(
        names.dead_letters(&js).await?.is_empty(),
        "the dead letter is still there"
    );

    let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
    ensure!(status.success(), "the writer exited with {status}");
    Ok(())
}
