//! Configuration from `PONIX_*` environment variables. Every value is validated at start.
//!
//! The field list below is the agreed interface; parsing is implemented in this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never be printed: Debug and Display show `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
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
}

#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub username: String,
    pub password: Secret,
    pub table: String,
    pub insert_timeout: Duration,
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
}
