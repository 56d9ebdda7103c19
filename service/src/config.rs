//! Configuration from `PONIX_*` environment variables. Every value is validated at start.
//!
//! [`VARIABLES`] is the single table of variables: parsing takes each variable's default
//! and expected form from it, and [`help_text`] prints it, so `--help` cannot drift from
//! what is parsed. A test checks that parsing reads exactly the variables in the table.
//!
//! An empty value counts as unset (compose files often pass `VAR=` for "not set"). Bad
//! values are all reported at once, each naming the variable, the value (never a secret's)
//! and the expected form. Unknown `PONIX_*` variables are probably typos: they become
//! warnings, not errors, so a newer deployment file does not stop an older writer.
//!
//! Credentials in `PONIX_NATS_URL` are split off when it is parsed ([`NatsAuth`], by the
//! rule of `split_userinfo`: the user-info ends at the last `@`), so that no URL handed
//! to the NATS client, which logs server URLs, carries them. Secrets are [`Secret`]s:
//! their Debug and Display show `***`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// Bare variant names keep the table of variables readable.
use Form::*;
use VarDefault::{Derived, Unset, Value};

/// A value that must never be printed: Debug and Display show `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it (a client, a child's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub nats: NatsConfig,
    pub clickhouse: ClickHouseConfig,
    pub migrations: MigrationsConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    pub startup_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub http_addr: SocketAddr,
    /// `None` = demo producer off (default).
    pub demo_interval: Option<Duration>,
    /// Problems worth logging that do not stop the writer, such as unknown `PONIX_*`
    /// variables. Parsing happens before logging is set up, so the caller logs these.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
pub struct NatsConfig {
    /// The servers of `PONIX_NATS_URL`, without credentials: what async-nats is given
    /// (a `&str` would be parsed as *one* server, so a list is passed as a list).
    pub servers: Vec<String>,
    /// The credentials `PONIX_NATS_URL` carried, passed as connect options.
    pub auth: NatsAuth,
    pub stream: String,
    /// Subjects the stream captures when the writer creates it.
    pub stream_subjects: Vec<String>,
    /// The consumer's filter subject.
    pub subject: String,
    pub consumer: String,
    pub batch_size: usize,
    pub batch_max_bytes: usize,
    pub batch_wait: Duration,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    pub dead_letter_subject: String,
    pub dead_letter_stream: String,
    pub nak_backoff_base: Duration,
    pub nak_backoff_max: Duration,
    /// Retention of the streams the writer creates; zero is unlimited.
    pub stream_max_age: Duration,
    pub stream_max_bytes: u64,
    pub dead_letter_max_age: Duration,
    pub dead_letter_max_bytes: u64,
    /// Consume from a stream whose sequences the table already holds (see
    /// [`crate::streams`]).
    pub allow_sequence_reuse: bool,
}

impl NatsConfig {
    /// The servers to connect to, for `async_nats::ConnectOptions::connect`.
    pub fn server_urls(&self) -> Vec<&str> {
        self.servers.iter().map(String::as_str).collect()
    }

    /// Connect options carrying the credentials, if any: the one place they go.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new();
        match &self.auth {
            NatsAuth::None => options,
            NatsAuth::Token(token) => options.token(token.expose().to_owned()),
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.expose().to_owned(), password.expose().to_owned())
            }
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out of the logs by accident.
        let Self {
            servers,
            auth,
            stream,
            stream_subjects,
            subject,
            consumer,
            batch_size,
            batch_max_bytes,
            batch_wait,
            ack_wait,
            max_deliver,
            max_ack_pending,
            dead_letter_subject,
            dead_letter_stream,
            nak_backoff_base,
            nak_backoff_max,
            stream_max_age,
            stream_max_bytes,
            dead_letter_max_age,
            dead_letter_max_bytes,
            allow_sequence_reuse,
        } = self;
        f.debug_struct("NatsConfig")
            .field("servers", servers)
            // Secret's Debug shows `***`.
            .field("auth", auth)
            .field("stream", stream)
            .field("stream_subjects", stream_subjects)
            .field("subject", subject)
            .field("consumer", consumer)
            .field("batch_size", batch_size)
            .field("batch_max_bytes", batch_max_bytes)
            .field("batch_wait", batch_wait)
            .field("ack_wait", ack_wait)
            .field("max_deliver", max_deliver)
            .field("max_ack_pending", max_ack_pending)
            .field("dead_letter_subject", dead_letter_subject)
            .field("dead_letter_stream", dead_letter_stream)
            .field("nak_backoff_base", nak_backoff_base)
            .field("nak_backoff_max", nak_backoff_max)
            .field("stream_max_age", stream_max_age)
            .field("stream_max_bytes", stream_max_bytes)
            .field("dead_letter_max_age", dead_letter_max_age)
            .field("dead_letter_max_bytes", dead_letter_max_bytes)
            .field("allow_sequence_reuse", allow_sequence_reuse)
            .finish()
    }
}

/// How the writer authenticates to NATS. Taken out of `PONIX_NATS_URL` when the
/// configuration is parsed and handed to async-nats as connect options, so that no
/// URL the client sees (it logs server addresses at debug level) carries a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    #[default]
    None,
    /// `nats://token@host`.
    Token(Secret),
    /// `nats://user:password@host`; the password may be empty.
    UserPassword { user: Secret, password: Secret },
}

#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub username: String,
    pub password: Secret,
    pub table: String,
    pub insert_timeout: Duration,
    /// Batches inserted at once (at least 1).
    pub insert_concurrency: usize,
    pub async_insert: bool,
}

#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    pub goose_binary: PathBuf,
    /// Overrides the DSN derived from the ClickHouse URL and credentials.
    pub dsn_override: Option<Secret>,
    pub timeout: Duration,
    /// How long the migration lease outlives a holder that stopped renewing it.
    pub lease_ttl: Duration,
}

// ---------------------------------------------------------------------------------------
// The table of variables

/// One environment variable: the single source for parsing and for `--help`.
#[derive(Debug)]
pub struct Var {
    pub name: &'static str,
    pub default: VarDefault,
    form: Form,
    /// Never echoed: not in errors, not in Debug output.
    pub secret: bool,
    pub help: &'static str,
}

impl Var {
    /// What a value must look like, e.g. "a whole number from 1 to 100000".
    pub fn expected(&self) -> String {
        self.form.describe()
    }

    /// How the value is parsed; tests derive the bad values to try from it.
    pub fn form(&self) -> Form {
        self.form
    }
}

