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
//! rule of `syntax::split_userinfo`: the user-info ends at the last `@`), so that no URL
//! handed to the NATS client, which logs server URLs, carries them. Secrets are
//! [`Secret`]s: their Debug and Display show `***`.
//!
//! The other ways to authenticate to NATS (user and password, token, credentials file,
//! nkey seed file) have variables of their own; at most one way may be configured. Files
//! the writer needs (CA certificates, client certificates and keys, credentials, nkey
//! seeds) are read and checked while parsing, so that a missing or malformed one is
//! reported with the other problems, naming its variable; their contents are secrets.
//!
//! The rooms: this file holds the typed configuration and the entry points; `vars` the
//! table of variables and the texts generated from it; `read` the reader, its parsers
//! and errors, with `read::connect` for NATS authentication and TLS files; `syntax` the
//! rules for URLs, subjects and credentials.

mod read;
mod syntax;
mod vars;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use read::{ConfigError, VarError};
pub(crate) use syntax::{percent_encode_userinfo, subject_covers};
pub use vars::{Form, VARIABLES, Var, VarDefault, help_text};

use crate::tls::ClientTls;

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
    /// How the writer authenticates, passed as connect options.
    pub auth: NatsAuth,
    /// Set when a CA file or a client certificate is configured; TLS is then required.
    pub tls: Option<ClientTls>,
    /// TLS before the NATS protocol (`handshake_first` servers).
    pub tls_first: bool,
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
    /// Replicas of the streams the writer creates (see [`crate::streams`]).
    pub stream_replicas: usize,
    /// Consume from a stream whose sequences the table already holds (see
    /// [`crate::streams`]).
    pub allow_sequence_reuse: bool,
}

impl NatsConfig {
    /// The servers to connect to, for `async_nats::ConnectOptions::connect`.
    pub fn server_urls(&self) -> Vec<&str> {
        self.servers.iter().map(String::as_str).collect()
    }

    /// Connect options carrying the credentials and TLS settings, if any: the one place
    /// they go. Fails only for a credentials file that parsing accepted and async-nats
    /// does not (the error names the variable, never the contents).
    pub fn connect_options(&self) -> std::io::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            options = options
                .tls_client_config(tls.rustls_config())
                .require_tls(true);
        }
        if self.tls_first {
            options = options.tls_first();
        }
        Ok(match &self.auth {
            NatsAuth::None => options,
            NatsAuth::Token(token) => options.token(token.expose().to_owned()),
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.expose().to_owned(), password.expose().to_owned())
            }
            NatsAuth::Nkey { seed, .. } => options.nkey(seed.expose().to_owned()),
            NatsAuth::Credentials { contents, .. } => {
                options.credentials(contents.expose()).map_err(|error| {
                    std::io::Error::new(error.kind(), format!("PONIX_NATS_CREDS_FILE: {error}"))
                })?
            }
        })
    }

    /// The variable(s) holding the credentials in use, for errors about them.
    pub fn auth_source(&self) -> &'static str {
        match &self.auth {
            NatsAuth::None => {
                "PONIX_NATS_CREDS_FILE, PONIX_NATS_NKEY_SEED_FILE, PONIX_NATS_TOKEN or \
                 PONIX_NATS_USER (none is set)"
            }
            NatsAuth::Token(_) => "PONIX_NATS_TOKEN or the token in PONIX_NATS_URL",
            NatsAuth::UserPassword { .. } => {
                "PONIX_NATS_USER/PONIX_NATS_PASSWORD or the user-info of PONIX_NATS_URL"
            }
            NatsAuth::Nkey { .. } => "PONIX_NATS_NKEY_SEED_FILE",
            NatsAuth::Credentials { .. } => "PONIX_NATS_CREDS_FILE",
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out of the logs by accident.
        let Self {
            servers,
            auth,
            tls,
            tls_first,
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
            stream_replicas,
            allow_sequence_reuse,
        } = self;
        f.debug_struct("NatsConfig")
            .field("servers", servers)
            // Secret's Debug shows `***`.
            .field("auth", auth)
            .field("tls", tls)
            .field("tls_first", tls_first)
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
            .field("stream_replicas", stream_replicas)
            .field("allow_sequence_reuse", allow_sequence_reuse)
            .finish()
    }
}

/// How the writer authenticates to NATS: at most one way. Credentials in
/// `PONIX_NATS_URL` are taken out of it when the configuration is parsed and handed to
/// async-nats as connect options, so that no URL the client sees (it logs server
/// addresses at debug level) carries a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    #[default]
    None,
    /// `nats://token@host`.
    Token(Secret),
    /// `nats://user:password@host`, or `PONIX_NATS_USER` and `PONIX_NATS_PASSWORD`; the
    /// password may be empty.
    UserPassword { user: Secret, password: Secret },
    /// `PONIX_NATS_NKEY_SEED_FILE`: the seed it holds, checked at parse time.
    Nkey { file: PathBuf, seed: Secret },
    /// `PONIX_NATS_CREDS_FILE`: its contents (a user JWT and its seed), checked at parse
    /// time.
    Credentials { file: PathBuf, contents: Secret },
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
    /// Set for an `https://` URL: the CA file and client certificate, if any.
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    pub goose_binary: PathBuf,
    /// Overrides the DSN derived from the ClickHouse URL and credentials.
    pub dsn_override: Option<Secret>,
    /// `PONIX_CLICKHOUSE_CA_FILE`, given to goose as `SSL_CERT_FILE`.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// How long the migration lease outlives a holder that stopped renewing it.
    pub lease_ttl: Duration,
}

impl Config {
    /// Reads the process environment. Only `PONIX_*` variables are looked at.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        let mut not_utf8 = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(read::PREFIX)) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) => not_utf8.push(name.to_owned()),
            }
        }
        read::parse(vars, &not_utf8)
    }

    /// Reads the given variables as if they were the environment; only `PONIX_*` names are
    /// looked at. For tests, which must not mutate the process environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        read::parse(vars, &[])
    }
}
