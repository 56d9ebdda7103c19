//! `ponix-writer dead-letters`: what the dead-letter stream holds, one dead letter in
//! full, and bringing dead letters home once their cause is fixed.
//!
//! The dead letters are read one by one by sequence (`get_raw_message`), from the
//! stream's first sequence to its last one *as it was when the command started*: a
//! dead letter filed while the command runs (a replayed envelope that is still
//! invalid) is never read by the same run, so a replay cannot loop. Reading changes
//! nothing; only [`replay`] deletes, and only a dead letter whose envelope the main
//! stream has acknowledged.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::NatsConfig;
use crate::consumer::{
    HEADER_ORIGINAL_SUBJECT, HEADER_PAYLOAD_DROPPED, HEADER_REASON, HEADER_REPLAY_OF_SEQUENCE,
    HEADER_STREAM_SEQUENCE,
};

mod replay;
mod show;
mod summary;

pub use replay::{ReplayReport, Selection, parse_sequences, replay};
pub use show::show;
pub use summary::{ReasonCount, render as render_summary, summary};

/// How often a long read or replay prints where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// One message of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream: how `show` and `--sequence` name it.
    pub sequence: u64,
    /// When the writer filed it.
    pub filed: DateTime<Utc>,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.as_str())
    }

    /// The reason code, or `unknown` for a message the writer did not file.
    pub fn reason(&self) -> &str {
        self.header(HEADER_REASON).unwrap_or("unknown")
    }

    /// The subject the envelope was first published to, where a replay publishes it.
    pub fn original_subject(&self) -> Option<&str> {
        self.header(HEADER_ORIGINAL_SUBJECT)
    }

    /// The main stream's sequence of the envelope's first delivery: its row identity.
    /// A dead letter of a replay names the first delivery, not the replay.
    pub fn first_sequence(&self) -> Option<u64> {
        self.header(HEADER_REPLAY_OF_SEQUENCE)
            .or_else(|| self.header(HEADER_STREAM_SEQUENCE))
            .and_then(|value| value.trim().parse().ok())
    }

    /// True for the dead letter of an envelope that was replayed and failed again.
    pub fn is_failed_replay(&self) -> bool {
        self.header(HEADER_REPLAY_OF_SEQUENCE).is_some()
    }

    /// True when the envelope did not fit in the dead letter (see the consumer's docs):
    /// it cannot be replayed from here.
    pub fn payload_dropped(&self) -> bool {
        self.header(HEADER_PAYLOAD_DROPPED).is_some()
    }
}

/// The dead-letter stream of `config`, for reading and deleting.
async fn open(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(&config.dead_letter_stream).await.with_context(|| {
        format!(
            "opening the dead-letter stream {} (PONIX_NATS_DEAD_LETTER_STREAM); the writer creates it at start",
            config.dead_letter_stream
        )
    })
}

/// Reads the dead letters present when it was made, in order, printing progress on
/// long reads.
struct Reader<'a> {
    stream: &'a jetstream::stream::Stream,
    next: u64,
    last: u64,
    total: u64,
    read: u64,
    progress: Instant,
}

impl<'a> Reader<'a> {
    async fn new(stream: &'a jetstream::stream::Stream) -> anyhow::Result<Reader<'a>> {
        let state = stream
            .get_info()
            .await
            .context("reading the dead-letter stream's state")?
            .state;
        Ok(Reader {
            stream,
            next: state.first_sequence.max(1),
            // An empty stream reports first = last + 1.
            last: if state.messages == 0 {
                0
            } else {
                state.last_sequence
            },
            total: state.messages,
            read: 0,
            progress: Instant::now(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<Option<DeadLetter>> {
        while self.next <= self.last {
            let sequence = self.next;
            self.next += 1;
            let message = match self.stream.get_raw_message(sequence).await {
                Ok(message) => message,
                // Deleted (replayed) or aged out since the state was read.
                Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("reading dead letter {sequence}"));
                }
            };
            self.read += 1;
            if self.progress.elapsed() >= PROGRESS_EVERY {
                eprintln!(
                    "  ... {} of {} dead letters read (sequence {sequence} of {})",
                    self.read, self.total, self.last
                );
                self.progress = Instant::now();
            }
            let filed =
                DateTime::from_timestamp(message.time.unix_timestamp(), message.time.nanosecond())
                    .unwrap_or_default();
            return Ok(Some(DeadLetter {
                sequence,
                filed,
                headers: message.headers,
                payload: message.payload,
            }));
        }
        Ok(None)
    }
}
