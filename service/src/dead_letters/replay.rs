//! `dead-letters replay`: selected dead letters back onto the main stream.
//!
//! The rules, each for a reason:
//! - The envelope is published to its original subject, with the headers it came
//!   with (the writer's `Ponix-*` bookkeeping taken off) and
//!   [`HEADER_REPLAY_OF_SEQUENCE`] naming its first stream sequence: the writer
//!   stores it under that sequence, so a dead letter whose row was in fact committed
//!   (a `max_deliver_exceeded` after an INSERT that landed) ends as one row.
//! - The dead letter is deleted only after the main stream acknowledged the publish.
//!   A replay that dies in between leaves it in place; run again, it publishes the
//!   envelope again with the same `Nats-Msg-Id` (dropped as a duplicate within the
//!   stream's duplicate window) and the same row identity (merged away after it), so
//!   a replay can always simply be run again.
//! - An envelope that is still invalid is dead-lettered again by the writer, with its
//!   reason and the replay header: a later replay skips those unless told to include
//!   them (`--include-failed-replays`), and the same run never sees them, so nothing
//!   loops.
//! - A dead letter that could not carry its envelope (too large) is skipped and
//!   counted: its original is at its stream sequence, if the stream still has it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::time::Instant;

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};

use super::{DeadLetter, PROGRESS_EVERY, Reader, open};
use crate::config::NatsConfig;
use crate::consumer::HEADER_REPLAY_OF_SEQUENCE;

/// Which dead letters to replay. Criteria combine: a dead letter must meet each one
/// given.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Any of these reasons (empty: any reason).
    pub reasons: Vec<String>,
    /// Filed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Filed before.
    pub until: Option<DateTime<Utc>>,
    /// Main-stream sequences of the envelopes' first deliveries.
    pub sequences: Option<RangeInclusive<u64>>,
    /// Select every dead letter: required when no other criterion is given, so that
    /// a forgotten flag does not replay everything.
    pub all: bool,
    /// Also dead letters of replays that failed again.
    pub include_failed_replays: bool,
}

impl Selection {
    fn check(&self) -> anyhow::Result<()> {
        let narrowed = !self.reasons.is_empty()
            || self.since.is_some()
            || self.until.is_some()
            || self.sequences.is_some();
        if !narrowed && !self.all {
            bail!(
                "say which dead letters to replay: --reason, --since/--until, --sequence, or --all"
            );
        }
        Ok(())
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.meets_criteria(letter) && (self.include_failed_replays || !letter.is_failed_replay())
    }

    /// The criteria alone, failed replays or not.
    fn meets_criteria(&self, letter: &DeadLetter) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|r| r == letter.reason()))
            && self.since.is_none_or(|since| letter.filed >= since)
            && self.until.is_none_or(|until| letter.filed < until)
            && self
                .sequences
                .as_ref()
                .is_none_or(|range| letter.first_sequence().is_some_and(|s| range.contains(&s)))
    }
}

/// Parses `--sequence`: `N` or `A-B` (inclusive).
pub fn parse_sequences(text: &str) -> anyhow::Result<RangeInclusive<u64>> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .with_context(|| format!("--sequence {text:?}: expected N or A-B, stream sequences"))
    };
    let range = match text.split_once('-') {
        Some((from, to)) => number(from)?..=number(to)?,
        None => number(text)?..=number(text)?,
    };
    if range.is_empty() {
        bail!("--sequence {text:?}: the range is empty");
    }
    Ok(range)
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Dead letters read.
    pub read: u64,
    /// Replayed (published, acknowledged, deleted), by reason.
    pub replayed: BTreeMap<String, u64>,
    /// Selected but left in place, by why.
    pub skipped: BTreeMap<&'static str, u64>,
}

impl ReplayReport {
    pub fn replayed_total(&self) -> u64 {
        self.replayed.values().sum()
    }

    pub fn render(&self) -> String {
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let mut out = format!(
            "{} dead letter(s) read; {verb} {}\n",
            self.read,
            self.replayed_total()
        );
        for (reason, count) in &self.replayed {
            let _ = writeln!(out, "  {verb} {count:>8}  {reason}");
        }
        for (why, count) in &self.skipped {
            let _ = writeln!(out, "  skipped {count:>8}  {why}");
        }
        out
    }
}

const SKIP_NO_PAYLOAD: &str =
    "envelope too large to be in the dead letter (see its Ponix-Stream-Sequence)";
const SKIP_FAILED_REPLAY: &str = "replayed before and failed again (add --include-failed-replays)";
const SKIP_NOT_FILED_BY_WRITER: &str = "no original subject or sequence (not filed by the writer)";

