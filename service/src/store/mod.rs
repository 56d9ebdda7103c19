//! ClickHouse access: one `INSERT` per batch, and a classification of every failure.
//!
//! The [`Store`] wraps a clickhouse-rs [`Client`] talking HTTP with LZ4-compressed bodies.
//! Every server setting the writer depends on is set explicitly on the client, so a
//! server default changing under us (for example `async_insert`, which became a
//! default in ClickHouse 26.2) cannot change what an acknowledged message means:
//!
//! | setting | value | why |
//! |---|---|---|
//! | `input_format_binary_read_json_as_string` etc. | see [`payload::CLICKHOUSE_JSON_SETTINGS`] | `data` is a `String` in Rust and `JSON` in ClickHouse |
//! | `async_insert` | `0` (or `1` when configured) | with `0`, a 200 answer means the rows are in a part on disk |
//! | `wait_for_async_insert` | `1` when `async_insert=1` | never acknowledge rows that only sit in a server buffer |
//!
//! A batch is written with [`Client::insert`] (not the `Inserter`): one request, one
//! `INSERT` statement, committed when the server answers 200 to [`Insert::end`].
//! Rows of one batch that fall into one partition and under `max_insert_block_size`
//! are committed atomically; otherwise a failure can leave part of the batch stored.
//! Either way the consumer then redelivers the whole batch, so delivery is
//! at-least-once: a retried batch can insert some rows twice, never zero times.
//!
//! Re-inserts are idempotent in the table: each row carries the stream sequence of its
//! message, and the table is a `ReplacingMergeTree` ordered by
//! `(organization_id, occurred_at, end_device_id, stream_sequence)`, so a row inserted
//! twice has one sorting key and is kept once (merges remove the copy; `FINAL` hides it
//! until then). No insert setting is involved: `insert_deduplication_token` would only
//! recognise a retry of the identical batch, and a JetStream redelivery need not have
//! the composition of the first delivery. The README's "Guarantees" section compares
//! the two designs with measurements.
//!
//! [`Insert::end`]: clickhouse::insert::Insert::end

mod client;

use std::fmt;
use std::time::Duration;

use clickhouse::{Client, Compression};

use crate::config::ClickHouseConfig;
use crate::payload;
use crate::row::ProcessedEnvelopeRow;

pub use client::clickhouse_client;

/// Longest server message kept in a [`StoreError`]. ClickHouse exceptions can quote
/// large parts of a query; the code and the first few hundred characters are what
/// an operator needs, and the message also travels in dead-letter headers.
const MAX_MESSAGE_CHARS: usize = 1024;

/// Where the stand-in sequences of rows stored before the table had a
/// `stream_sequence` column begin (2^63): the migration counts them down from
/// `u64::MAX`, and no JetStream stream gets near either.
const LEGACY_SEQUENCES_FROM: u64 = 1 << 63;

/// Writes rows into the configured ClickHouse table.
#[derive(Clone)]
pub struct Store {
    client: Client,
    table: String,
    insert_timeout: Duration,
    insert_concurrency: usize,
}

impl fmt::Debug for Store {
    // `Client` holds the password; show only what identifies the destination.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("table", &self.table)
            .field("insert_timeout", &self.insert_timeout)
            .field("insert_concurrency", &self.insert_concurrency)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Builds the client. Nothing is sent until the first query.
    pub fn new(config: &ClickHouseConfig) -> Self {
        let mut client = clickhouse_client(config)
            .with_compression(Compression::Lz4)
            // Shows up in system.query_log's http_user_agent: which service wrote what.
            .with_product_info("ponix-writer", env!("CARGO_PKG_VERSION"));
        for (name, value) in payload::CLICKHOUSE_JSON_SETTINGS {
            client = client.with_setting(*name, *value);
        }
        for (name, value) in insert_mode_settings(config.async_insert) {
            client = client.with_setting(name, value);
        }
        Self {
            client,
            table: config.table.clone(),
            insert_timeout: config.insert_timeout,
            insert_concurrency: config.insert_concurrency.max(1),
        }
    }

