//! The NATS items of `ponix-writer check`: the connection (the writer's own options,
//! one attempt bounded by the start-up timeout), then the stream, the durable consumer
//! and the dead-letter stream. Only info requests are sent: nothing is created or
//! updated, and an absent object is reported with what the writer would create.

use async_nats::ConnectErrorKind;
use async_nats::jetstream::{self, consumer::AckPolicy, context::ConsumerInfoErrorKind, stream};

use super::{Item, limit_bytes, limit_secs};
use crate::config::{Config, NatsConfig, subject_covers};
use crate::streams;

/// Connects as the writer does; the client when that worked.
pub(super) async fn connect(config: &Config) -> (Item, Option<async_nats::Client>) {
    let urls = config.nats.servers.join(", ");
    let options = match crate::run::nats_options(config, config.startup_timeout) {
        Ok(options) => options,
        Err(error) => {
            return (
                Item::fail(
                    "nats",
                    format!("preparing the connection to {urls}: {error}"),
                    "check the credential and certificate files PONIX_NATS_* names",
                ),
                None,
            );
        }
    };
    let attempt = options.connect(config.nats.server_urls());
    let (error, credentials) = match tokio::time::timeout(config.startup_timeout, attempt).await {
        Ok(Ok(client)) => {
            return match jetstream::new(client.clone()).query_account().await {
                Ok(account) => (
                    Item::pass(
                        "nats",
                        format!(
                            "connected to {urls} (nats-server {}); JetStream answers ({} streams in the account)",
                            client.server_info().version,
                            account.streams
                        ),
                    ),
                    Some(client),
                ),
                Err(error) => (
                    Item::fail(
                        "nats",
                        format!("connected to {urls}, but JetStream did not answer: {error}"),
                        "enable JetStream on the server (nats-server -js, or `jetstream {}` in \
                         its configuration) and give this account access to it",
                    ),
                    None,
                ),
            };
        }
        Ok(Err(error)) => {
            let credentials = matches!(
                error.kind(),
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
            );
            (error.to_string(), credentials)
        }
        Err(_) => (
            format!("no connection within {:?}", config.startup_timeout),
            false,
        ),
    };
    let fix = if credentials {
        format!("check {}", config.nats.auth_source())
    } else {
        "check PONIX_NATS_URL, and that nats-server runs and is reachable from here \
         (PONIX_STARTUP_TIMEOUT_SECS bounds the attempt)"
            .to_owned()
    };
    (
        Item::fail("nats", format!("connecting to {urls}: {error}"), fix),
        None,
    )
}

/// The stream, the consumer and the dead-letter stream. `stored` is the table's
/// highest stream sequence, when ClickHouse told it.
pub(super) async fn jetstream_items(
    client: &async_nats::Client,
    config: &Config,
    stored: Option<u64>,
) -> Vec<Item> {
    let js = jetstream::new(client.clone());
    let nats = &config.nats;
    let mut items = Vec::with_capacity(3);
    match js.get_stream(&nats.stream).await {
        Ok(stream) => {
            items.push(stream_item(
                nats,
                &config.clickhouse.table,
                stream.cached_info(),
                stored,
            ));
            items.push(consumer_item(&stream, nats).await);
        }
        Err(error) if streams::is_stream_not_found(error.kind()) => {
            let created = streams::stream_config(nats, stored.unwrap_or(0));
            let first = match stored {
                Some(_) => created.first_sequence.unwrap_or(1).to_string(),
                None => "after the table's highest stream_sequence".to_owned(),
            };
            items.push(Item::pass(
                "stream",
                format!(
                    "{} is absent; the writer creates it: subjects {:?}, file storage, max age \
                     {}, max bytes {}, first sequence {first}",
                    nats.stream,
                    created.subjects,
                    limit_secs(created.max_age),
                    limit_bytes(created.max_bytes),
                ),
            ));
            items.push(Item::pass(
                "consumer",
                format!(
                    "{} is absent (with its stream); the writer creates it: {}",
                    nats.consumer,
                    describe_consumer(nats)
                ),
            ));
        }
        Err(error) => {
            items.push(lookup_failed("stream", &nats.stream, &error));
            items.push(Item::not_checked("consumer", "stream"));
        }
    }
    items.push(dead_letter_item(&js, nats).await);
    items
}

