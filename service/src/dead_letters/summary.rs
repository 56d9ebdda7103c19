//! `dead-letters summary`: how many dead letters there are of each reason, with the
//! oldest and the newest of each.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use async_nats::jetstream;
use chrono::{DateTime, Utc};

use super::{Reader, open};
use crate::config::NatsConfig;

/// The dead letters of one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
    /// Of these, dead letters of replays that failed again (replay skips them unless
    /// asked to include them).
    pub failed_replays: u64,
    /// Of these, dead letters without their envelope (too large to carry).
    pub payload_dropped: u64,
    pub oldest: (u64, DateTime<Utc>),
    pub newest: (u64, DateTime<Utc>),
}

/// Counts by reason, in reason order.
pub async fn summary(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<Vec<ReasonCount>> {
    let stream = open(js, config).await?;
    let mut by_reason: BTreeMap<String, ReasonCount> = BTreeMap::new();
    let mut reader = Reader::new(&stream).await?;
    while let Some(letter) = reader.next().await? {
        let entry = by_reason
            .entry(letter.reason().to_owned())
            .or_insert_with(|| ReasonCount {
                reason: letter.reason().to_owned(),
                count: 0,
                failed_replays: 0,
                payload_dropped: 0,
                oldest: (letter.sequence, letter.filed),
                newest: (letter.sequence, letter.filed),
            });
        entry.count += 1;
        entry.failed_replays += u64::from(letter.is_failed_replay());
        entry.payload_dropped += u64::from(letter.payload_dropped());
        // Read in stream order: each one is the newest so far.
        entry.newest = (letter.sequence, letter.filed);
    }
    Ok(by_reason.into_values().collect())
}

/// The summary as the command prints it.
pub fn render(stream: &str, counts: &[ReasonCount]) -> String {
    let total: u64 = counts.iter().map(|c| c.count).sum();
    let mut out = format!("dead-letter stream {stream}: {total} dead letter(s)\n");
    if counts.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>15} {:>15}  {:<32} {:<32}",
        "reason",
        "count",
        "failed replays",
        "payload dropped",
        "oldest (sequence, filed)",
        "newest (sequence, filed)"
    );
    for c in counts {
        let at = |(sequence, filed): (u64, DateTime<Utc>)| {
            format!("{sequence} {}", filed.format("%Y-%m-%dT%H:%M:%SZ"))
        };
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>15} {:>15}  {:<32} {:<32}",
            c.reason,
            c.count,
            c.failed_replays,
            c.payload_dropped,
            at(c.oldest),
            at(c.newest)
        );
    }
    out
}