/// What applies when a variable is unset (or empty).
#[derive(Debug, Clone, Copy)]
pub enum VarDefault {
    /// This value, parsed like any other.
    Value(&'static str),
    /// Computed from other variables, as described.
    Derived(&'static str),
    /// Nothing: the feature described is off or computed elsewhere.
    Unset(&'static str),
}

/// How a value is parsed, and the words that describe it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Form {
    NatsUrl,
    HttpUrl,
    /// JetStream stream or consumer name.
    NatsName,
    /// A subject to subscribe to: wildcards allowed.
    SubjectFilter,
    /// Comma-separated subjects to subscribe to.
    SubjectFilters,
    /// A subject to publish to: no wildcards.
    Subject,
    /// A ClickHouse database or table name, used unquoted.
    Identifier,
    /// Text that is not empty or only whitespace.
    NonEmptyText,
    AnyText,
    WholeNumber {
        min: u64,
        max: u64,
    },
    Bytes {
        min: u64,
        max: u64,
    },
    Seconds {
        min: f64,
        max: f64,
    },
    Millis {
        min: u64,
        max: u64,
    },
    Bool,
    LogFilter,
    LogFormatName,
    ListenAddr,
    FilePath,
}

impl Form {
    fn describe(self) -> String {
        match self {
            Form::NatsUrl => "a NATS server URL such as nats://127.0.0.1:4222 (comma-separated \
                              for several; schemes nats, tls, ws, wss). Credentials as \
                              nats://user:password@host or nats://token@host are passed to \
                              the client apart from the URL and never logged: they end at \
                              the last `@` and are percent-decoded (write `%` as %25, `,` as \
                              %2C)"
                .into(),
            Form::HttpUrl => "an http:// or https:// URL of host and optional port, such as \
                              http://127.0.0.1:8123, without credentials, path or query"
                .into(),
            Form::NatsName => "a name of 1 to 255 letters, digits, '-' and '_'".into(),
            Form::SubjectFilter => {
                "a NATS subject: non-empty dot-separated tokens without spaces; `*` matches one \
                 token and a final `>` the rest"
                    .into()
            }
            Form::SubjectFilters => "a comma-separated list of NATS subjects (`*` and a final `>` \
                                     as wildcards)"
                .into(),
            Form::Subject => "a NATS subject without wildcards: non-empty dot-separated tokens \
                              without spaces, `*` or `>`"
                .into(),
            Form::Identifier => {
                "an identifier: a letter or '_', then letters, digits and '_' (at most 255)".into()
            }
            Form::NonEmptyText => "any text that is not blank".into(),
            Form::AnyText => "any text".into(),
            Form::WholeNumber { min, max } => format!("a whole number from {min} to {max}"),
            Form::Bytes { min, max } => format!("a whole number of bytes from {min} to {max}"),
            Form::Seconds { min, max } => {
                format!("a number of seconds from {min} to {max} (decimals allowed, e.g. 0.5)")
            }
            Form::Millis { min, max } => {
                format!("a whole number of milliseconds from {min} to {max}")
            }
            Form::Bool => "true, false, 1 or 0".into(),
            Form::LogFilter => "a tracing EnvFilter directive list, such as `info` or \
                                `info,ponix_writer=debug`"
                .into(),
            Form::LogFormatName => "text or json".into(),
            Form::ListenAddr => "an IP address and port, such as 0.0.0.0:8080 or [::]:8080".into(),
            Form::FilePath => {
                "a file system path (relative paths start at the working directory)".into()
            }
        }
    }
}

macro_rules! vars {
    ($( $ident:ident: $name:literal, $default:expr, $form:expr, $secret:literal, $help:literal; )*) => {
        $( const $ident: Var = Var {
            name: $name,
            default: $default,
            form: $form,
            secret: $secret,
            help: $help,
        }; )*

        /// Every variable the writer reads, in `--help` order.
        pub static VARIABLES: &[Var] = &[$($ident),*];
    };
}

const MIB: u64 = 1024 * 1024;

vars! {
    NATS_URL: "PONIX_NATS_URL", Value("nats://127.0.0.1:4222"), NatsUrl, false,
        "NATS server(s) to consume from.";
    NATS_STREAM: "PONIX_NATS_STREAM", Value("processed_envelopes"), NatsName, false,
        "JetStream stream holding the envelopes; created if missing.";
    NATS_STREAM_SUBJECTS: "PONIX_NATS_STREAM_SUBJECTS", Derived("the value of PONIX_NATS_SUBJECT"),
        SubjectFilters, false,
        "Subjects the stream captures when the writer creates it. Must cover PONIX_NATS_SUBJECT.";
    NATS_SUBJECT: "PONIX_NATS_SUBJECT", Value("processed_envelopes.>"), SubjectFilter, false,
        "The consumer's filter subject: the envelopes this writer stores.";
    NATS_CONSUMER: "PONIX_NATS_CONSUMER", Value("ponix-writer"), NatsName, false,
        "Durable consumer name. Writers sharing it share the work.";
    NATS_BATCH_SIZE: "PONIX_NATS_BATCH_SIZE", Value("2000"),
        WholeNumber { min: 1, max: 100_000 }, false,
        "Most envelopes fetched and inserted as one batch.";
    NATS_BATCH_MAX_BYTES: "PONIX_NATS_BATCH_MAX_BYTES", Value("8388608"),
        Bytes { min: MIB, max: 256 * MIB }, false,
        "Most bytes fetched as one batch. At least NATS's max_payload (1 MiB by default): a \
         larger message could never be fetched.";
    NATS_BATCH_WAIT_SECS: "PONIX_NATS_BATCH_WAIT_SECS", Value("1"),
        Seconds { min: 0.01, max: 60.0 }, false,
        "Longest wait for a batch to fill before inserting what has arrived. Less than \
         PONIX_NATS_ACK_WAIT_SECS.";
    NATS_ACK_WAIT_SECS: "PONIX_NATS_ACK_WAIT_SECS", Value("30"),
        Seconds { min: 1.0, max: 3600.0 }, false,
        "How long JetStream waits for an acknowledgement before redelivering.";
    NATS_MAX_DELIVER: "PONIX_NATS_MAX_DELIVER", Value("20"),
        WholeNumber { min: 2, max: 10_000 }, false,
        "Deliveries of one message before it is dead-lettered. Unlimited is not offered: a \
         message that can never be stored would loop forever.";
    NATS_MAX_ACK_PENDING: "PONIX_NATS_MAX_ACK_PENDING",
        Derived("PONIX_NATS_BATCH_SIZE × (PONIX_CLICKHOUSE_INSERT_CONCURRENCY + 1)"),
        WholeNumber { min: 1, max: 1_000_000 }, false,
        "Most unacknowledged messages in flight. At least PONIX_NATS_BATCH_SIZE, or a batch \
         could never fill; the default leaves room for the batches being inserted and the \
         next one being fetched.";
    NATS_DEAD_LETTER_SUBJECT: "PONIX_NATS_DEAD_LETTER_SUBJECT",
        Value("ponix.dead_letter.processed_envelopes"), Subject, false,
        "Where envelopes that cannot be stored are published, with the reason in headers. \
         Must not match PONIX_NATS_STREAM_SUBJECTS, or dead letters would come back.";
    NATS_DEAD_LETTER_STREAM: "PONIX_NATS_DEAD_LETTER_STREAM", Value("ponix_dead_letters"),
        NatsName, false,
        "JetStream stream keeping the dead letters; created if missing.";
    NATS_NAK_BACKOFF_BASE_MS: "PONIX_NATS_NAK_BACKOFF_BASE_MS", Value("500"),
        Millis { min: 1, max: 600_000 }, false,
        "Pause before the first retry of an INSERT held through an outage, and the delay of a \
         NAK on a first delivery; it doubles with each retry or delivery (with jitter), up to \
         PONIX_NATS_NAK_BACKOFF_MAX_MS.";
    NATS_NAK_BACKOFF_MAX_MS: "PONIX_NATS_NAK_BACKOFF_MAX_MS", Value("30000"),
        Millis { min: 1, max: 3_600_000 }, false,
        "Longest pause between retries of a held INSERT, and longest NAK delay. At least \
         PONIX_NATS_NAK_BACKOFF_BASE_MS.";
    NATS_STREAM_MAX_AGE_SECS: "PONIX_NATS_STREAM_MAX_AGE_SECS", Value("0"),
        WholeNumber { min: 0, max: 3_153_600_000 }, false,
        "Whole seconds a message is kept in the stream, when the writer creates it; 0 keeps \
         messages without an age limit. An existing stream is not changed.";
    NATS_STREAM_MAX_BYTES: "PONIX_NATS_STREAM_MAX_BYTES", Value("0"),
        Bytes { min: 0, max: 1 << 50 }, false,
        "Most bytes the stream keeps (oldest dropped first), when the writer creates it; 0 is \
         unlimited. An existing stream is not changed.";
    NATS_DEAD_LETTER_MAX_AGE_SECS: "PONIX_NATS_DEAD_LETTER_MAX_AGE_SECS", Value("0"),
        WholeNumber { min: 0, max: 3_153_600_000 }, false,
        "Whole seconds a dead letter is kept, when the writer creates the dead-letter stream; \
         0 keeps them without an age limit.";
    NATS_DEAD_LETTER_MAX_BYTES: "PONIX_NATS_DEAD_LETTER_MAX_BYTES", Value("0"),
        Bytes { min: 0, max: 1 << 50 }, false,
        "Most bytes the dead-letter stream keeps (oldest dropped first), when the writer \
         creates it; 0 is unlimited.";
    NATS_ALLOW_SEQUENCE_REUSE: "PONIX_NATS_ALLOW_SEQUENCE_REUSE", Value("false"), Bool, false,
        "Consume from a stream whose sequences the table already holds (a stream recreated \
         outside the writer). New rows may then replace old rows with the same organization, \
         device, second and sequence; see the README's Guarantees.";
    CLICKHOUSE_URL: "PONIX_CLICKHOUSE_URL", Value("http://127.0.0.1:8123"), HttpUrl, false,
        "ClickHouse HTTP interface.";
    CLICKHOUSE_DATABASE: "PONIX_CLICKHOUSE_DATABASE", Value("ponix"), Identifier, false,
        "Database holding the table.";
    CLICKHOUSE_USERNAME: "PONIX_CLICKHOUSE_USERNAME", Value("default"), NonEmptyText, false,
        "ClickHouse user.";
    CLICKHOUSE_PASSWORD: "PONIX_CLICKHOUSE_PASSWORD", Value(""), AnyText, true,
        "ClickHouse password. Never logged.";
    CLICKHOUSE_TABLE: "PONIX_CLICKHOUSE_TABLE", Value("processed_envelopes"), Identifier, false,
        "Table the envelopes are inserted into.";
    CLICKHOUSE_INSERT_TIMEOUT_SECS: "PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS", Value("30"),
        Seconds { min: 0.1, max: 3600.0 }, false,
        "Longest time one batch insert may take before it counts as failed.";
    CLICKHOUSE_INSERT_CONCURRENCY: "PONIX_CLICKHOUSE_INSERT_CONCURRENCY", Value("1"),
        WholeNumber { min: 1, max: 16 }, false,
        "Most batches being inserted at once. The next batch is always fetched while the \
         current ones insert; acknowledgements go out in fetch order either way.";
    CLICKHOUSE_ASYNC_INSERT: "PONIX_CLICKHOUSE_ASYNC_INSERT", Value("false"), Bool, false,
        "Use ClickHouse's async_insert (with wait_for_async_insert=1). Always sent explicitly: \
         the server default changed in ClickHouse 26.2.";
    CLICKHOUSE_MIGRATIONS_DIR: "PONIX_CLICKHOUSE_MIGRATIONS_DIR", Value("migrations"), FilePath, false,
        "Directory of goose SQL migrations.";
    CLICKHOUSE_GOOSE_BINARY_PATH: "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH", Value("goose"), FilePath, false,
        "The goose binary; a bare name is looked up on PATH.";
    CLICKHOUSE_MIGRATIONS_ENABLED: "PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", Value("true"), Bool,
        false,
        "Run migrations at start.";
    CLICKHOUSE_GOOSE_DSN: "PONIX_CLICKHOUSE_GOOSE_DSN",
        Unset("derived from PONIX_CLICKHOUSE_URL, _USERNAME, _PASSWORD and _DATABASE"),
        NonEmptyText, true,
        "clickhouse-go DSN for goose, such as http://user:pass@host:8123/db. Never logged.";
    CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS: "PONIX_CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS", Value("120"),
        Seconds { min: 1.0, max: 3600.0 }, false,
        "Longest time goose may run before it is stopped.";
    CLICKHOUSE_MIGRATIONS_LEASE_TTL_SECS: "PONIX_CLICKHOUSE_MIGRATIONS_LEASE_TTL_SECS", Value("30"),
        Seconds { min: 3.0, max: 3600.0 }, false,
        "How long the migration lease (JetStream key-value bucket ponix_writer_migrations) \
         outlives a holder that stopped renewing it. Replicas migrate one at a time; the others \
         wait up to the migrations timeout plus this for the lease.";
    LOG_LEVEL: "PONIX_LOG_LEVEL", Value("info"), LogFilter, false,
        "Which log events to keep.";
    LOG_FORMAT: "PONIX_LOG_FORMAT", Value("text"), LogFormatName, false,
        "Log output format.";
    STARTUP_TIMEOUT_SECS: "PONIX_STARTUP_TIMEOUT_SECS", Value("30"),
        Seconds { min: 1.0, max: 3600.0 }, false,
        "Longest wait for NATS and ClickHouse at start before giving up.";
    SHUTDOWN_TIMEOUT_SECS: "PONIX_SHUTDOWN_TIMEOUT_SECS", Value("30"),
        Seconds { min: 1.0, max: 3600.0 }, false,
        "Longest time to finish the batches in flight after SIGTERM.";
    HTTP_ADDR: "PONIX_HTTP_ADDR", Value("0.0.0.0:8080"), ListenAddr, false,
        "Address of the health and metrics endpoint.";
    DEMO_INTERVAL_MS: "PONIX_DEMO_INTERVAL_MS", Value("0"),
        Millis { min: 0, max: 3_600_000 }, false,
        "Publish a demo envelope this often; 0 turns the demo producer off.";
}

/// `PONIX_*` variables that belong to the test harness, not the writer: no warning.
const HARNESS_VARIABLES: &[&str] = &["PONIX_REQUIRE_INFRA", "PONIX_TEST_RUN_DIR"];

/// The variables section of `ponix-writer --help`, generated from [`VARIABLES`].
pub fn help_text() -> String {
    let mut out = String::from(
        "Configuration comes from environment variables; an empty value counts as unset.\n",
    );
    for var in VARIABLES {
        let default = match var.default {
            Value("") => "(empty)",
            Value(value) | Derived(value) | Unset(value) => value,
        };
        out.push_str(&format!(
            "\n  {}\n      {}\n      Expects: {}\n      Default: {default}\n",
            var.name,
            var.help,
            var.expected(),
        ));
    }
    out
}

/// The README's configuration table, generated from [`VARIABLES`]. A test checks that
/// README.md holds exactly this; `UPDATE_README=1 cargo test -p ponix-writer --lib
/// readme` rewrites it there.
pub fn readme_table() -> String {
    let mut out =
        String::from("| Variable | Default | Expected form | Description |\n|---|---|---|---|\n");
    for var in VARIABLES {
        let default = match var.default {
            Value("") => "*(empty)*".to_owned(),
            Value(value) => format!("`{value}`"),
            Derived(text) | Unset(text) => text.to_owned(),
        };
        out.push_str(&format!(
            "| `{}` | {default} | {} | {} |\n",
            var.name,
            var.expected(),
            var.help
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Errors

/// Everything wrong with the configuration, not just the first problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<VarError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One bad variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarError {
    pub var: &'static str,
    /// `None` when the value must not be echoed.
    pub value: Option<String>,
    pub problem: String,
}

impl fmt::Display for VarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?}: {}", self.var, self.problem),
            None => write!(f, "{} (value hidden): {}", self.var, self.problem),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

impl Config {
    /// Reads the process environment. Only `PONIX_*` variables are looked at.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        let mut not_utf8 = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(PREFIX)) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) => not_utf8.push(name.to_owned()),
            }
        }
        Self::parse(vars, &not_utf8)
    }

    /// Reads the given variables as if they were the environment; only `PONIX_*` names are
    /// looked at. For tests, which must not mutate the process environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::parse(vars, &[])
    }