fn stream_item(config: &NatsConfig, table: &str, info: &stream::Info, stored: Option<u64>) -> Item {
    let subjects = &info.config.subjects;
    if !subjects
        .iter()
        .any(|pattern| subject_covers(pattern, &config.subject))
    {
        return Item::fail(
            "stream",
            format!(
                "stream {} captures {subjects:?}, which does not cover PONIX_NATS_SUBJECT={}: \
                 the consumer would receive nothing",
                config.stream, config.subject
            ),
            format!(
                "set PONIX_NATS_SUBJECT to a subject the stream captures, or add it to the \
                 stream (`nats stream edit {} --subjects ...`)",
                config.stream
            ),
        );
    }
    let next = streams::next_sequence(&info.state);
    let mut detail = format!(
        "{} is present: subjects {subjects:?}, {} messages, next sequence {next}",
        config.stream, info.state.messages
    );
    match stored {
        None => detail
            .push_str(" (not compared with the table's stream sequences, which could not be read)"),
        Some(stored) => match streams::check_sequences(config, table, next, stored) {
            None => detail.push_str(&format!(
                ", after the table's highest stream_sequence {stored}"
            )),
            Some(refusal) if config.allow_sequence_reuse => {
                detail.push_str(&format!(
                    "; PONIX_NATS_ALLOW_SEQUENCE_REUSE=true accepts this: {refusal}"
                ));
            }
            Some(refusal) => return Item::fail_with_own_fix("stream", &refusal.to_string()),
        },
    }
    Item::pass("stream", detail)
}

async fn consumer_item(stream: &stream::Stream, config: &NatsConfig) -> Item {
    let existing = match stream.consumer_info(&config.consumer).await {
        Ok(info) => info.config.clone(),
        Err(error) if matches!(error.kind(), ConsumerInfoErrorKind::NotFound) => {
            return Item::pass(
                "consumer",
                format!(
                    "{} is absent; the writer creates it: {}",
                    config.consumer,
                    describe_consumer(config)
                ),
            );
        }
        Err(error) => {
            return Item::fail(
                "consumer",
                format!(
                    "looking up durable consumer {} on stream {}: {error}",
                    config.consumer, config.stream
                ),
                "check that this NATS account may read consumer info (the writer needs it)",
            );
        }
    };
    // The same refusal start-up applies.
    if let Some(refusal) = streams::check_consumer(config, &existing) {
        return Item::fail_with_own_fix("consumer", &refusal.to_string());
    }
    // JetStream cannot change an existing consumer's ack policy: the writer's update
    // would be refused.
    if existing.ack_policy != AckPolicy::Explicit {
        return Item::fail(
            "consumer",
            format!(
                "durable consumer {} on stream {} has ack policy {:?}; the writer needs \
                 explicit acks, and JetStream cannot change that of an existing consumer",
                config.consumer, config.stream, existing.ack_policy
            ),
            format!(
                "delete it (`nats consumer rm {} {}`) and let the writer create it; it then \
                 delivers the stream from its start, and rows already stored stay one each \
                 (the table keeps one row per stream_sequence)",
                config.stream, config.consumer
            ),
        );
    }
    let wanted = streams::consumer_config(config);
    let mut updates = Vec::new();
    if existing.filter_subject != wanted.filter_subject {
        updates.push(format!(
            "filter subject {:?} → {:?}",
            existing.filter_subject, wanted.filter_subject
        ));
    }
    if existing.max_ack_pending != wanted.max_ack_pending {
        updates.push(format!(
            "MaxAckPending {} → {}",
            existing.max_ack_pending, wanted.max_ack_pending
        ));
    }
    let mut detail = format!(
        "{} is present and agrees: AckWait {:?}, MaxDeliver {}",
        config.consumer, existing.ack_wait, existing.max_deliver
    );
    if !updates.is_empty() {
        detail.push_str(&format!("; the writer updates {}", updates.join(", ")));
    }
    Item::pass("consumer", detail)
}

