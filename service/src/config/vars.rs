//! The table of variables ([`VARIABLES`]): each one's name, default, form and help,
//! the single source that parsing, `--help` ([`help_text`]) and the README's
//! configuration table ([`readme_table`]) are all taken from.

// Bare variant names keep the table of variables readable.
use Form::*;
use VarDefault::{Derived, Unset, Value};

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
        $( pub(super) const $ident: Var = Var {
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
    NATS_USER: "PONIX_NATS_USER", Unset("no user"), NonEmptyText, false,
        "NATS user, with PONIX_NATS_PASSWORD. Not with credentials in PONIX_NATS_URL or \
         another way to authenticate.";
    NATS_PASSWORD: "PONIX_NATS_PASSWORD", Unset("no password"), AnyText, true,
        "Password of PONIX_NATS_USER. Never logged.";
    NATS_TOKEN: "PONIX_NATS_TOKEN", Unset("no token"), NonEmptyText, true,
        "NATS authentication token. Never logged.";
    NATS_CREDS_FILE: "PONIX_NATS_CREDS_FILE", Unset("no credentials file"), FilePath, false,
        "NATS credentials file (a user JWT and its nkey seed, as `nsc` writes it), for \
         servers in operator mode. Read at start; its contents are never logged.";
    NATS_NKEY_SEED_FILE: "PONIX_NATS_NKEY_SEED_FILE", Unset("no nkey"), FilePath, false,
        "File holding a user nkey seed (SU...), for servers with nkey users. Read at start; \
         the seed is never logged.";
    NATS_CA_FILE: "PONIX_NATS_CA_FILE", Unset("the platform's CA certificates only"), FilePath,
        false,
        "PEM file of CA certificates trusted for the NATS server's certificate, besides the \
         platform's. Setting any PONIX_NATS TLS variable requires TLS.";
    NATS_CLIENT_CERT_FILE: "PONIX_NATS_CLIENT_CERT_FILE", Unset("no client certificate"),
        FilePath, false,
        "PEM certificate (chain) presented to a NATS server that verifies clients; with \
         PONIX_NATS_CLIENT_KEY_FILE.";
    NATS_CLIENT_KEY_FILE: "PONIX_NATS_CLIENT_KEY_FILE", Unset("no client certificate"),
        FilePath, false,
        "PEM private key of PONIX_NATS_CLIENT_CERT_FILE.";
    NATS_TLS_FIRST: "PONIX_NATS_TLS_FIRST", Value("false"), Bool, false,
        "Start TLS before the NATS protocol, for servers configured with `handshake_first`.";
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
    NATS_STREAM_REPLICAS: "PONIX_NATS_STREAM_REPLICAS", Value("1"),
        WholeNumber { min: 1, max: 5 }, false,
        "Copies JetStream keeps of the stream and the dead-letter stream when the writer \
         creates them; the durable consumer follows its stream. More than 1 needs a \
         JetStream cluster with at least that many servers (3 survives the loss of one). An \
         existing stream is not changed: a different count is logged as a warning.";
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
    CLICKHOUSE_CA_FILE: "PONIX_CLICKHOUSE_CA_FILE", Unset("the platform's CA certificates only"),
        FilePath, false,
        "PEM file of CA certificates trusted for an https:// ClickHouse, besides the \
         platform's; goose gets it as SSL_CERT_FILE.";
    CLICKHOUSE_CLIENT_CERT_FILE: "PONIX_CLICKHOUSE_CLIENT_CERT_FILE",
        Unset("no client certificate"), FilePath, false,
        "PEM certificate (chain) presented to an https:// ClickHouse that verifies clients; \
         with PONIX_CLICKHOUSE_CLIENT_KEY_FILE. goose cannot present one: migrations must \
         then be off or use PONIX_CLICKHOUSE_GOOSE_DSN.";
    CLICKHOUSE_CLIENT_KEY_FILE: "PONIX_CLICKHOUSE_CLIENT_KEY_FILE",
        Unset("no client certificate"), FilePath, false,
        "PEM private key of PONIX_CLICKHOUSE_CLIENT_CERT_FILE.";
    CLICKHOUSE_TABLE: "PONIX_CLICKHOUSE_TABLE", Value("processed_envelopes"), Identifier, false,
        "Table the envelopes are inserted into. With migrations on, they create and \
         migrate this table (goose's ENVSUB); any name but the default keeps its goose \
         history in goose_db_version_<table>, so several tables can share a database.";
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
        "clickhouse-go DSN for goose, such as http://user:pass@host:8123/db (https:// needs \
         ?secure=true). Never logged.";
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
pub(super) const HARNESS_VARIABLES: &[&str] = &["PONIX_REQUIRE_INFRA", "PONIX_TEST_RUN_DIR"];

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
/// readme` rewrites it there. Built for tests only: that test is its one reader.
#[cfg(test)]
fn readme_table() -> String {
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

/// The known variable closest to a probably-mistyped name, if any is close.
pub(super) fn closest_variable(name: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .map(|var| (strsim::levenshtein(name, var.name), var.name))
        .filter(|&(distance, _)| distance <= 3)
        .min()
        .map(|(_, known)| known)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn suggestions_are_at_most_three_edits_away() {
        assert_eq!(
            closest_variable("PONIX_NATS_BATCHSIZE"),
            Some("PONIX_NATS_BATCH_SIZE")
        );
        assert_eq!(
            closest_variable("PONIX_LOG_FMT"),
            Some("PONIX_LOG_FORMAT"),
            "three edits"
        );
        assert_eq!(closest_variable("PONIX_LOG_FMT_"), None, "four edits");
        assert_eq!(closest_variable("PONIX_SOMETHING_ELSE_ENTIRELY"), None);
    }
}