    /// The clickhouse-go v2 DSN goose connects with: `PONIX_CLICKHOUSE_GOOSE_DSN` if set,
    /// else `http://user:pass@host:port/database` from the ClickHouse URL (same scheme,
    /// HTTP interface) with the user and password percent-encoded.
    pub fn goose_dsn(&self) -> Secret {
        if let Some(dsn) = &self.migrations.dsn_override {
            return dsn.clone();
        }
        let ch = &self.clickhouse;
        let base = ch.url.trim_end_matches('/');
        let (scheme, authority) = base.split_once("://").unwrap_or(("http", base));
        let mut userinfo = percent_encode_userinfo(&ch.username);
        if !ch.password.expose().is_empty() {
            userinfo.push(':');
            userinfo.push_str(&percent_encode_userinfo(ch.password.expose()));
        }
        Secret(format!("{scheme}://{userinfo}@{authority}/{}", ch.database))
    }

    fn parse(
        vars: impl IntoIterator<Item = (String, String)>,
        not_utf8: &[String],
    ) -> Result<Self, ConfigError> {
        let mut r = Reader::new(vars);
        for name in not_utf8 {
            if let Some(var) = VARIABLES.iter().find(|v| v.name == name) {
                r.fail(var, None, "is not valid UTF-8".to_owned());
            }
        }
        let config = Self::build(&mut r);
        let (errors, warnings) = r.finish();
        if errors.is_empty() {
            Ok(Config { warnings, ..config })
        } else {
            Err(ConfigError { errors })
        }
    }

    /// Reads every variable, recording problems in `r`. When there are any, the returned
    /// config holds placeholders where the bad values were and must not be used.
    fn build(r: &mut Reader) -> Config {
        let subject = r.get(&NATS_SUBJECT, text);
        let stream_subjects = match r.get(&NATS_STREAM_SUBJECTS, subject_list) {
            None if r.is_unset(&NATS_STREAM_SUBJECTS) => subject.clone().map(|s| vec![s]),
            given => given,
        };
        let batch_size = r.get(&NATS_BATCH_SIZE, number);
        let insert_concurrency = r.get(&CLICKHOUSE_INSERT_CONCURRENCY, number);
        let max_ack_pending = match r.get(&NATS_MAX_ACK_PENDING, number) {
            // Room for the batches being inserted and the next one being fetched.
            None if r.is_unset(&NATS_MAX_ACK_PENDING) => batch_size
                .zip(insert_concurrency)
                .map(|(batch, concurrency)| batch.saturating_mul(concurrency.saturating_add(1))),
            given => given,
        };
        let dead_letter_subject = r.get(&NATS_DEAD_LETTER_SUBJECT, text);
        let stream = r.get(&NATS_STREAM, text);
        let dead_letter_stream = r.get(&NATS_DEAD_LETTER_STREAM, text);
        let batch_wait = r.get(&NATS_BATCH_WAIT_SECS, duration);
        let ack_wait = r.get(&NATS_ACK_WAIT_SECS, duration);
        let nak_backoff_base = r.get(&NATS_NAK_BACKOFF_BASE_MS, duration);
        let nak_backoff_max = r.get(&NATS_NAK_BACKOFF_MAX_MS, duration);

        // Rules across variables, checked only when both sides parsed.
        if let (Some(filter), Some(subjects)) = (&subject, &stream_subjects)
            && !subjects.iter().any(|s| subject_covers(s, filter))
        {
            r.fail_with_value(
                &NATS_SUBJECT,
                format!(
                    "must be covered by PONIX_NATS_STREAM_SUBJECTS ({}), or the consumer \
                     cannot be created",
                    subjects.join(",")
                ),
            );
        }
        if let (Some(dead_letter), Some(subjects)) = (&dead_letter_subject, &stream_subjects)
            && let Some(hit) = subjects.iter().find(|s| subject_covers(s, dead_letter))
        {
            r.fail_with_value(
                &NATS_DEAD_LETTER_SUBJECT,
                format!(
                    "is matched by stream subject {hit:?}, so dead letters would be consumed again"
                ),
            );
        }
        if let (Some(a), Some(b)) = (&stream, &dead_letter_stream)
            && a == b
        {
            r.fail_with_value(
                &NATS_DEAD_LETTER_STREAM,
                "must differ from PONIX_NATS_STREAM".to_owned(),
            );
        }
        if let (Some(batch), Some(pending)) = (batch_size, max_ack_pending)
            && pending < batch
        {
            r.fail_with_value(
                &NATS_MAX_ACK_PENDING,
                format!(
                    "must be at least PONIX_NATS_BATCH_SIZE ({batch}), or a batch could never fill"
                ),
            );
        }
        if let (Some(wait), Some(ack)) = (batch_wait, ack_wait)
            && wait >= ack
        {
            r.fail_with_value(
                &NATS_BATCH_WAIT_SECS,
                format!(
                    "must be less than PONIX_NATS_ACK_WAIT_SECS ({}), or messages are \
                     redelivered while the batch fills",
                    ack.as_secs_f64()
                ),
            );
        }
        if let (Some(base), Some(max)) = (nak_backoff_base, nak_backoff_max)
            && max < base
        {
            r.fail_with_value(
                &NATS_NAK_BACKOFF_MAX_MS,
                format!(
                    "must be at least PONIX_NATS_NAK_BACKOFF_BASE_MS ({})",
                    base.as_millis()
                ),
            );
        }

        let (servers, auth) = r.get_nats_url(&NATS_URL).unwrap_or_default();
        let seconds = |n: u64| Duration::from_secs(n);
        let nats = NatsConfig {
            servers,
            auth,
            stream: stream.unwrap_or_default(),
            stream_subjects: stream_subjects.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            consumer: r.get(&NATS_CONSUMER, text).unwrap_or_default(),
            batch_size: batch_size.and_then(to_usize).unwrap_or_default(),
            batch_max_bytes: r
                .get(&NATS_BATCH_MAX_BYTES, number)
                .and_then(to_usize)
                .unwrap_or_default(),
            batch_wait: batch_wait.unwrap_or_default(),
            ack_wait: ack_wait.unwrap_or_default(),
            max_deliver: r
                .get(&NATS_MAX_DELIVER, number)
                .and_then(to_i64)
                .unwrap_or_default(),
            max_ack_pending: max_ack_pending.and_then(to_i64).unwrap_or_default(),
            dead_letter_subject: dead_letter_subject.unwrap_or_default(),
            dead_letter_stream: dead_letter_stream.unwrap_or_default(),
            nak_backoff_base: nak_backoff_base.unwrap_or_default(),
            nak_backoff_max: nak_backoff_max.unwrap_or_default(),
            stream_max_age: r
                .get(&NATS_STREAM_MAX_AGE_SECS, number)
                .map(seconds)
                .unwrap_or_default(),
            stream_max_bytes: r.get(&NATS_STREAM_MAX_BYTES, number).unwrap_or_default(),
            dead_letter_max_age: r
                .get(&NATS_DEAD_LETTER_MAX_AGE_SECS, number)
                .map(seconds)
                .unwrap_or_default(),
            dead_letter_max_bytes: r
                .get(&NATS_DEAD_LETTER_MAX_BYTES, number)
                .unwrap_or_default(),
            allow_sequence_reuse: r.get(&NATS_ALLOW_SEQUENCE_REUSE, flag).unwrap_or_default(),
        };
        let clickhouse = ClickHouseConfig {
            url: r.get_url(&CLICKHOUSE_URL).unwrap_or_default(),
            database: r.get(&CLICKHOUSE_DATABASE, text).unwrap_or_default(),
            username: r.get(&CLICKHOUSE_USERNAME, text).unwrap_or_default(),
            password: r.get(&CLICKHOUSE_PASSWORD, secret).unwrap_or_default(),
            table: r.get(&CLICKHOUSE_TABLE, text).unwrap_or_default(),
            insert_timeout: r
                .get(&CLICKHOUSE_INSERT_TIMEOUT_SECS, duration)
                .unwrap_or_default(),
            insert_concurrency: insert_concurrency.and_then(to_usize).unwrap_or(1),
            async_insert: r.get(&CLICKHOUSE_ASYNC_INSERT, flag).unwrap_or_default(),
        };
        let migrations = MigrationsConfig {
            enabled: r
                .get(&CLICKHOUSE_MIGRATIONS_ENABLED, flag)
                .unwrap_or_default(),
            dir: r.get(&CLICKHOUSE_MIGRATIONS_DIR, path).unwrap_or_default(),
            goose_binary: r
                .get(&CLICKHOUSE_GOOSE_BINARY_PATH, path)
                .unwrap_or_default(),
            dsn_override: r.get(&CLICKHOUSE_GOOSE_DSN, secret),
            timeout: r
                .get(&CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS, duration)
                .unwrap_or_default(),
            lease_ttl: r
                .get(&CLICKHOUSE_MIGRATIONS_LEASE_TTL_SECS, duration)
                .unwrap_or_default(),
        };
        Config {
            nats,
            clickhouse,
            migrations,
            log_level: r.get(&LOG_LEVEL, text).unwrap_or_default(),
            log_format: r.get(&LOG_FORMAT, log_format).unwrap_or(LogFormat::Text),
            startup_timeout: r.get(&STARTUP_TIMEOUT_SECS, duration).unwrap_or_default(),
            shutdown_timeout: r.get(&SHUTDOWN_TIMEOUT_SECS, duration).unwrap_or_default(),
            http_addr: r
                .get(&HTTP_ADDR, socket_addr)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            demo_interval: r.get(&DEMO_INTERVAL_MS, duration).filter(|d| !d.is_zero()),
            warnings: Vec::new(),
        }
    }
}

