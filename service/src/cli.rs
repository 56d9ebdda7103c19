//! The command line: the writer by default, and the operator commands, all
//! configured by the same `PONIX_*` variables (the command line only says what to
//! do, never how to connect).

use chrono::{DateTime, Utc};

use crate::dead_letters::{Selection, parse_sequences};

xflags::xflags! {
    /// Batch writer: ProcessedEnvelope messages from NATS JetStream into ClickHouse.
    /// With no command it runs the writer. Every command is configured by the
    /// PONIX_* environment variables listed below.
    cmd ponix-writer {
        /// Print the version.
        optional -V, --version
        /// Consume from NATS JetStream and store into ClickHouse (the default).
        default cmd run {}
        /// Run the schema migrations once (same lease and timeout as start-up,
        /// whatever PONIX_CLICKHOUSE_MIGRATIONS_ENABLED says), then exit.
        cmd migrate {}
        /// A pre-flight that changes nothing: the variables, NATS, the streams and the
        /// consumer, ClickHouse, the table's columns, goose and the pending migrations,
        /// each ok or FAIL with its fix. Exit 0 only when all pass, 1 otherwise.
        cmd check {
            /// `text` (default) or `json`: the same report, for scripts.
            optional --format format: String
        }
        /// Inspect the dead-letter stream and replay dead letters onto the main stream.
        cmd dead-letters {
            /// Counts by reason, with the oldest and newest dead letter of each.
            cmd summary {}
            /// One dead letter (by its sequence in the dead-letter stream): headers and envelope.
            cmd show {
                required sequence: u64
            }
            /// Publish selected dead letters to their original subjects, then delete them.
            cmd replay {
                /// Only dead letters with this reason (repeat for several).
                repeated --reason reason: String
                /// Only dead letters filed at or after this time (RFC 3339).
                optional --since time: String
                /// Only dead letters filed before this time (RFC 3339).
                optional --until time: String
                /// Only envelopes first delivered at these main-stream sequences: N or A-B.
                optional --sequence range: String
                /// Every dead letter (required when no other criterion is given).
                optional --all
                /// Also dead letters of replays that failed again (skipped by default, so replays do not loop).
                optional --include-failed-replays
                /// Count what would be replayed; change nothing.
                optional --dry-run
            }
        }
    }
}

impl Replay {
    /// The selection the flags describe; an error names the flag.
    pub fn selection(&self) -> anyhow::Result<Selection> {
        let time = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<DateTime<Utc>>> {
            text.as_deref()
                .map(|text| {
                    DateTime::parse_from_rfc3339(text)
                        .map(|at| at.with_timezone(&Utc))
                        .map_err(|error| {
                            anyhow::anyhow!(
                                "{flag} {text:?}: {error}; expected RFC 3339, such as 2026-12-06T09:00:00Z"
                            )
                        })
                })
                .transpose()
        };
        Ok(Selection {
            reasons: self.reason.clone(),
            since: time("--since", &self.since)?,
            until: time("--until", &self.until)?,
            sequences: self.sequence.as_deref().map(parse_sequences).transpose()?,
            all: self.all,
            include_failed_replays: self.include_failed_replays,
        })
    }
}
