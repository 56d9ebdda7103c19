//! The writer binary and the JetStream objects it sets up (`ponix_writer::streams`),
//! against the real nats-server and the chDB-backed ClickHouse:
//!
//! * with credentials in `PONIX_NATS_URL` (user and password holding `/`, `#`, `?` and
//!   `@`) and every log event on (`trace`), no form of the secret appears in its output;
//! * a stream deleted under a running writer is recreated after the stored sequences,
//!   so new envelopes never merge into old rows;
//! * a stream recreated by someone else (sequences from 1 again) is refused, by name
//!   and with the fix, unless `PONIX_NATS_ALLOW_SEQUENCE_REUSE` accepts it;
//! * a durable consumer whose MaxDeliver or AckWait differs is refused and left as it
//!   is; a missing one is created;
//! * and, end to end, the payload nesting limit the README documents: the deepest
//!   payloads allowed are stored, one level more is dead-lettered as `decode_error`.
//!
//! Every test has its own stream, consumer and database. Waits are on conditions.

mod support;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, stream};
use ponix_writer::envelope::ProcessedEnvelope;
use ponix_writer::payload;
use prost::Message as _;
use prost_types::Timestamp;
use support::wait_for;
use support::writer::WriterProcess;
use testkit::Endpoints;
use testkit::infra::Managed;

testkit::integration_tests!(
    no_secret_in_the_trace_log_with_credentials_in_the_nats_url,
    a_stream_deleted_under_the_writer_continues_after_the_stored_sequences,
    a_stream_recreated_elsewhere_is_refused_unless_reuse_is_allowed,
    a_running_writer_that_finds_reused_sequences_stops_with_exit_code_1,
    rows_stored_before_sequences_were_recorded_do_not_count,
    a_consumer_with_another_max_deliver_or_ack_wait_is_refused,
    replicas_the_server_cannot_hold_are_refused_naming_the_variable,
    the_deepest_payloads_the_readme_allows_are_stored_and_deeper_ones_dead_lettered,
);

const TIMEOUT: Duration = Duration::from_secs(60);

struct Names {
    tag: String,
    database: String,
    stream: String,
    consumer: String,
}

impl Names {
    fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            database: format!("streams_{tag}"),
            stream: format!("STREAMS_{}", tag.to_uppercase()),
            consumer: format!("streams-{tag}-writer"),
        }
    }

    fn subject(&self, device: &str) -> String {
        format!("streams.{}.{device}", self.tag)
    }

    fn vars(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("PONIX_CLICKHOUSE_DATABASE", self.database.clone()),
            ("PONIX_NATS_STREAM", self.stream.clone()),
            ("PONIX_NATS_SUBJECT", format!("streams.{}.>", self.tag)),
            ("PONIX_NATS_CONSUMER", self.consumer.clone()),
            (
                "PONIX_NATS_DEAD_LETTER_STREAM",
                format!("{}_DEAD_LETTERS", self.stream),
            ),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT",
                format!("streams_dead_letter.{}", self.tag),
            ),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".to_owned()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        vars
    }

    async fn setup(&self, endpoints: &Endpoints, js: &jetstream::Context) -> anyhow::Result<()> {
        support::delete_streams(
            js,
            &[&self.stream, &format!("{}_DEAD_LETTERS", self.stream)],
        )
        .await?;
        support::fresh_database(endpoints, &self.database).await
    }

    /// Publishes one envelope per device, all for the same organization and second, so
    /// that rows differ only by device and stream sequence.
    async fn publish(&self, js: &jetstream::Context, devices: &[&str]) -> anyhow::Result<()> {
        for device in devices {
            let envelope = envelope(
                "org-streams",
                device,
                payload::json_str_to_struct(r#"{"n": 1}"#)?,
            );
            js.publish(self.subject(device), envelope.encode_to_vec().into())
                .await
                .context("publishing")?
                .await
                .context("awaiting the publish acknowledgement")?;
        }
        Ok(())
    }

    /// `(end_device_id, stream_sequence)` of every row, with `FINAL`: what a reader sees
    /// once copies have merged.
    async fn rows(&self, endpoints: &Endpoints) -> anyhow::Result<Vec<(String, u64)>> {
        support::clickhouse(endpoints, &self.database)
            .query(
                "SELECT end_device_id, stream_sequence FROM processed_envelopes FINAL \
                 ORDER BY stream_sequence",
            )
            .fetch_all::<(String, u64)>()
            .await
            .context("reading the stored rows")
    }

    async fn wait_rows(
        &self,
        endpoints: &Endpoints,
        count: usize,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        wait_for(&format!("{count} rows stored"), TIMEOUT, || async {
            let rows = self.rows(endpoints).await?;
            Ok(if rows.len() == count {
                Ok(rows)
            } else {
                Err(rows)
            })
        })
        .await
    }
}