    /// How many batches may be inserted at once (at least 1).
    pub fn insert_concurrency(&self) -> usize {
        self.insert_concurrency
    }

    /// The table rows are inserted into.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The client, with the writer's settings and credentials, for read-only
    /// inspection (`ponix-writer check`).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The bound on every query: the insert timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.insert_timeout
    }

    /// `SELECT 1`, bounded by the insert timeout: proves the server answers and the
    /// credentials and database are accepted.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let query = self.client.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(self.insert_timeout, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(StoreError::from_client(&error)),
            Err(_) => Err(StoreError::timed_out(self.insert_timeout)),
        }
    }

    /// The highest `stream_sequence` stored in the table by a writer, 0 when there is
    /// none: a stream the writer creates starts after it (see [`crate::streams`]).
    /// Bounded by the insert timeout.
    ///
    /// Rows stored before the table had the column carry stand-ins counting down from
    /// `u64::MAX` (see the `deduplicate_by_stream_sequence` migration), which no
    /// JetStream stream reaches: they are left out, or a table holding any of them
    /// would make every stream look recreated.
    pub async fn max_stream_sequence(&self) -> Result<u64, StoreError> {
        // The table name is a validated identifier (see config), so it is safe unquoted.
        let sql = format!(
            "SELECT max(stream_sequence) FROM {} WHERE stream_sequence < {LEGACY_SEQUENCES_FROM}",
            self.table
        );
        let query = self.client.query(&sql).fetch_one::<u64>();
        match tokio::time::timeout(self.insert_timeout, query).await {
            Ok(Ok(max)) => Ok(max),
            Ok(Err(error)) => Err(StoreError::from_client(&error)),
            Err(_) => Err(StoreError::timed_out(self.insert_timeout)),
        }
    }

    /// Forgets the table schema clickhouse-rs cached for row validation. Call it after
    /// migrations, and after an insert failed because of the schema, so that a fixed
    /// table is picked up without a restart.
    pub async fn clear_cached_metadata(&self) {
        self.client.clear_cached_metadata().await;
    }

    /// Inserts `rows` with exactly one `INSERT` statement, bounded by the insert
    /// timeout. An empty slice sends nothing.
    ///
    /// On a timeout the request is dropped, which aborts it; if the server had already
    /// received the whole body it may still commit it, so a retry can insert rows twice
    /// (at-least-once; the table keeps one copy, see the module docs).
    pub async fn insert_batch(&self, rows: &[ProcessedEnvelopeRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.insert_timeout, self.insert_unbounded(rows)).await {
            Ok(result) => result.map_err(|error| StoreError::from_client(&error)),
            Err(_) => Err(StoreError::timed_out(self.insert_timeout)),
        }
    }

    async fn insert_unbounded(
        &self,
        rows: &[ProcessedEnvelopeRow],
    ) -> clickhouse::error::Result<()> {
        // The per-phase timeouts stop a stalled socket early and cheaply; the
        // `tokio::time::timeout` around this call bounds the whole operation, including
        // the schema lookup that precedes the first insert.
        let mut insert = self
            .client
            .insert::<ProcessedEnvelopeRow>(&self.table)
            .await?
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

/// The `async_insert` settings, always explicit (see the module docs).
fn insert_mode_settings(async_insert: bool) -> Vec<(&'static str, &'static str)> {
    if async_insert {
        vec![("async_insert", "1"), ("wait_for_async_insert", "1")]
    } else {
        vec![("async_insert", "0")]
    }
}

/// What a failed ClickHouse operation means for the rows that were being written.
///
/// | class | meaning | examples | what the consumer does |
/// |---|---|---|---|
/// | [`Retryable`](Self::Retryable) | transient: the same rows will probably go in later | connection refused or reset, client-side timeout, HTTP 5xx without a known permanent code, `TIMEOUT_EXCEEDED` (159), `MEMORY_LIMIT_EXCEEDED` (241), `TABLE_IS_READ_ONLY` (242), `TOO_MANY_PARTS` (252), `NETWORK_ERROR` (210), any code not listed below | NAK with exponential backoff |
/// | [`Destination`](Self::Destination) (permanent) | the table or connection settings are wrong for *every* row; fails again until an operator changes ClickHouse or the config | `THERE_IS_NO_COLUMN` (8), `NO_SUCH_COLUMN_IN_TABLE` (16), `UNKNOWN_IDENTIFIER` (47), `TYPE_MISMATCH` (53), `UNKNOWN_TABLE` (60), `UNKNOWN_DATABASE` (81), `UNKNOWN_SETTING` (115), `READONLY` (164), authentication and access errors (192-195, 497, 516), a schema mismatch found by clickhouse-rs' row validation | keep the messages (NAK with the longest backoff), report not-ready |
/// | [`Data`](Self::Data) (permanent) | the server or the serializer rejected the *data*: some row of the batch cannot be stored as it is | `CANNOT_PARSE_*` (6, 26, 27, 38, 41, 72), `CANNOT_READ_ALL_DATA` (33), `INCORRECT_DATA` (117), `VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE` (321), `TOO_MANY_PARTS` (252) when one insert block spans too many partitions, client-side serialization errors | isolate the offending rows by bisecting the batch, dead-letter only those |
///
/// Unknown codes and unrecognised failures are deliberately retryable: a wrong guess
/// in that direction costs retries, a wrong guess the other way costs data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Retryable,
    Destination,
    Data,
}