/// Replays the dead letters `selection` picks; `dry_run` only counts them.
pub async fn replay(
    js: &jetstream::Context,
    config: &NatsConfig,
    selection: &Selection,
    dry_run: bool,
) -> anyhow::Result<ReplayReport> {
    selection.check()?;
    let stream = open(js, config).await?;
    let mut report = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };
    let mut reader = Reader::new(&stream).await?;
    let mut progress = Instant::now();
    while let Some(letter) = reader.next().await? {
        report.read += 1;
        if !selection.matches(&letter) {
            if selection.meets_criteria(&letter) {
                *report.skipped.entry(SKIP_FAILED_REPLAY).or_default() += 1;
            }
            continue;
        }
        let (Some(subject), Some(first)) = (letter.original_subject(), letter.first_sequence())
        else {
            *report.skipped.entry(SKIP_NOT_FILED_BY_WRITER).or_default() += 1;
            continue;
        };
        if letter.payload_dropped() {
            *report.skipped.entry(SKIP_NO_PAYLOAD).or_default() += 1;
            continue;
        }
        if !dry_run {
            let message = PublishMessage::build()
                .payload(letter.payload.clone())
                .headers(replay_headers(&letter.headers, first))
                .message_id(format!(
                    "ponix-replay:{}:{}",
                    config.dead_letter_stream, letter.sequence
                ));
            js.send_publish(subject.to_owned(), message)
                .await
                .with_context(|| format!("publishing dead letter {} to {subject}", letter.sequence))?
                .await
                .with_context(|| {
                    format!(
                        "the main stream did not acknowledge dead letter {} on {subject} (is the subject still the stream's?); it stays in the dead-letter stream",
                        letter.sequence
                    )
                })?;
            // Only now: the envelope is safe in the main stream.
            stream
                .delete_message(letter.sequence)
                .await
                .with_context(|| format!("deleting replayed dead letter {} (it was replayed; a second replay would store the same row again, harmlessly)", letter.sequence))?;
        }
        *report
            .replayed
            .entry(letter.reason().to_owned())
            .or_default() += 1;
        if progress.elapsed() >= PROGRESS_EVERY {
            eprintln!("  ... {} replayed", report.replayed_total());
            progress = Instant::now();
        }
    }
    Ok(report)
}

/// The headers a replayed envelope is published with: the ones it came with, the
/// writer's `Ponix-*` bookkeeping off, the replay marker on.
fn replay_headers(dead_letter: &HeaderMap, first_sequence: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in dead_letter.iter() {
        let name_text = name.to_string();
        if name_text.starts_with("Ponix-") || name_text.starts_with("Nats-") {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(HEADER_REPLAY_OF_SEQUENCE, first_sequence.to_string());
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{HEADER_REASON, HEADER_STREAM_SEQUENCE};

    fn letter(reason: &str, stream_sequence: u64, replay_of: Option<u64>) -> DeadLetter {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_REASON, reason);
        headers.insert(HEADER_STREAM_SEQUENCE, stream_sequence.to_string());
        headers.insert("traceparent", "00-abc-def-01");
        if let Some(first) = replay_of {
            headers.insert(HEADER_REPLAY_OF_SEQUENCE, first.to_string());
        }
        DeadLetter {
            sequence: 1,
            filed: DateTime::from_timestamp(1_800_000_000, 0).expect("valid"),
            headers,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_selection_must_be_narrowed_or_say_all() {
        assert!(Selection::default().check().is_err());
        assert!(
            Selection {
                all: true,
                ..Selection::default()
            }
            .check()
            .is_ok()
        );
    }

    #[test]
    fn criteria_combine_and_failed_replays_are_left_out_unless_included() {
        let by_reason = Selection {
            reasons: vec!["rejected_by_clickhouse".into()],
            ..Selection::default()
        };
        assert!(by_reason.matches(&letter("rejected_by_clickhouse", 5, None)));
        assert!(!by_reason.matches(&letter("decode_failed", 5, None)));
        assert!(!by_reason.matches(&letter("rejected_by_clickhouse", 90, Some(5))));
        let including = Selection {
            include_failed_replays: true,
            ..by_reason
        };
        assert!(including.matches(&letter("rejected_by_clickhouse", 90, Some(5))));

        let by_sequence = Selection {
            sequences: Some(parse_sequences("4-6").expect("a range")),
            include_failed_replays: true,
            ..Selection::default()
        };
        assert!(by_sequence.matches(&letter("x", 5, None)));
        // A failed replay is selected by its first sequence, not the replay's.
        assert!(by_sequence.matches(&letter("x", 90, Some(5))));
        assert!(!by_sequence.matches(&letter("x", 7, None)));

        let at = |s| DateTime::from_timestamp(s, 0).expect("valid");
        let window = Selection {
            since: Some(at(1_800_000_000)),
            until: Some(at(1_800_000_001)),
            ..Selection::default()
        };
        assert!(window.matches(&letter("x", 1, None)));
        let later = Selection {
            since: Some(at(1_800_000_001)),
            ..Selection::default()
        };
        assert!(!later.matches(&letter("x", 1, None)));
    }

    #[test]
    fn sequences_parse_as_one_or_a_range() {
        assert_eq!(parse_sequences("7").unwrap(), 7..=7);
        assert_eq!(parse_sequences("3-9").unwrap(), 3..=9);
        for bad in ["", "x", "9-3", "1-", "-4"] {
            assert!(parse_sequences(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_replay_keeps_the_producers_headers_and_names_the_first_sequence() {
        let headers = replay_headers(&letter("x", 42, Some(7)).headers, 7);
        assert_eq!(
            headers.get("traceparent").map(|v| v.as_str()),
            Some("00-abc-def-01")
        );
        assert_eq!(
            headers.get(HEADER_REPLAY_OF_SEQUENCE).map(|v| v.as_str()),
            Some("7")
        );
        assert!(headers.get(HEADER_REASON).is_none());
        assert!(headers.get(HEADER_STREAM_SEQUENCE).is_none());
    }
}