async fn connect(endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(&endpoints.nats_url)
        .await
        .context("connecting to NATS")?;
    Ok(jetstream::new(client))
}

/// An envelope of `organization` and `device` at a fixed second, so that rows differ
/// only by device, payload and stream sequence.
fn envelope(organization: &str, device: &str, data: prost_types::Struct) -> ProcessedEnvelope {
    ProcessedEnvelope {
        organization_id: organization.to_owned(),
        end_device_id: device.to_owned(),
        occurred_at: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        processed_at: Some(Timestamp {
            seconds: 1_700_000_001,
            nanos: 0,
        }),
        data: Some(data),
    }
}

/// A fresh stream and database for `tag`, and a writer with the default settings on
/// them, ready.
async fn start_fresh(
    tag: &str,
    endpoints: &Endpoints,
) -> anyhow::Result<(Names, jetstream::Context, WriterProcess)> {
    let names = Names::new(tag);
    let js = connect(endpoints).await?;
    names.setup(endpoints, &js).await?;
    let writer =
        support::writer::start(&format!("streams-{tag}"), endpoints, &names.vars(&[])).await?;
    Ok((names, js, writer))
}

/// Every one of `needles` is in `output`, or the error names the first missing one.
fn expect_all(output: &str, needles: &[&str]) -> anyhow::Result<()> {
    for needle in needles {
        ensure!(
            output.contains(needle),
            "{needle:?} missing from:\n{output}"
        );
    }
    Ok(())
}