impl ErrorClass {
    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Destination => "permanent_destination",
            Self::Data => "permanent_data",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed ClickHouse operation, classified (see [`ErrorClass`]: `Retryable`, or one of
/// the two permanent classes `Destination` and `Data`). The message is the client's or
/// the server's text, truncated, and never contains credentials (clickhouse-rs sends
/// them in headers, not in the URL it reports).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} ClickHouse error: {message}")]
pub struct StoreError {
    class: ErrorClass,
    /// The ClickHouse exception code, when the server sent one.
    code: Option<u32>,
    message: String,
    /// No answer at all: connection trouble or a timeout.
    unreachable: bool,
}

impl StoreError {
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    pub fn code(&self) -> Option<u32> {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    /// `Destination` or `Data`: retrying the same rows unchanged will fail again.
    pub fn is_permanent(&self) -> bool {
        !self.is_retryable()
    }

    /// True when ClickHouse gave no answer at all (connection or timeout trouble),
    /// as opposed to answering with an error.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }

    /// Reclassifies an error; used when the batch as a whole tells more than one
    /// response does (see the consumer's bisection).
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }

    /// The consumer stopped bisecting a batch after `inserts` statements; the rows not
    /// yet tried are retried later.
    pub(crate) fn bisection_budget_spent(inserts: usize) -> Self {
        Self {
            class: ErrorClass::Retryable,
            code: None,
            message: format!(
                "not tried: the batch already took {inserts} INSERTs to isolate rejected rows"
            ),
            unreachable: false,
        }
    }

    pub(crate) fn timed_out(after: Duration) -> Self {
        Self {
            class: ErrorClass::Retryable,
            code: None,
            message: format!("no answer within {after:?}"),
            unreachable: true,
        }
    }

    /// Classifies an error returned by clickhouse-rs.
    pub fn from_client(error: &clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        let message = truncate(&error.to_string());
        let class = match error {
            // The server answered with an error: its code decides.
            E::BadResponse(text) => {
                let (class, code) = classify_server_text(text);
                return Self {
                    class,
                    code,
                    message,
                    unreachable: false,
                };
            }
            // clickhouse-rs compared the row type with `DESCRIBE TABLE` and they differ,
            // or the table uses a type the client cannot handle: a schema problem.
            E::SchemaMismatch(_) | E::InvalidColumnsHeader(_) => ErrorClass::Destination,
            // Configuration the client rejects (URL, TLS support): no row can go in.
            E::InvalidParams(_) | E::Unsupported(_) => ErrorClass::Destination,
            // Serializing one of our rows failed: a property of the data.
            E::Custom(_)
            | E::DataFormat(_)
            | E::NotEnoughData
            | E::InvalidUtf8Encoding(_)
            | E::InvalidTagEncoding(_)
            | E::SequenceMustHaveLength
            | E::DeserializeAnyNotSupported
            | E::VariantDiscriminatorIsOutOfBound(_) => ErrorClass::Data,
            // A TLS handshake the certificates decide fails the same way on every try;
            // the message names the variable that fixes it.
            E::Network(_) => {
                let chain = crate::tls::error_chain(error);
                if let Some(hint) = crate::tls::hint(&chain, "PONIX_CLICKHOUSE") {
                    return Self {
                        class: ErrorClass::Destination,
                        code: None,
                        message: truncate(&format!("{chain}: {hint}")),
                        unreachable: true,
                    };
                }
                return Self {
                    class: ErrorClass::Retryable,
                    code: None,
                    message: truncate(&chain),
                    unreachable: true,
                };
            }
            // TimedOut, (de)compression of a damaged stream, Other (I/O),
            // RowNotFound (a ping that got an empty answer) and variants added to this
            // non-exhaustive enum later: retry.
            _ => ErrorClass::Retryable,
        };
        Self {
            class,
            code: None,
            message,
            unreachable: matches!(error, E::Network(_) | E::TimedOut),
        }
    }
}

/// Classifies the text of a failed HTTP answer, as clickhouse-rs reports it: the body
/// (`Code: 60. DB::Exception: ...`), or `Code: N` from the `X-ClickHouse-Exception-Code`
/// header when the body was empty, or `<status> <reason>` when neither was there (a
/// proxy in between, for example).
pub fn classify_server_text(text: &str) -> (ErrorClass, Option<u32>) {
    if let Some(code) = exception_code(text) {
        // TOO_MANY_PARTS (252) usually means merges are behind: retry later. But the
        // same code with this message means one INSERT block spans more partitions
        // than max_partitions_per_insert_block (rows with months far apart). That
        // batch fails the same way on every retry; as a data error it is bisected
        // into smaller inserts that do fit.
        if code == TOO_MANY_PARTS && text.contains("Too many partitions for single INSERT block") {
            return (ErrorClass::Data, Some(code));
        }
        return (class_of_code(code), Some(code));
    }
    let status = text
        .split_whitespace()
        .next()
        .and_then(|token| token.parse::<u16>().ok())
        .filter(|status| (100..600).contains(status));
    let class = match status {
        // Missing endpoint, bad credentials, forbidden: a configuration problem.
        Some(400 | 401 | 403 | 404 | 405) => ErrorClass::Destination,
        // 408, 429, 5xx and anything unrecognised.
        _ => ErrorClass::Retryable,
    };
    (class, None)
}

const TOO_MANY_PARTS: u32 = 252;

/// The number after the first `Code:` in a ClickHouse error text.
fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code:")? + "Code:".len()..];
    let digits: &str = rest.trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// ClickHouse exception codes (src/Common/ErrorCodes.cpp) that are permanent. Every
/// other code is retryable; see [`ErrorClass`].
fn class_of_code(code: u32) -> ErrorClass {
    match code {
        // Data the server cannot parse or store as sent.
        6     // CANNOT_PARSE_TEXT
        | 26  // CANNOT_PARSE_QUOTED_STRING
        | 27  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
        | 33  // CANNOT_READ_ALL_DATA
        | 38  // CANNOT_PARSE_DATE
        | 41  // CANNOT_PARSE_DATETIME
        | 69  // ARGUMENT_OUT_OF_BOUND
        | 70  // CANNOT_CONVERT_TYPE
        | 72  // CANNOT_PARSE_NUMBER
        | 117 // INCORRECT_DATA
        | 131 // TOO_LARGE_STRING_SIZE
        | 321 // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        | 349 // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        | 469 // VIOLATED_CONSTRAINT: a row fails a CHECK the table declares
        => ErrorClass::Data,
        // The table, the database, the statement or the account is wrong for all rows.
        8     // THERE_IS_NO_COLUMN
        | 10  // NOT_FOUND_COLUMN_IN_BLOCK
        | 16  // NO_SUCH_COLUMN_IN_TABLE
        | 20  // NUMBER_OF_COLUMNS_DOESNT_MATCH
        | 36  // BAD_ARGUMENTS (a setting value the server refuses)
        | 44  // ILLEGAL_COLUMN
        | 47  // UNKNOWN_IDENTIFIER
        | 48  // NOT_IMPLEMENTED
        | 50  // UNKNOWN_TYPE
        | 53  // TYPE_MISMATCH
        | 60  // UNKNOWN_TABLE
        | 62  // SYNTAX_ERROR
        | 81  // UNKNOWN_DATABASE
        | 115 // UNKNOWN_SETTING
        | 164 // READONLY (the user may not write)
        | 192 // UNKNOWN_USER
        | 193 // WRONG_PASSWORD
        | 194 // REQUIRED_PASSWORD
        | 195 // IP_ADDRESS_NOT_ALLOWED
        | 497 // ACCESS_DENIED
        | 516 // AUTHENTICATION_FAILED
        => ErrorClass::Destination,
        // Includes 159 TIMEOUT_EXCEEDED, 202 TOO_MANY_SIMULTANEOUS_QUERIES, 209
        // SOCKET_TIMEOUT, 210 NETWORK_ERROR, 236 ABORTED, 241 MEMORY_LIMIT_EXCEEDED,
        // 242 TABLE_IS_READ_ONLY (replica lost Keeper), 243 NOT_ENOUGH_SPACE,
        // 252 TOO_MANY_PARTS, 319 UNKNOWN_STATUS_OF_INSERT, 394 QUERY_WAS_CANCELLED,
        // 425 SYSTEM_ERROR, 999 KEEPER_EXCEPTION, and codes this list does not know.
        _ => ErrorClass::Retryable,
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_partitions_in_one_insert_is_a_data_error_but_too_many_parts_is_not() {
        let partitions = "Code: 252. DB::Exception: Too many partitions for single INSERT block \
                          (more than 100). (TOO_MANY_PARTS) (version 26.9.2.1)";
        assert_eq!(
            classify_server_text(partitions),
            (ErrorClass::Data, Some(252))
        );
        let merges_behind = "Code: 252. DB::Exception: Too many parts (3001 with average size of \
                             1.00 KiB) in table 't'. Merges are processing significantly slower \
                             than inserts. (TOO_MANY_PARTS)";
        assert_eq!(
            classify_server_text(merges_behind),
            (ErrorClass::Retryable, Some(252))
        );
    }
    use clickhouse::error::Error as E;

    fn class_of(error: E) -> ErrorClass {
        StoreError::from_client(&error).class()
    }

    fn server(text: &str) -> StoreError {
        StoreError::from_client(&E::BadResponse(text.to_owned()))
    }

    #[test]
    fn client_errors_are_classified() {
        let io = || Box::new(std::io::Error::other("boom"));
        assert_eq!(class_of(E::Network(io())), ErrorClass::Retryable);
        assert_eq!(class_of(E::TimedOut), ErrorClass::Retryable);
        assert_eq!(class_of(E::Decompression(io())), ErrorClass::Retryable);
        assert_eq!(class_of(E::Other(io())), ErrorClass::Retryable);
        assert_eq!(
            class_of(E::SchemaMismatch("column data: JSON vs i32".into())),
            ErrorClass::Destination
        );
        assert_eq!(class_of(E::InvalidParams(io())), ErrorClass::Destination);
        assert_eq!(
            class_of(E::Unsupported("https".into())),
            ErrorClass::Destination
        );
        assert_eq!(class_of(E::Custom("out of range".into())), ErrorClass::Data);
        assert_eq!(class_of(E::NotEnoughData), ErrorClass::Data);
    }

    #[test]
    fn network_errors_count_as_unreachable() {
        let error = StoreError::from_client(&E::Network(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ))));
        assert!(error.is_retryable());
        assert!(error.is_unreachable());
        assert!(error.message().contains("connection refused"));
        assert!(StoreError::timed_out(Duration::from_secs(3)).is_unreachable());
    }

    #[test]
    fn server_error_texts_are_classified_by_code() {
        let cases = [
            (
                "Code: 60. DB::Exception: Table ponix.nope does not exist. (UNKNOWN_TABLE) (version 26.9.1.1)",
                ErrorClass::Destination,
                60,
            ),
            (
                "Code: 16. DB::Exception: No such column organization_id in table ponix.processed_envelopes. (NO_SUCH_COLUMN_IN_TABLE)",
                ErrorClass::Destination,
                16,
            ),
            (
                "Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)",
                ErrorClass::Destination,
                53,
            ),
            (
                "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)",
                ErrorClass::Destination,
                516,
            ),
            (
                "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
                ErrorClass::Retryable,
                252,
            ),
            (
                "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
                ErrorClass::Retryable,
                241,
            ),
            (
                "Code: 159. DB::Exception: Timeout exceeded: elapsed 5.1 seconds. (TIMEOUT_EXCEEDED)",
                ErrorClass::Retryable,
                159,
            ),
            (
                "Code: 242. DB::Exception: Table is in readonly mode. (TABLE_IS_READ_ONLY)",
                ErrorClass::Retryable,
                242,
            ),
            (
                "Code: 469. DB::Exception: Constraint `device` for table ponix.processed_envelopes is violated at row 3. (VIOLATED_CONSTRAINT)",
                ErrorClass::Data,
                469,
            ),
            (
                "Code: 117. DB::Exception: Cannot parse JSON object here. (INCORRECT_DATA)",
                ErrorClass::Data,
                117,
            ),
            (
                "Code: 41. DB::Exception: Cannot parse datetime. (CANNOT_PARSE_DATETIME)",
                ErrorClass::Data,
                41,
            ),
            (
                "Code: 33. DB::Exception: Cannot read all data. (CANNOT_READ_ALL_DATA)",
                ErrorClass::Data,
                33,
            ),
            // An unknown code is retried rather than treated as permanent.
            (
                "Code: 9999. DB::Exception: something new",
                ErrorClass::Retryable,
                9999,
            ),
            // From the X-ClickHouse-Exception-Code header alone.
            ("Code: 60", ErrorClass::Destination, 60),
            // An exception that arrived after the body started streaming.
            (
                "Code:252. DB::Exception: Too many parts",
                ErrorClass::Retryable,
                252,
            ),
        ];
        for (text, class, code) in cases {
            let error = server(text);
            assert_eq!((error.class(), error.code()), (class, Some(code)), "{text}");
        }
    }

    #[test]
    fn bare_http_statuses_are_classified() {
        for (text, class) in [
            ("500 Internal Server Error", ErrorClass::Retryable),
            ("502 Bad Gateway", ErrorClass::Retryable),
            ("503 Service Unavailable", ErrorClass::Retryable),
            ("429 Too Many Requests", ErrorClass::Retryable),
            ("404 Not Found", ErrorClass::Destination),
            ("401 Unauthorized", ErrorClass::Destination),
            ("<html>proxy says no</html>", ErrorClass::Retryable),
            ("", ErrorClass::Retryable),
        ] {
            assert_eq!(classify_server_text(text), (class, None), "{text:?}");
        }
    }

    #[test]
    fn messages_are_truncated_on_a_char_boundary() {
        let long = format!("Code: 62. DB::Exception: {}", "é".repeat(5000));
        let error = server(&long);
        assert_eq!(error.code(), Some(62));
        assert!(error.message().chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(error.message().ends_with('…'));
    }

    #[test]
    fn display_names_the_class() {
        let error = server("Code: 60. DB::Exception: Table x does not exist");
        assert!(
            error
                .to_string()
                .starts_with("permanent_destination ClickHouse error: ")
        );
    }

    #[test]
    fn insert_settings_are_explicit() {
        assert_eq!(insert_mode_settings(false), vec![("async_insert", "0")]);
        assert_eq!(
            insert_mode_settings(true),
            vec![("async_insert", "1"), ("wait_for_async_insert", "1")]
        );
    }
}