const PREFIX: &str = "PONIX_";

/// Looks variables up, applies defaults from the table, and collects every error.
struct Reader {
    vars: HashMap<String, String>,
    read: BTreeSet<&'static str>,
    errors: Vec<VarError>,
}

impl Reader {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            // Later entries win, as in an environment.
            vars: vars
                .into_iter()
                .filter(|(name, _)| name.starts_with(PREFIX))
                .collect(),
            read: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    /// The value given for `var`, if any; an empty value counts as unset.
    fn given(&mut self, var: &'static Var) -> Option<&str> {
        self.read.insert(var.name);
        self.vars
            .get(var.name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn is_unset(&mut self, var: &'static Var) -> bool {
        self.given(var).is_none()
    }

    /// The value (given, or the table's default) parsed with `parse`; `None` when there is
    /// no value or it is bad, in which case the error is recorded.
    fn get<T>(&mut self, var: &'static Var, parse: fn(Form, &str) -> Option<T>) -> Option<T> {
        let raw = match (self.given(var), var.default) {
            (Some(given), _) => given.to_owned(),
            (None, Value(default)) => default.to_owned(),
            (None, Derived(_) | Unset(_)) => return None,
        };
        let parsed = parse(var.form, &raw);
        if parsed.is_none() {
            self.fail(var, Some(raw), format!("expected {}", var.expected()));
        }
        parsed
    }

    /// Like `get` for the ClickHouse URL, which must not hold credentials: they belong in
    /// the variables that are kept secret. Such a value is not echoed.
    fn get_url(&mut self, var: &'static Var) -> Option<String> {
        let raw = self.given(var).or(match var.default {
            Value(default) => Some(default),
            _ => None,
        })?;
        if has_credentials(raw) {
            self.fail(
                var,
                None,
                format!(
                    "contains credentials; put them in PONIX_CLICKHOUSE_USERNAME and \
                     PONIX_CLICKHOUSE_PASSWORD (expected {})",
                    var.expected()
                ),
            );
            return None;
        }
        self.get(var, text)
    }

    /// Like `get` for the NATS URL, which may hold credentials (NATS has no variables of
    /// its own for them): the servers without them, and the credentials apart. A value
    /// holding credentials is not echoed.
    fn get_nats_url(&mut self, var: &'static Var) -> Option<(Vec<String>, NatsAuth)> {
        let raw = self.given(var).or(match var.default {
            Value(default) => Some(default),
            _ => None,
        })?;
        match nats_servers(raw) {
            Ok(parsed) => Some(parsed),
            Err(problem) => {
                let value = (!has_credentials(raw)).then(|| raw.to_owned());
                let problem = problem.unwrap_or_else(|| format!("expected {}", var.expected()));
                self.fail(var, value, problem);
                None
            }
        }
    }

    /// Records a problem with `var`'s current value (given or default).
    fn fail_with_value(&mut self, var: &'static Var, problem: String) {
        let value = match (self.given(var), var.default) {
            (Some(given), _) => Some(given.to_owned()),
            (None, Value(default)) => Some(default.to_owned()),
            (None, _) => None,
        };
        self.fail(var, value, problem);
    }

    fn fail(&mut self, var: &'static Var, value: Option<String>, problem: String) {
        self.errors.push(VarError {
            var: var.name,
            value: value.filter(|_| !var.secret),
            problem,
        });
    }

    fn finish(self) -> (Vec<VarError>, Vec<String>) {
        let mut unknown: Vec<&String> = self
            .vars
            .keys()
            .filter(|name| !self.read.contains(name.as_str()))
            .filter(|name| !HARNESS_VARIABLES.contains(&name.as_str()))
            .collect();
        unknown.sort();
        let warnings = unknown
            .into_iter()
            .map(|name| match closest_variable(name) {
                Some(known) => format!(
                    "{name} is not a ponix-writer variable and is ignored; did you mean {known}?"
                ),
                None => format!("{name} is not a ponix-writer variable and is ignored"),
            })
            .collect();
        (self.errors, warnings)
    }
}

fn to_usize(n: u64) -> Option<usize> {
    usize::try_from(n).ok()
}

fn to_i64(n: u64) -> Option<i64> {
    i64::try_from(n).ok()
}

// Parsers. Each takes the variable's `Form`, so the bounds and rules it applies are the
// ones `Form::describe` prints. A parser given a form it does not handle returns `None`,
// which the test that parses every default catches.

/// A whole number within the form's bounds.
fn number(form: Form, s: &str) -> Option<u64> {
    let (WholeNumber { min, max } | Bytes { min, max } | Millis { min, max }) = form else {
        return None;
    };
    // `u64::from_str` also takes a leading `+`; plain digits are the documented form.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| (min..=max).contains(n))
}

fn duration(form: Form, s: &str) -> Option<Duration> {
    match form {
        Millis { .. } => number(form, s).map(Duration::from_millis),
        Seconds { min, max } => {
            // Digits and at most one point: f64's parser would also take `inf`, `1e3`, `+1`.
            let plain = s.bytes().any(|b| b.is_ascii_digit())
                && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && s.bytes().filter(|&b| b == b'.').count() <= 1;
            let secs: f64 = s.parse().ok().filter(|_| plain)?;
            (min..=max)
                .contains(&secs)
                .then(|| Duration::try_from_secs_f64(secs).ok())
                .flatten()
        }
        _ => None,
    }
}

fn text(form: Form, s: &str) -> Option<String> {
    let valid = match form {
        NatsUrl => valid_nats_url(s),
        HttpUrl => valid_http_url(s),
        NatsName => {
            (1..=255).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        SubjectFilter => subject_tokens(s, true).is_some(),
        Subject => subject_tokens(s, false).is_some(),
        Identifier => {
            let mut chars = s.chars();
            s.len() <= 255
                && chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        // Only whitespace is a mistake (a stray space in a deployment file), never a
        // user name, DSN or path.
        NonEmptyText | FilePath => !s.trim().is_empty(),
        AnyText => true,
        LogFilter => tracing_subscriber::EnvFilter::try_new(s).is_ok(),
        _ => false,
    };
    valid.then(|| s.to_owned())
}

fn secret(form: Form, s: &str) -> Option<Secret> {
    text(form, s).map(Secret)
}

fn path(form: Form, s: &str) -> Option<PathBuf> {
    matches!(form, FilePath).then_some(())?;
    text(form, s).map(PathBuf::from)
}

fn subject_list(form: Form, s: &str) -> Option<Vec<String>> {
    matches!(form, SubjectFilters).then_some(())?;
    s.split(',')
        .map(|subject| text(SubjectFilter, subject))
        .collect()
}

fn flag(form: Form, s: &str) -> Option<bool> {
    matches!(form, Bool).then_some(())?;
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn log_format(form: Form, s: &str) -> Option<LogFormat> {
    matches!(form, LogFormatName).then_some(())?;
    match s.to_ascii_lowercase().as_str() {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

fn socket_addr(form: Form, s: &str) -> Option<SocketAddr> {
    matches!(form, ListenAddr).then_some(())?;
    s.parse().ok()
}

/// Each comma-separated server must parse as async-nats parses it at connect time (so
/// that a bad port or scheme is a configuration error naming the variable, not a retry
/// loop until the start-up timeout), with a host, and without spaces (which the client
/// would trim).
fn valid_nats_url(s: &str) -> bool {
    s.split(',').all(|server| {
        !server.contains(|c: char| c.is_whitespace() || c.is_control())
            && server
                .parse::<async_nats::ServerAddr>()
                .is_ok_and(|address| !address.host().is_empty())
    })
}

/// Whether a URL (or comma-separated list of them) carries credentials: any `@` does,
/// by the rule of [`split_userinfo`].
fn has_credentials(s: &str) -> bool {
    s.contains('@')
}

/// `PONIX_NATS_URL` parsed: each comma-separated server without its user-info (it must
/// then parse as async-nats parses it, see [`valid_nats_url`]), and the one set of
/// credentials the servers carry. async-nats authenticates every connection with the
/// same options, so servers that carry credentials must carry the same ones; servers
/// without any use them too. `Err(None)` means "not of the expected form"; `Err(Some)`
/// names another problem. Neither holds the value.
fn nats_servers(s: &str) -> Result<(Vec<String>, NatsAuth), Option<String>> {
    let mut servers = Vec::new();
    let mut auth: Option<NatsAuth> = None;
    for server in s.split(',') {
        let split = split_userinfo(server);
        if !valid_nats_url(&split.url) {
            return Err(None);
        }
        if let Some(userinfo) = split.userinfo {
            let parsed = parse_userinfo(userinfo).ok_or_else(|| {
                Some(
                    "the credentials before `@` are empty or not UTF-8 once percent-decoded \
                     (expected nats://user:password@host or nats://token@host; write `%` as \
                     %25 and `,` as %2C)"
                        .to_owned(),
                )
            })?;
            match &auth {
                Some(first) if *first != parsed => {
                    return Err(Some(
                        "gives different credentials for different servers; the client uses \
                         one set for every server: give the same on each, or on one only"
                            .to_owned(),
                    ));
                }
                _ => auth = Some(parsed),
            }
        }
        servers.push(split.url);
    }
    Ok((servers, auth.unwrap_or_default()))
}

/// One server of `PONIX_NATS_URL`, split by [`split_userinfo`].
#[derive(Debug, PartialEq, Eq)]
struct SplitServer<'a> {
    /// The URL without user-info: what async-nats is given.
    url: String,
    /// The user-info as written (still percent-encoded), if there was any.
    userinfo: Option<&'a str>,
}

/// Splits one server URL into the URL without credentials and its user-info.
///
/// The rule: **the user-info is everything between `scheme://` (or the start, without
/// a scheme) and the last `@` of the server's text.** Standard URL parsers end the
/// authority at the first `/`, `?` or `#`, so for them a literal `pa#ss` or `pa/ss`
/// in a password starts a fragment or a path, the credentials go unnoticed, and the
/// password is echoed (and handed to the client inside the URL). A NATS server URL
/// has no meaningful path, query or fragment, so every `@` is taken as the end of
/// credentials. The cost is that a path holding an `@` is read as credentials too:
/// hidden rather than shown, the safe mistake. The user-info is percent-decoded
/// afterwards (see [`parse_userinfo`]); a comma, which separates servers, must be
/// written `%2C`.
fn split_userinfo(server: &str) -> SplitServer<'_> {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let Some(at) = rest.rfind('@') else {
        return SplitServer {
            url: server.to_owned(),
            userinfo: None,
        };
    };
    let host = &rest[at + 1..];
    SplitServer {
        url: match scheme {
            Some(scheme) => format!("{scheme}://{host}"),
            None => host.to_owned(),
        },
        userinfo: Some(&rest[..at]),
    }
}

/// Credentials from a user-info: `user:password` (split at the first `:`, so a
/// password may hold `:`), or a token without `:`. Each part is percent-decoded
/// (`%40` is `@`; write a literal `%` as `%25`). `None` when the user or token is
/// empty, or a decoded part is not UTF-8.
fn parse_userinfo(userinfo: &str) -> Option<NatsAuth> {
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .ok()
            .map(|decoded| Secret(decoded.into_owned()))
    };
    match userinfo.split_once(':') {
        Some((user, password)) if !user.is_empty() => Some(NatsAuth::UserPassword {
            user: decode(user)?,
            password: decode(password)?,
        }),
        None if !userinfo.is_empty() => Some(NatsAuth::Token(decode(userinfo)?)),
        _ => None,
    }
}

/// `http(s)://host[:port][/]`: the client appends its own path and query, and credentials
/// belong in their own variables so they can be kept secret.
fn valid_http_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.contains(char::is_whitespace)
    {
        return false;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        // A bracketed IPv6 host holds colons of its own.
        let Some((host, after)) = v6.split_once(']') else {
            return false;
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return false,
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    !host.is_empty() && port_ok
}

/// Subject tokens, if `subject` is well formed. `*` and a final `>` are wildcards.
fn subject_tokens(subject: &str, wildcards: bool) -> Option<Vec<&str>> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens
        .iter()
        .enumerate()
        .all(|(i, token)| {
            !token.is_empty()
                && !token.contains(|c: char| c.is_whitespace() || c.is_control())
                && match *token {
                    "*" => wildcards,
                    ">" => wildcards && i == last,
                    _ => !token.contains(['*', '>']),
                }
        })
        .then_some(tokens)
}

/// Whether every subject `filter` matches is also matched by `pattern` (a concrete subject
/// is a filter that matches itself).
fn subject_covers(pattern: &str, filter: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut filter = filter.split('.');
    loop {
        match (pattern.next(), filter.next()) {
            (None, None) => return true,
            // `>` needs at least one more token, which `filter` has.
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(f)) if f != ">" => {}
            (Some(p), Some(f)) if p == f => {}
            _ => return false,
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as a URL's user-info
/// needs for a password containing `@`, `:` or `/`.
fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The known variable closest to a probably-mistyped name, if any is close.
fn closest_variable(name: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .map(|var| (edit_distance(name, var.name), var.name))
        .filter(|&(distance, _)| distance <= 3)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance over bytes: names are ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    fn errors(vars: &[(&str, &str)]) -> Vec<String> {
        match load(vars) {
            Ok(config) => panic!("expected errors for {vars:?}, got {config:?}"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The single error for one bad variable.
    fn error(name: &str, value: &str) -> String {
        let errors = errors(&[(name, value)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].clone()
    }

    #[test]
    fn defaults() {
        let c = load(&[]).unwrap();
        let n = &c.nats;
        assert_eq!(n.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(n.auth, NatsAuth::None);
        assert_eq!(n.stream_max_age, Duration::ZERO);
        assert_eq!(n.stream_max_bytes, 0);
        assert_eq!(n.dead_letter_max_age, Duration::ZERO);
        assert_eq!(n.dead_letter_max_bytes, 0);
        assert!(!n.allow_sequence_reuse);
        assert_eq!(n.stream, "processed_envelopes");
        assert_eq!(n.subject, "processed_envelopes.>");
        assert_eq!(n.stream_subjects, ["processed_envelopes.>"]);
        assert_eq!(n.consumer, "ponix-writer");
        assert_eq!(n.batch_size, 2000);
        assert_eq!(n.batch_max_bytes, 8 * 1024 * 1024);
        assert_eq!(n.batch_wait, Duration::from_secs(1));
        assert_eq!(n.ack_wait, Duration::from_secs(30));
        assert_eq!(n.max_deliver, 20);
        assert_eq!(n.max_ack_pending, 4000);
        assert_eq!(c.clickhouse.insert_concurrency, 1);
        assert_eq!(
            n.dead_letter_subject,
            "ponix.dead_letter.processed_envelopes"
        );
        assert_eq!(n.dead_letter_stream, "ponix_dead_letters");
        assert_eq!(n.nak_backoff_base, Duration::from_millis(500));
        assert_eq!(n.nak_backoff_max, Duration::from_secs(30));
        let ch = &c.clickhouse;
        assert_eq!(ch.url, "http://127.0.0.1:8123");
        assert_eq!(ch.database, "ponix");
        assert_eq!(ch.username, "default");
        assert_eq!(ch.password.expose(), "");
        assert_eq!(ch.table, "processed_envelopes");
        assert_eq!(ch.insert_timeout, Duration::from_secs(30));
        assert!(!ch.async_insert);
        let m = &c.migrations;
        assert!(m.enabled);
        assert_eq!(m.dir, PathBuf::from("migrations"));
        assert_eq!(m.goose_binary, PathBuf::from("goose"));
        assert!(m.dsn_override.is_none());
        assert_eq!(m.timeout, Duration::from_secs(120));
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.startup_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.demo_interval, None);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn every_variable_can_be_set() {
        let c = load(&[
            ("PONIX_NATS_URL", "nats://a:1,tls://b:2"),
            ("PONIX_NATS_STREAM", "s1"),
            ("PONIX_NATS_STREAM_SUBJECTS", "x.>,y.*"),
            ("PONIX_NATS_SUBJECT", "y.z"),
            ("PONIX_NATS_CONSUMER", "c-1"),
            ("PONIX_NATS_BATCH_SIZE", "10"),
            ("PONIX_NATS_BATCH_MAX_BYTES", "2097152"),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.5"),
            ("PONIX_NATS_ACK_WAIT_SECS", "2.5"),
            ("PONIX_NATS_MAX_DELIVER", "2"),
            ("PONIX_NATS_MAX_ACK_PENDING", "10"),
            ("PONIX_NATS_DEAD_LETTER_SUBJECT", "dead.x"),
            ("PONIX_NATS_DEAD_LETTER_STREAM", "dead"),
            ("PONIX_NATS_NAK_BACKOFF_BASE_MS", "7"),
            ("PONIX_NATS_NAK_BACKOFF_MAX_MS", "7"),
            ("PONIX_NATS_STREAM_MAX_AGE_SECS", "86400"),
            ("PONIX_NATS_STREAM_MAX_BYTES", "1073741824"),
            ("PONIX_NATS_DEAD_LETTER_MAX_AGE_SECS", "604800"),
            ("PONIX_NATS_DEAD_LETTER_MAX_BYTES", "1048576"),
            ("PONIX_NATS_ALLOW_SEQUENCE_REUSE", "true"),
            ("PONIX_CLICKHOUSE_URL", "https://[::1]:8443/"),
            ("PONIX_CLICKHOUSE_DATABASE", "_db1"),
            ("PONIX_CLICKHOUSE_USERNAME", "u"),
            ("PONIX_CLICKHOUSE_PASSWORD", "p"),
            ("PONIX_CLICKHOUSE_TABLE", "t"),
            ("PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS", "0.25"),
            ("PONIX_CLICKHOUSE_ASYNC_INSERT", "TRUE"),
            ("PONIX_CLICKHOUSE_MIGRATIONS_DIR", "/m"),
            ("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH", "/bin/goose"),
            ("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "0"),
            ("PONIX_CLICKHOUSE_GOOSE_DSN", "clickhouse://x@y:9000/z"),
            ("PONIX_CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS", "5"),
            ("PONIX_CLICKHOUSE_MIGRATIONS_LEASE_TTL_SECS", "9"),
            ("PONIX_LOG_LEVEL", "warn,ponix_writer=trace"),
            ("PONIX_LOG_FORMAT", "json"),
            ("PONIX_STARTUP_TIMEOUT_SECS", "1"),
            ("PONIX_SHUTDOWN_TIMEOUT_SECS", "3600"),
            ("PONIX_HTTP_ADDR", "[::]:9"),
            ("PONIX_DEMO_INTERVAL_MS", "250"),
        ])
        .unwrap();
        assert_eq!(c.nats.servers, ["nats://a:1", "tls://b:2"]);
        assert_eq!(c.nats.stream_max_age, Duration::from_secs(86400));
        assert_eq!(c.nats.stream_max_bytes, 1 << 30);
        assert_eq!(c.nats.dead_letter_max_age, Duration::from_secs(604_800));
        assert_eq!(c.nats.dead_letter_max_bytes, 1 << 20);
        assert!(c.nats.allow_sequence_reuse);
        assert_eq!(c.nats.stream_subjects, ["x.>", "y.*"]);
        assert_eq!(c.nats.subject, "y.z");
        assert_eq!(c.nats.batch_size, 10);
        assert_eq!(c.nats.batch_max_bytes, 2 * 1024 * 1024);
        assert_eq!(c.nats.batch_wait, Duration::from_millis(500));
        assert_eq!(c.nats.ack_wait, Duration::from_millis(2500));
        assert_eq!(c.nats.max_deliver, 2);
        assert_eq!(c.nats.max_ack_pending, 10);
        assert_eq!(c.nats.dead_letter_subject, "dead.x");
        assert_eq!(c.nats.nak_backoff_base, Duration::from_millis(7));
        assert_eq!(c.clickhouse.url, "https://[::1]:8443/");
        assert_eq!(c.clickhouse.password.expose(), "p");
        assert_eq!(c.clickhouse.insert_timeout, Duration::from_millis(250));
        assert!(c.clickhouse.async_insert);
        assert!(!c.migrations.enabled);
        assert_eq!(c.migrations.lease_ttl, Duration::from_secs(9));
        assert_eq!(
            c.migrations.dsn_override.as_ref().map(Secret::expose),
            Some("clickhouse://x@y:9000/z")
        );
        assert_eq!(c.log_level, "warn,ponix_writer=trace");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3600));
        assert_eq!(c.http_addr, "[::]:9".parse().unwrap());
        assert_eq!(c.demo_interval, Some(Duration::from_millis(250)));
    }

    #[test]
    fn parsing_reads_exactly_the_documented_variables() {
        let documented: BTreeSet<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(documented.len(), VARIABLES.len(), "duplicate names");
        let mut reader = Reader::new([]);
        let _ = Config::build(&mut reader);
        assert_eq!(reader.read, documented);
        assert!(
            reader.errors.is_empty(),
            "defaults must parse: {:?}",
            reader.errors
        );
    }

    #[test]
    fn every_documented_variable_is_read() {
        // Setting each variable to its own default must not produce an unknown-variable
        // warning: parsing looked it up.
        let vars: Vec<(String, String)> = VARIABLES
            .iter()
            .filter_map(|v| match v.default {
                Value(d) if !d.is_empty() => Some((v.name.to_owned(), d.to_owned())),
                _ => None,
            })
            .collect();
        let config = Config::from_vars(vars).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn bad_numbers_name_the_variable_value_and_form() {
        assert_eq!(
            error("PONIX_NATS_BATCH_SIZE", "abc"),
            r#"PONIX_NATS_BATCH_SIZE="abc": expected a whole number from 1 to 100000"#
        );
        for bad in [
            "0",
            "100001",
            "-1",
            "+5",
            "1.5",
            " 5",
            "1e3",
            "99999999999999999999999",
        ] {
            assert!(error("PONIX_NATS_BATCH_SIZE", bad).starts_with("PONIX_NATS_BATCH_SIZE="));
        }
        assert!(error("PONIX_NATS_BATCH_MAX_BYTES", "1048575").contains("from 1048576 to"));
        assert!(error("PONIX_NATS_MAX_DELIVER", "1").contains("from 2 to 10000"));
        assert!(error("PONIX_NATS_MAX_DELIVER", "-1").contains("from 2 to 10000"));
        assert!(error("PONIX_NATS_MAX_ACK_PENDING", "0").contains("from 1 to 1000000"));
        assert!(error("PONIX_NATS_NAK_BACKOFF_BASE_MS", "0").contains("milliseconds from 1"));
        assert!(error("PONIX_NATS_NAK_BACKOFF_MAX_MS", "x").contains("milliseconds"));
        assert!(error("PONIX_DEMO_INTERVAL_MS", "-5").contains("milliseconds from 0"));
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in [
            "inf", "NaN", "1e3", "-1", "+1", ".", "", "1..2", "0.001", "61", "1s",
        ] {
            if bad.is_empty() {
                continue; // Empty is unset.
            }
            assert_eq!(
                error("PONIX_NATS_BATCH_WAIT_SECS", bad),
                format!(
                    "PONIX_NATS_BATCH_WAIT_SECS={bad:?}: expected a number of seconds from 0.01 \
                     to 60 (decimals allowed, e.g. 0.5)"
                )
            );
        }
        for var in [
            "PONIX_NATS_ACK_WAIT_SECS",
            "PONIX_CLICKHOUSE_INSERT_TIMEOUT_SECS",
            "PONIX_CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS",
            "PONIX_CLICKHOUSE_MIGRATIONS_LEASE_TTL_SECS",
            "PONIX_STARTUP_TIMEOUT_SECS",
            "PONIX_SHUTDOWN_TIMEOUT_SECS",
        ] {
            assert!(error(var, "0").contains("a number of seconds"), "{var}");
            assert!(error(var, "3601").contains("to 3600"), "{var}");
        }
        let c = load(&[("PONIX_NATS_BATCH_WAIT_SECS", ".5")]).unwrap();
        assert_eq!(c.nats.batch_wait, Duration::from_millis(500));
    }

    #[test]
    fn bad_booleans_are_rejected() {
        for var in [
            "PONIX_CLICKHOUSE_ASYNC_INSERT",
            "PONIX_CLICKHOUSE_MIGRATIONS_ENABLED",
        ] {
            assert_eq!(
                error(var, "yes"),
                format!(r#"{var}="yes": expected true, false, 1 or 0"#)
            );
        }
        assert!(load(&[("PONIX_CLICKHOUSE_ASYNC_INSERT", "False")]).is_ok());
    }

    #[test]
    fn bad_names_and_urls_are_rejected() {
        let cases = [
            ("PONIX_NATS_URL", "http://x:4222"),
            ("PONIX_NATS_URL", "nats://a, nats://b"),
            ("PONIX_NATS_URL", "nats://"),
            ("PONIX_NATS_STREAM", "a.b"),
            ("PONIX_NATS_STREAM", "a b"),
            ("PONIX_NATS_CONSUMER", "c*"),
            ("PONIX_NATS_DEAD_LETTER_STREAM", "x>"),
            ("PONIX_CLICKHOUSE_URL", "127.0.0.1:8123"),
            ("PONIX_CLICKHOUSE_URL", "ftp://h"),
            ("PONIX_CLICKHOUSE_URL", "http://"),
            ("PONIX_CLICKHOUSE_URL", "http://h:0"),
            ("PONIX_CLICKHOUSE_URL", "http://h:99999"),
            ("PONIX_CLICKHOUSE_URL", "http://h:x"),
            ("PONIX_CLICKHOUSE_URL", "http://h/path"),
            ("PONIX_CLICKHOUSE_URL", "http://h?x=1"),
            ("PONIX_CLICKHOUSE_URL", "http://[::1"),
            ("PONIX_CLICKHOUSE_URL", "http://[::1]x"),
            ("PONIX_CLICKHOUSE_URL", "http://::1:8123"),
            ("PONIX_CLICKHOUSE_DATABASE", "1db"),
            ("PONIX_CLICKHOUSE_DATABASE", "db-x"),
            ("PONIX_CLICKHOUSE_TABLE", "t; DROP TABLE x"),
            ("PONIX_LOG_LEVEL", "info,x=notalevel"),
            ("PONIX_LOG_FORMAT", "yaml"),
            ("PONIX_HTTP_ADDR", "localhost:8080"),
            ("PONIX_HTTP_ADDR", "8080"),
        ];
        for (var, value) in cases {
            let message = error(var, value);
            assert!(
                message.starts_with(&format!("{var}={value:?}: expected ")),
                "{message}"
            );
        }
        for good in [
            "http://h",
            "http://h/",
            "https://h:1",
            "http://[::1]",
            "http://10.0.0.1:8123",
        ] {
            assert!(load(&[("PONIX_CLICKHOUSE_URL", good)]).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_url_with_credentials_is_not_echoed() {
        let message = error("PONIX_CLICKHOUSE_URL", "http://u:hunter2@h:8123");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.starts_with("PONIX_CLICKHOUSE_URL (value hidden): contains credentials"));
    }

    #[test]
    fn subjects_are_validated() {
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "a b", "a*", "a.>x", "*x"] {
            if bad.is_empty() {
                continue;
            }
            assert!(
                error("PONIX_NATS_SUBJECT", bad).starts_with(&format!(
                    "PONIX_NATS_SUBJECT={bad:?}: expected a NATS subject"
                )),
                "{bad}"
            );
        }
        for bad in ["a.*", "a.>", ">", "a..b"] {
            let errors = errors(&[("PONIX_NATS_DEAD_LETTER_SUBJECT", bad)]);
            assert!(errors[0].contains("without wildcards"), "{bad}: {errors:?}");
        }
        let errors = errors(&[("PONIX_NATS_STREAM_SUBJECTS", "a.>,,b")]);
        assert!(errors[0].contains("comma-separated list"), "{errors:?}");
    }

    #[test]
    fn the_consumer_subject_must_be_inside_the_stream() {
        assert_eq!(
            errors(&[
                ("PONIX_NATS_STREAM_SUBJECTS", "a.>"),
                ("PONIX_NATS_SUBJECT", "b.x"),
            ]),
            [
                r#"PONIX_NATS_SUBJECT="b.x": must be covered by PONIX_NATS_STREAM_SUBJECTS (a.>), or the consumer cannot be created"#
            ]
        );
        // A narrower filter is fine; a wider one is not.
        assert!(
            load(&[
                ("PONIX_NATS_STREAM_SUBJECTS", "a.>"),
                ("PONIX_NATS_SUBJECT", "a.*.c")
            ])
            .is_ok()
        );
        assert!(
            load(&[
                ("PONIX_NATS_STREAM_SUBJECTS", "a.*"),
                ("PONIX_NATS_SUBJECT", "a.>")
            ])
            .is_err()
        );
        assert!(
            load(&[
                ("PONIX_NATS_STREAM_SUBJECTS", "a"),
                ("PONIX_NATS_SUBJECT", "a")
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_dead_letter_subject_must_not_loop_back() {
        let cases = [
            ("ponix.>", "ponix.dead_letter.processed_envelopes", true),
            (
                "ponix.*.processed_envelopes",
                "ponix.dead_letter.processed_envelopes",
                true,
            ),
            ("*.*.*", "ponix.dead_letter.processed_envelopes", true),
            (">", "ponix.dead_letter.processed_envelopes", true),
            (
                "ponix.dead_letter.processed_envelopes",
                "ponix.dead_letter.processed_envelopes",
                true,
            ),
            ("ponix.*", "ponix.dead_letter.processed_envelopes", false),
            (
                "ponix.dead_letter.processed_envelopes.>",
                "ponix.dead_letter.processed_envelopes",
                false,
            ),
            ("processed_envelopes.>", "processed_envelopes", false),
        ];
        for (stream, dead_letter, loops) in cases {
            let result = load(&[
                ("PONIX_NATS_STREAM_SUBJECTS", stream),
                ("PONIX_NATS_SUBJECT", stream),
                ("PONIX_NATS_DEAD_LETTER_SUBJECT", dead_letter),
            ]);
            match result {
                Ok(_) => assert!(!loops, "{stream} should catch {dead_letter}"),
                Err(e) => {
                    assert!(loops, "{stream} vs {dead_letter}: {e}");
                    assert_eq!(
                        e.errors[0].to_string(),
                        format!(
                            "PONIX_NATS_DEAD_LETTER_SUBJECT={dead_letter:?}: is matched by stream \
                             subject {stream:?}, so dead letters would be consumed again"
                        )
                    );
                }
            }
        }
    }

    #[test]
    fn subject_cover_rules() {
        assert!(subject_covers("a.>", "a.b.c"));
        assert!(subject_covers("a.>", "a.*"));
        assert!(subject_covers("a.>", "a.>"));
        assert!(!subject_covers("a.>", "a"));
        assert!(subject_covers("a.*", "a.b"));
        assert!(subject_covers("a.*", "a.*"));
        assert!(!subject_covers("a.*", "a.>"));
        assert!(!subject_covers("a.*", "a.b.c"));
        assert!(!subject_covers("a.b", "a.*"));
        assert!(subject_covers(">", "x"));
    }

    #[test]
    fn cross_variable_rules() {
        assert_eq!(
            errors(&[
                ("PONIX_NATS_BATCH_SIZE", "500"),
                ("PONIX_NATS_MAX_ACK_PENDING", "499")
            ]),
            [
                r#"PONIX_NATS_MAX_ACK_PENDING="499": must be at least PONIX_NATS_BATCH_SIZE (500), or a batch could never fill"#
            ]
        );
        // The derived default follows the batch size.
        let c = load(&[("PONIX_NATS_BATCH_SIZE", "50000")]).unwrap();
        assert_eq!(c.nats.max_ack_pending, 100_000);
        // ... and the insert concurrency: room for every batch inserting, plus one.
        let c = load(&[
            ("PONIX_NATS_BATCH_SIZE", "500"),
            ("PONIX_CLICKHOUSE_INSERT_CONCURRENCY", "3"),
        ])
        .unwrap();
        assert_eq!(c.clickhouse.insert_concurrency, 3);
        assert_eq!(c.nats.max_ack_pending, 2_000);
        assert_eq!(
            errors(&[("PONIX_NATS_BATCH_WAIT_SECS", "30")]),
            [
                r#"PONIX_NATS_BATCH_WAIT_SECS="30": must be less than PONIX_NATS_ACK_WAIT_SECS (30), or messages are redelivered while the batch fills"#
            ]
        );
        assert_eq!(
            errors(&[("PONIX_NATS_NAK_BACKOFF_BASE_MS", "60000")]),
            [
                r#"PONIX_NATS_NAK_BACKOFF_MAX_MS="30000": must be at least PONIX_NATS_NAK_BACKOFF_BASE_MS (60000)"#
            ]
        );
        assert_eq!(
            errors(&[("PONIX_NATS_DEAD_LETTER_STREAM", "processed_envelopes")]),
            [
                r#"PONIX_NATS_DEAD_LETTER_STREAM="processed_envelopes": must differ from PONIX_NATS_STREAM"#
            ]
        );
        // A bad side skips the rule instead of piling on a second error.
        assert_eq!(
            errors(&[
                ("PONIX_NATS_BATCH_SIZE", "x"),
                ("PONIX_NATS_MAX_ACK_PENDING", "1")
            ])
            .len(),
            1
        );
    }

    #[test]
    fn all_errors_are_reported_together() {
        let err = load(&[
            ("PONIX_NATS_BATCH_SIZE", "abc"),
            ("PONIX_LOG_FORMAT", "xml"),
            ("PONIX_HTTP_ADDR", "nope"),
        ])
        .unwrap_err();
        assert_eq!(err.errors.len(), 3);
        let text = err.to_string();
        assert!(
            text.starts_with("invalid configuration (3 problems):\n  PONIX_"),
            "{text}"
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = load(&[
            ("PONIX_NATS_BATCH_SIZE", ""),
            ("PONIX_CLICKHOUSE_GOOSE_DSN", ""),
        ])
        .unwrap();
        assert_eq!(c.nats.batch_size, 2000);
        assert!(c.migrations.dsn_override.is_none());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn demo_interval_zero_is_off() {
        assert_eq!(
            load(&[("PONIX_DEMO_INTERVAL_MS", "0")])
                .unwrap()
                .demo_interval,
            None
        );
    }

    #[test]
    fn unknown_ponix_variables_are_warnings() {
        let c = load(&[
            ("PONIX_NATS_BATCHSIZE", "5"),
            ("PONIX_SOMETHING_ELSE_ENTIRELY", "1"),
            ("PONIX_REQUIRE_INFRA", "1"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert_eq!(
            c.warnings,
            [
                "PONIX_NATS_BATCHSIZE is not a ponix-writer variable and is ignored; did you mean PONIX_NATS_BATCH_SIZE?",
                "PONIX_SOMETHING_ELSE_ENTIRELY is not a ponix-writer variable and is ignored",
            ]
        );
    }

    #[test]
    fn secrets_never_show() {
        let c = load(&[
            ("PONIX_CLICKHOUSE_PASSWORD", "hunter2"),
            ("PONIX_CLICKHOUSE_GOOSE_DSN", "http://u:hunter3@h/db"),
        ])
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("hunter3"),
            "{debug}"
        );
        assert!(debug.contains("password: ***"));
        assert_eq!(c.clickhouse.password.to_string(), "***");
        assert_eq!(format!("{:?}", c.goose_dsn()), "***");
        assert_eq!(c.clickhouse.password.expose(), "hunter2");
    }

    #[test]
    fn a_bad_secret_is_reported_without_its_value() {
        let err = Config::parse(
            [("PONIX_CLICKHOUSE_PASSWORD".to_owned(), "x".to_owned())],
            &["PONIX_CLICKHOUSE_PASSWORD".to_owned()],
        )
        .unwrap_err();
        assert_eq!(
            err.errors[0].to_string(),
            "PONIX_CLICKHOUSE_PASSWORD (value hidden): is not valid UTF-8"
        );
    }

    #[test]
    fn goose_dsn_is_derived_from_the_clickhouse_settings() {
        let dsn = |vars: &[(&str, &str)]| load(vars).unwrap().goose_dsn().expose().to_owned();
        assert_eq!(dsn(&[]), "http://default@127.0.0.1:8123/ponix");
        assert_eq!(
            dsn(&[
                ("PONIX_CLICKHOUSE_URL", "https://ch.example:8443/"),
                ("PONIX_CLICKHOUSE_USERNAME", "wri ter"),
                ("PONIX_CLICKHOUSE_PASSWORD", "p@ss:w/rd%é"),
                ("PONIX_CLICKHOUSE_DATABASE", "db"),
            ]),
            "https://wri%20ter:p%40ss%3Aw%2Frd%25%C3%A9@ch.example:8443/db"
        );
        assert_eq!(
            dsn(&[("PONIX_CLICKHOUSE_URL", "http://[::1]:8123")]),
            "http://default@[::1]:8123/ponix"
        );
        assert_eq!(
            dsn(&[("PONIX_CLICKHOUSE_GOOSE_DSN", "clickhouse://a:b@c:9000/d")]),
            "clickhouse://a:b@c:9000/d"
        );
    }

    #[test]
    fn help_lists_every_variable_with_its_default_and_form() {
        let help = help_text();
        for var in VARIABLES {
            assert!(
                help.contains(&format!("\n  {}\n", var.name)),
                "{}",
                var.name
            );
            assert!(help.contains(&var.expected()), "{}", var.name);
        }
        assert!(help.contains("\n      Default: 2000\n"));
        assert!(help.contains(
            "\n      Default: PONIX_NATS_BATCH_SIZE × (PONIX_CLICKHOUSE_INSERT_CONCURRENCY + 1)\n"
        ));
        assert!(help.contains("\n      Default: (empty)\n"));
    }

    #[test]
    fn nats_urls_are_checked_as_the_client_parses_them() {
        for bad in [
            "nats://h:x",
            "nats://h:99999",
            "nats://",
            "nats://a,",
            "http://h:4222",
            "nats://a, nats://b",
        ] {
            assert!(
                error("PONIX_NATS_URL", bad).starts_with(&format!("PONIX_NATS_URL={bad:?}: ")),
                "{bad}"
            );
        }
        let c = load(&[(
            "PONIX_NATS_URL",
            "nats://a:1,tls://b,127.0.0.1:4222,wss://[::1]:443",
        )])
        .unwrap();
        assert_eq!(
            c.nats.server_urls(),
            ["nats://a:1", "tls://b", "127.0.0.1:4222", "wss://[::1]:443"]
        );
        for url in c.nats.server_urls() {
            assert!(url.parse::<async_nats::ServerAddr>().is_ok(), "{url}");
        }
    }

    #[test]
    fn nats_credentials_are_taken_out_of_the_urls_and_never_shown() {
        let c = load(&[(
            "PONIX_NATS_URL",
            "nats://u:hunter2@a:4222,b,tls://u:hunter2@c/x",
        )])
        .unwrap();
        assert_eq!(c.nats.servers, ["nats://a:4222", "b", "tls://c/x"]);
        assert_eq!(
            c.nats.auth,
            NatsAuth::UserPassword {
                user: "u".into(),
                password: "hunter2".into()
            }
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains(r#"servers: ["nats://a:4222", "b", "tls://c/x"], auth: UserPassword { user: ***, password: *** }"#),
            "{debug}"
        );
        let c = load(&[("PONIX_NATS_URL", "tok3n@h")]).unwrap();
        assert_eq!(c.nats.servers, ["h"]);
        assert_eq!(c.nats.auth, NatsAuth::Token("tok3n".into()));
        assert!(!format!("{c:?}").contains("tok3n"));
        // The URL async-nats gets has no user-info, so it has nothing to log.
        for url in c.nats.server_urls() {
            assert!(
                !url.parse::<async_nats::ServerAddr>()
                    .unwrap()
                    .has_user_pass()
            );
        }
    }

    /// The rule of `split_userinfo`: the user-info ends at the last `@`, whatever `/`,
    /// `?`, `#` or `:` it holds, and is then percent-decoded.
    #[test]
    fn nats_credentials_end_at_the_last_at_sign() {
        let cases: &[(&str, &str, NatsAuth)] = &[
            (
                "nats://us/er:pa#ss/word@host:4222",
                "nats://host:4222",
                NatsAuth::UserPassword {
                    user: "us/er".into(),
                    password: "pa#ss/word".into(),
                },
            ),
            (
                "nats://u:p?x@h",
                "nats://h",
                NatsAuth::UserPassword {
                    user: "u".into(),
                    password: "p?x".into(),
                },
            ),
            (
                "nats://u:p@ss@w:rd@h:1",
                "nats://h:1",
                NatsAuth::UserPassword {
                    user: "u".into(),
                    password: "p@ss@w:rd".into(),
                },
            ),
            (
                "nats://us%2Fer:pa%23ss%25%2C@h",
                "nats://h",
                NatsAuth::UserPassword {
                    user: "us/er".into(),
                    password: "pa#ss%,".into(),
                },
            ),
            (
                "ws://u:@[::1]:80",
                "ws://[::1]:80",
                NatsAuth::UserPassword {
                    user: "u".into(),
                    password: "".into(),
                },
            ),
            ("t#k/n?@h", "h", NatsAuth::Token("t#k/n?".into())),
            // A path holding `@` reads as credentials: hidden, never shown.
            ("nats://h/a@b", "nats://b", NatsAuth::Token("h/a".into())),
            // Invalid percent escapes stay as written.
            (
                "nats://u:100%@h",
                "nats://h",
                NatsAuth::UserPassword {
                    user: "u".into(),
                    password: "100%".into(),
                },
            ),
        ];
        for (raw, url, auth) in cases {
            let c = load(&[("PONIX_NATS_URL", raw)]).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(c.nats.servers, [*url], "{raw}");
            assert_eq!(&c.nats.auth, auth, "{raw}");
        }
    }

    proptest::proptest! {
        /// Any user and password, written raw (only `%` and `,` encoded, as documented)
        /// or fully percent-encoded, come back exactly, the URL left holds neither,
        /// and no error or Debug output shows them.
        #[test]
        fn any_nats_credentials_round_trip_and_stay_hidden(
            user in "[^:@%,\\s]{1,12}",
            password in "[^%,\\s]{1,16}",
            encode_all in proptest::bool::ANY,
        ) {
            let (u, p) = if encode_all {
                (percent_encode_userinfo(&user), percent_encode_userinfo(&password))
            } else {
                (user.clone(), password.clone())
            };
            let raw = format!("nats://{u}:{p}@127.0.0.1:4222");
            let c = load(&[("PONIX_NATS_URL", &raw)]).unwrap();
            proptest::prop_assert_eq!(&c.nats.servers, &["nats://127.0.0.1:4222"]);
            proptest::prop_assert_eq!(
                &c.nats.auth,
                &NatsAuth::UserPassword { user: user.as_str().into(), password: password.as_str().into() }
            );
            let debug = format!("{c:?}");
            let pair = format!("{u}:{p}");
            proptest::prop_assert!(!debug.contains(&pair));
            proptest::prop_assert!(password.chars().count() < 8 || !debug.contains(&password));
            // The same value made invalid (a bad port) is refused without being echoed.
            let bad = format!("nats://{u}:{p}@127.0.0.1:x");
            let message = errors(&[("PONIX_NATS_URL", &bad)]).join("\n");
            proptest::prop_assert!(message.starts_with("PONIX_NATS_URL (value hidden): "), "{}", message);
            proptest::prop_assert!(!message.contains(&pair), "{}", message);
        }
    }

    #[test]
    fn a_malformed_nats_url_with_a_tricky_password_is_not_echoed() {
        for bad in [
            "nats://us/er:pa#ss/word@host:x",
            "nats://u:p?x@h:99999",
            "nats://u:p?x@",
            "nats://us/er:pa#ss/word@host:4222,http://h",
            "nats://:pa#ss@h",
            "nats://u:pa%FFss@h",
        ] {
            let message = error("PONIX_NATS_URL", bad);
            assert!(
                message.starts_with("PONIX_NATS_URL (value hidden): "),
                "{bad}: {message}"
            );
            for secret in ["pa#ss", "p?x", "pa%FFss"] {
                assert!(!message.contains(secret), "{bad}: {message}");
            }
        }
        let message = error("PONIX_NATS_URL", "nats://a:b@h1,nats://c:d@h2");
        assert!(message.contains("different credentials"), "{message}");
        // Without credentials the value is quoted as before.
        assert!(
            error("PONIX_NATS_URL", "nats://h:x")
                .starts_with("PONIX_NATS_URL=\"nats://h:x\": expected ")
        );
        // The ClickHouse URL refuses credentials that standard parsing would miss.
        let message = error("PONIX_CLICKHOUSE_URL", "http://u:pa#ss@h:8123");
        assert!(
            message.starts_with("PONIX_CLICKHOUSE_URL (value hidden): contains credentials"),
            "{message}"
        );
        assert!(!message.contains("pa#ss"));
    }

    #[test]
    fn blank_text_and_paths_are_rejected() {
        for var in [
            "PONIX_CLICKHOUSE_USERNAME",
            "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
            "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
        ] {
            assert!(
                error(var, " \t").starts_with(&format!("{var}=\" \\t\": expected ")),
                "{var}"
            );
        }
        assert_eq!(
            error("PONIX_CLICKHOUSE_GOOSE_DSN", "  "),
            "PONIX_CLICKHOUSE_GOOSE_DSN (value hidden): expected any text that is not blank"
        );
        // Whitespace inside is someone's choice; a blank password is a valid password.
        assert!(
            load(&[
                ("PONIX_CLICKHOUSE_USERNAME", "a b"),
                ("PONIX_CLICKHOUSE_PASSWORD", " ")
            ])
            .is_ok()
        );
    }

    /// The README's configuration table is [`readme_table`], exactly.
    #[test]
    fn readme_lists_every_variable() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let header = "| Variable | Default | Expected form | Description |\n";
        let start = readme
            .find(header)
            .expect("README.md has no configuration table");
        let end = readme[start..]
            .find("\n\n")
            .map_or(readme.len(), |n| start + n + 1);
        let table = readme_table();
        if readme[start..end] != table {
            if std::env::var_os("UPDATE_README").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
                std::fs::write(path, updated).unwrap_or_else(|e| panic!("writing {path}: {e}"));
                return;
            }
            panic!(
                "README.md's configuration table is not the generated one; rerun with \
                 UPDATE_README=1 to rewrite it. Expected:\n{table}"
            );
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