/// Runs the writer until it exits by itself (it must, within `TIMEOUT`): its exit code
/// and everything it printed.
async fn run_to_exit(
    name: &str,
    endpoints: &Endpoints,
    vars: &[(&'static str, String)],
) -> anyhow::Result<(Option<i32>, String)> {
    let mut writer = support::writer::spawn(name, endpoints, vars)?;
    let status = support::writer::wait_exit(&mut writer, TIMEOUT)
        .await
        .context("the writer did not exit by itself")?;
    let text = std::fs::read_to_string(writer.log()).context("reading the writer's log")?;
    Ok((status.code(), text))
}

// ---------------------------------------------------------------------------
// 1. No secret in the output at any level.
// ---------------------------------------------------------------------------

const USER: &str = "us/er#1";
const PASSWORD: &str = "pa#ss/wo@rd?x:9";

/// Percent-encodes every byte but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn no_secret_in_the_trace_log_with_credentials_in_the_nats_url(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    // The writer's user may do anything; connections without credentials (the
    // readiness probe) get a user that can only ask for JetStream's account info, so
    // a writer that did not send its credentials could not create its stream.
    let nats = Managed::private_nats_with_config(&format!(
        r#"
authorization {{
  users = [
    {{ user: "{USER}", password: "{PASSWORD}" }}
    {{ user: "probe", password: "probe-only",
       permissions: {{ publish: ["$JS.API.INFO"], subscribe: ["_INBOX.>"] }} }}
  ]
}}
no_auth_user: "probe"
"#
    ))?;
    let port = nats.port();
    let client = async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
        .connect(format!("127.0.0.1:{port}"))
        .await
        .context("connecting to the private NATS with the writer's credentials")?;
    let js = jetstream::new(client);
    let names = Names::new("secret");
    names.setup(&endpoints, &js).await?;

    let url = format!("nats://{USER}:{PASSWORD}@127.0.0.1:{port}");
    let mut vars = names.vars(&[("PONIX_LOG_LEVEL", "trace")]);
    vars.push(("PONIX_NATS_URL", url));
    let writer = support::writer::start("streams-secret", &endpoints, &vars).await?;
    names.publish(&js, &["d1", "d2", "d3"]).await?;
    names.wait_rows(&endpoints, 3).await?;
    let status = writer_terminate(writer).await?;
    ensure!(status.0.success(), "the writer exited with {}", status.0);
    let log = status.1;

    // Trace events of async-nats itself were on: the test looked where the leak was.
    ensure!(
        log.contains("write operation: CONNECT"),
        "no async-nats trace events in the log; the test did not look at every level"
    );
    let pair = format!("{USER}:{PASSWORD}");
    for secret in [
        PASSWORD.to_owned(),
        encode(PASSWORD),
        pair.clone(),
        format!("{}:{}", encode(USER), encode(PASSWORD)),
        // Fragments a URL parser would make of the raw password.
        "pa#ss".to_owned(),
        "wo@rd?x".to_owned(),
    ] {
        if let Some(at) = log.find(&secret) {
            let start = log[..at].rfind('\n').map_or(0, |n| n + 1);
            let end = log[at..].find('\n').map_or(log.len(), |n| at + n);
            bail!(
                "the writer's output holds {secret:?}:\n{}",
                &log[start..end]
            );
        }
    }
    Ok(())
}

/// SIGTERM, then the exit status and the whole output.
async fn writer_terminate(
    mut writer: WriterProcess,
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let log = writer.log().to_owned();
    let status = support::writer::terminate(&mut writer, TIMEOUT).await?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok((status, text))
}

// ---------------------------------------------------------------------------
// 2. Stream identity.
// ---------------------------------------------------------------------------

async fn a_stream_deleted_under_the_writer_continues_after_the_stored_sequences(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let (names, js, writer) = start_fresh("recreated", &endpoints).await?;
    names.publish(&js, &["a1", "a2", "a3"]).await?;
    let before = names.wait_rows(&endpoints, 3).await?;
    ensure!(
        before.iter().map(|r| r.1).eq(1..=3),
        "first sequences: {before:?}"
    );

    js.delete_stream(&names.stream)
        .await
        .context("deleting the stream under the writer")?;
    // The writer's next pull fails, and it creates the stream again itself.
    let first = wait_for("the writer recreated the stream", TIMEOUT, || async {
        Ok(match js.get_stream(&names.stream).await {
            Ok(stream) => Ok(stream.cached_info().state.first_sequence),
            Err(error) => Err(error.to_string()),
        })
    })
    .await?;
    ensure!(first == 4, "the recreated stream starts at {first}, not 4");

    // Same organization and second as the old rows: with sequences from 1 again, b1..b3
    // would have merged into a1..a3 had their devices matched; here every row stays.
    names.publish(&js, &["b1", "b2", "b3"]).await?;
    let after = names.wait_rows(&endpoints, 6).await?;
    let sequences: Vec<u64> = after.iter().map(|r| r.1).collect();
    ensure!(
        sequences == [1, 2, 3, 4, 5, 6],
        "sequences after: {after:?}"
    );
    ensure!(
        after[3..].iter().all(|(device, _)| device.starts_with('b')),
        "{after:?}"
    );
    let (status, log) = writer_terminate(writer).await?;
    ensure!(status.success(), "the writer exited with {status}:\n{log}");
    ensure!(log.contains("created the stream"), "{log}");
    Ok(())
}

async fn a_stream_recreated_elsewhere_is_refused_unless_reuse_is_allowed(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let (names, js, writer) = start_fresh("elsewhere", &endpoints).await?;
    names.publish(&js, &["a1", "a2", "a3"]).await?;
    names.wait_rows(&endpoints, 3).await?;
    let (status, _) = writer_terminate(writer).await?;
    ensure!(status.success());

    // Someone recreates the stream the usual way: sequences restart at 1.
    js.delete_stream(&names.stream).await?;
    js.create_stream(stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("streams.{}.>", names.tag)],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("recreating the stream as an operator would")?;

    let (code, output) = run_to_exit("streams-exit-identity", &endpoints, &names.vars(&[])).await?;
    ensure!(code == Some(1), "exit code {code:?}, expected 1:\n{output}");
    expect_all(
        &output,
        &[
            &format!("stream {} would reuse stream sequences", names.stream),
            "next sequence is 1",
            "up to 3",
            "--first-sequence 4",
            "PONIX_NATS_ALLOW_SEQUENCE_REUSE=true",
        ],
    )?;
    let consumers = js
        .get_stream(&names.stream)
        .await?
        .cached_info()
        .state
        .consumer_count;
    ensure!(consumers == 0, "a refused writer created a consumer");

    // With the flag, the operator accepts the risk: the writer consumes.
    let writer = support::writer::start(
        "streams-elsewhere-allowed",
        &endpoints,
        &names.vars(&[("PONIX_NATS_ALLOW_SEQUENCE_REUSE", "true")]),
    )
    .await?;
    names.publish(&js, &["c1"]).await?;
    let rows = names.wait_rows(&endpoints, 4).await?;
    ensure!(
        rows.iter()
            .any(|(device, sequence)| device == "c1" && *sequence == 1),
        "{rows:?}"
    );
    let (status, log) = writer_terminate(writer).await?;
    ensure!(status.success(), "{log}");
    ensure!(
        log.contains("PONIX_NATS_ALLOW_SEQUENCE_REUSE=true: consuming anyway"),
        "{log}"
    );
    Ok(())
}

/// Rows from before the table had `stream_sequence` carry stand-ins counting down
/// from `u64::MAX` (the migration's); they are no stream's sequences, and a table
/// holding them must not make the stream look recreated (the rolling-migration drill
/// found that every writer refused to start on such a table).
async fn rows_stored_before_sequences_were_recorded_do_not_count(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let (names, js, writer) = start_fresh("legacy", &endpoints).await?;
    names.publish(&js, &["a1"]).await?;
    names.wait_rows(&endpoints, 1).await?;
    let (status, _) = writer_terminate(writer).await?;
    ensure!(status.success());
    support::clickhouse(&endpoints, &names.database)
        .query(&format!(
            "INSERT INTO processed_envelopes \
             (organization_id, end_device_id, occurred_at, processed_at, data, stream_sequence) \
             VALUES ('org-old', 'old', 1600000000, 1600000000, '{{}}', {})",
            u64::MAX - 7
        ))
        .execute()
        .await
        .context("storing a row as the migration keeps one from before the column")?;

    let writer =
        support::writer::start("streams-legacy-again", &endpoints, &names.vars(&[])).await?;
    names.publish(&js, &["a2"]).await?;
    let rows = names.wait_rows(&endpoints, 3).await?;
    ensure!(
        rows.iter()
            .any(|(device, sequence)| device == "a2" && *sequence == 2),
        "{rows:?}"
    );
    let (status, log) = writer_terminate(writer).await?;
    ensure!(status.success(), "{log}");
    Ok(())
}

/// While running, the writer re-checks the stream after every failed pull. Here the
/// table is made to hold a sequence beyond the stream's (as after a recreation by
/// someone else) and the consumer is deleted, so that the next pull fails: the
/// re-check finds the reuse, and the writer stops consuming and exits with code 1.
async fn a_running_writer_that_finds_reused_sequences_stops_with_exit_code_1(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let (names, js, mut writer) = start_fresh("running", &endpoints).await?;
    names.publish(&js, &["a1", "a2"]).await?;
    names.wait_rows(&endpoints, 2).await?;

    support::clickhouse(&endpoints, &names.database)
        .query(
            "INSERT INTO processed_envelopes \
             (organization_id, end_device_id, occurred_at, processed_at, data, stream_sequence) \
             VALUES ('org-old', 'old', 1600000000, 1600000000, '{}', 1000)",
        )
        .execute()
        .await
        .context("storing a row with a later sequence")?;
    js.get_stream(&names.stream)
        .await?
        .delete_consumer(&names.consumer)
        .await
        .context("deleting the consumer, so that the next pull fails")?;

    let log = writer.log().to_owned();
    let status = support::writer::wait_exit(&mut writer, TIMEOUT).await?;
    let output = std::fs::read_to_string(&log)?;
    ensure!(status.code() == Some(1), "exit {status}:\n{output}");
    expect_all(
        &output,
        &[
            "stopped consuming",
            "would reuse stream sequences",
            "next sequence is 3",
            "up to 1000",
            "--first-sequence 1001",
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. The durable consumer's settings.
// ---------------------------------------------------------------------------

/// A single server cannot hold three replicas: start-up fails with exit 1 and says
/// which variable to change, and nothing is created. (The cluster side, R3 on three
/// servers, is the `nats-failover` drill.)
async fn replicas_the_server_cannot_hold_are_refused_naming_the_variable(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("replicas");
    let js = connect(&endpoints).await?;
    names.setup(&endpoints, &js).await?;
    let (code, output) = run_to_exit(
        "streams-exit-replicas",
        &endpoints,
        &names.vars(&[("PONIX_NATS_STREAM_REPLICAS", "3")]),
    )
    .await?;
    ensure!(code == Some(1), "exit code {code:?}, expected 1:\n{output}");
    expect_all(
        &output,
        &[
            &format!("cannot hold stream {} with 3 replicas", names.stream),
            "PONIX_NATS_STREAM_REPLICAS=3",
            "set PONIX_NATS_STREAM_REPLICAS to at most the number of JetStream servers",
        ],
    )?;
    ensure!(
        js.get_stream(&names.stream).await.is_err(),
        "the stream was created although the writer refused to start"
    );
    Ok(())
}

async fn a_consumer_with_another_max_deliver_or_ack_wait_is_refused(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let (names, js, writer) = start_fresh("mismatch", &endpoints).await?;
    let (status, _) = writer_terminate(writer).await?;
    ensure!(status.success());

    let consumer_config = || async {
        let info = js
            .get_stream(&names.stream)
            .await?
            .consumer_info(&names.consumer)
            .await?;
        anyhow::Ok((info.config.max_deliver, info.config.ack_wait))
    };
    ensure!(consumer_config().await? == (20, Duration::from_secs(30)));

    let (code, output) = run_to_exit(
        "streams-exit-max-deliver",
        &endpoints,
        &names.vars(&[("PONIX_NATS_MAX_DELIVER", "5")]),
    )
    .await?;
    ensure!(code == Some(1), "exit code {code:?}:\n{output}");
    expect_all(
        &output,
        &[
            &format!(
                "durable consumer {} on stream {} has MaxDeliver 20",
                names.consumer, names.stream
            ),
            "PONIX_NATS_MAX_DELIVER=5",
            "nats consumer edit",
        ],
    )?;
    let (code, output) = run_to_exit(
        "streams-exit-ack-wait",
        &endpoints,
        &names.vars(&[("PONIX_NATS_ACK_WAIT_SECS", "10")]),
    )
    .await?;
    ensure!(code == Some(1), "exit code {code:?}:\n{output}");
    expect_all(&output, &["has AckWait 30s", "PONIX_NATS_ACK_WAIT_SECS=10"])?;
    ensure!(
        consumer_config().await? == (20, Duration::from_secs(30)),
        "a refused writer changed the consumer"
    );

    // A missing consumer is created with the writer's values.
    js.get_stream(&names.stream)
        .await?
        .delete_consumer(&names.consumer)
        .await?;
    let writer = support::writer::start(
        "streams-mismatch-new",
        &endpoints,
        &names.vars(&[
            ("PONIX_NATS_MAX_DELIVER", "5"),
            ("PONIX_NATS_ACK_WAIT_SECS", "10"),
        ]),
    )
    .await?;
    ensure!(consumer_config().await? == (5, Duration::from_secs(10)));
    let (status, log) = writer_terminate(writer).await?;
    ensure!(status.success(), "{log}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Payload nesting (README, "Validation rules").
// ---------------------------------------------------------------------------

/// `data` with `objects` nested objects (`data` itself the first) around a number, or
/// holding `lists` nested lists around a number.
fn nested(objects: usize, lists: usize) -> anyhow::Result<prost_types::Struct> {
    let mut json = "1".to_owned();
    for _ in 0..lists {
        json = format!("[{json}]");
    }
    for _ in 0..objects {
        json = format!(r#"{{"a":{json}}}"#);
    }
    Ok(payload::json_str_to_struct(&json)?)
}

async fn the_deepest_payloads_the_readme_allows_are_stored_and_deeper_ones_dead_lettered(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let (names, js, writer) = start_fresh("depth", &endpoints).await?;
    let cases = [
        ("objects-33", nested(33, 0)?),
        ("lists-48", nested(1, 48)?),
        ("objects-34", nested(34, 0)?),
        ("lists-49", nested(1, 49)?),
    ];
    for (device, data) in &cases {
        let envelope = envelope("org-depth", device, data.clone());
        js.publish(names.subject(device), envelope.encode_to_vec().into())
            .await?
            .await?;
    }
    let rows = names.wait_rows(&endpoints, 2).await?;
    let devices: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    ensure!(devices == ["objects-33", "lists-48"], "{rows:?}");
    let stored: Vec<String> = support::clickhouse(&endpoints, &names.database)
        .query("SELECT toJSONString(data) FROM processed_envelopes FINAL ORDER BY stream_sequence")
        .fetch_all::<String>()
        .await?;
    for ((device, data), got) in cases.iter().zip(&stored) {
        let want: serde_json::Value = serde_json::from_str(&payload::struct_to_json(data)?)?;
        let got: serde_json::Value = serde_json::from_str(got)?;
        ensure!(got == want, "{device}: stored {got}, sent {want}");
    }

    let dead_letters = format!("{}_DEAD_LETTERS", names.stream);
    let dead = wait_for("2 dead letters", TIMEOUT, || async {
        let count = js
            .get_stream(&dead_letters)
            .await?
            .cached_info()
            .state
            .messages;
        Ok(if count == 2 { Ok(()) } else { Err(count) })
    })
    .await;
    dead?;
    let stream = js.get_stream(&dead_letters).await?;
    for sequence in 1..=2 {
        let letter = stream.get_raw_message(sequence).await?;
        let reason = letter
            .headers
            .get(ponix_writer::consumer::HEADER_REASON)
            .map(|v| v.to_string());
        ensure!(reason.as_deref() == Some("decode_error"), "{reason:?}");
    }
    let (status, log) = writer_terminate(writer).await?;
    ensure!(status.success(), "{log}");
    Ok(())
}