async fn dead_letter_item(js: &jetstream::Context, config: &NatsConfig) -> Item {
    let name = &config.dead_letter_stream;
    match js.get_stream(name).await {
        Ok(stream) => {
            let info = stream.cached_info();
            let subjects = &info.config.subjects;
            if subjects
                .iter()
                .any(|pattern| subject_covers(pattern, &config.dead_letter_subject))
            {
                Item::pass(
                    "dead_letter_stream",
                    format!(
                        "{name} is present: subjects {subjects:?}, {} dead letters",
                        info.state.messages
                    ),
                )
            } else {
                Item::fail(
                    "dead_letter_stream",
                    format!(
                        "stream {name} captures {subjects:?}, which does not cover \
                         PONIX_NATS_DEAD_LETTER_SUBJECT={}: dead letters would be lost",
                        config.dead_letter_subject
                    ),
                    format!(
                        "set PONIX_NATS_DEAD_LETTER_SUBJECT to a subject the stream captures, \
                         or add it to the stream (`nats stream edit {name} --subjects ...`)"
                    ),
                )
            }
        }
        Err(error) if streams::is_stream_not_found(error.kind()) => {
            let created = streams::dead_letter_stream_config(config);
            Item::pass(
                "dead_letter_stream",
                format!(
                    "{name} is absent; the writer creates it: subjects {:?}, file storage, max \
                     age {}, max bytes {}, duplicate window {:?}",
                    created.subjects,
                    limit_secs(created.max_age),
                    limit_bytes(created.max_bytes),
                    created.duplicate_window,
                ),
            )
        }
        Err(error) => lookup_failed("dead_letter_stream", name, &error),
    }
}

fn describe_consumer(config: &NatsConfig) -> String {
    let wanted = streams::consumer_config(config);
    format!(
        "durable pull consumer, explicit acks, filter subject {:?}, AckWait {:?}, MaxDeliver \
         {}, MaxAckPending {}",
        wanted.filter_subject, wanted.ack_wait, wanted.max_deliver, wanted.max_ack_pending
    )
}

fn lookup_failed(item: &str, stream: &str, error: &impl std::fmt::Display) -> Item {
    Item::fail(
        item,
        format!("looking up stream {stream}: {error}"),
        "check that this NATS account may read stream info (the writer needs it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> NatsConfig {
        Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .unwrap()
            .nats
    }

    /// A stream's info as the server sends it.
    fn info(subjects: &[&str], last_seq: u64) -> stream::Info {
        serde_json::from_value(serde_json::json!({
            "config": stream::Config {
                name: "processed_envelopes".to_owned(),
                subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
            "created": "2026-12-01T00:00:00Z",
            "state": {
                "messages": last_seq, "bytes": 0, "first_seq": 1,
                "first_ts": "2026-12-01T00:00:00Z", "last_seq": last_seq,
                "last_ts": "2026-12-01T00:00:00Z", "consumer_count": 1
            },
            "cluster": null
        }))
        .unwrap()
    }

    #[test]
    fn a_stream_fits_when_it_captures_the_subject_and_continues_the_table() {
        let item = stream_item(
            &config(&[]),
            "t",
            &info(&["processed_envelopes.>"], 10),
            Some(10),
        );
        assert!(item.ok, "{item:?}");
        assert!(item.detail.contains("next sequence 11"), "{item:?}");
    }

    #[test]
    fn a_stream_that_misses_the_subject_or_reuses_sequences_fails_with_the_fix() {
        let item = stream_item(&config(&[]), "t", &info(&["other.>"], 10), Some(0));
        assert!(!item.ok);
        assert!(
            item.detail
                .contains("PONIX_NATS_SUBJECT=processed_envelopes.>"),
            "{item:?}"
        );

        let item = stream_item(
            &config(&[]),
            "t",
            &info(&["processed_envelopes.>"], 10),
            Some(50),
        );
        assert!(!item.ok);
        assert!(item.detail.contains("up to 50"), "{item:?}");
        assert!(item.fix.unwrap().contains("--first-sequence 51"));

        // Accepted by configuration: ok, and said.
        let reuse = config(&[("PONIX_NATS_ALLOW_SEQUENCE_REUSE", "true")]);
        let item = stream_item(&reuse, "t", &info(&["processed_envelopes.>"], 10), Some(50));
        assert!(item.ok, "{item:?}");
        assert!(
            item.detail.contains("PONIX_NATS_ALLOW_SEQUENCE_REUSE=true"),
            "{item:?}"
        );
    }
}
