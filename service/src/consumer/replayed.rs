//! A dead letter brought back by `ponix-writer dead-letters replay` keeps the row
//! identity of its first delivery.
//!
//! The replay publishes the envelope anew, so the stream gives it a new sequence. If
//! its row was in fact stored the first time (a `max_deliver_exceeded` dead letter
//! whose INSERT committed after all), storing it under the new sequence would be a
//! second row. So the replay names the first sequence in [`HEADER_REPLAY_OF_SEQUENCE`],
//! and the row takes that sequence: the table's `ReplacingMergeTree` then sees the
//! same row twice and keeps one, as for any redelivery. Sequences never repeat in the
//! table (see `streams`), so the first sequence still names that row after a stream
//! was recreated.
//!
//! The header is believed only when it names an earlier sequence than the message's
//! own: a later one cannot be a first delivery, and it could collide with a row a
//! future message will store.

use async_nats::HeaderMap;

/// The stream sequence of the message a replayed envelope first arrived as.
pub const HEADER_REPLAY_OF_SEQUENCE: &str = "Ponix-Replay-Of-Sequence";

/// The sequence the row of a message with `headers`, at `stream_sequence`, stores.
pub fn row_sequence(headers: Option<&HeaderMap>, stream_sequence: u64) -> u64 {
    headers
        .and_then(|headers| headers.get(HEADER_REPLAY_OF_SEQUENCE))
        .and_then(|value| value.as_str().trim().parse::<u64>().ok())
        .filter(|first| (1..stream_sequence).contains(first))
        .unwrap_or(stream_sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay_of(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_REPLAY_OF_SEQUENCE, value);
        headers
    }

    #[test]
    fn a_replay_stores_under_its_first_sequence() {
        assert_eq!(row_sequence(Some(&replay_of("17")), 900), 17);
        assert_eq!(row_sequence(Some(&replay_of(" 17 ")), 900), 17);
    }

    #[test]
    fn anything_else_stores_under_its_own_sequence() {
        assert_eq!(row_sequence(None, 900), 900);
        assert_eq!(row_sequence(Some(&HeaderMap::new()), 900), 900);
        for value in ["", "x", "-3", "0", "900", "901", "18446744073709551616"] {
            assert_eq!(
                row_sequence(Some(&replay_of(value)), 900),
                900,
                "header {value:?}"
            );
        }
    }
}
