//! The reader: looks each variable of the table up, applies its default, parses it by
//! its [`Form`], checks the rules across variables, and collects every problem into one
//! [`ConfigError`] instead of stopping at the first. Parsing the defaults alone must
//! succeed and read exactly the variables of the table (a test checks both).

mod connect;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::syntax::{
    has_credentials, nats_servers, subject_covers, subject_tokens, valid_http_url, valid_nats_url,
};
use super::vars::*;
use super::{ClickHouseConfig, Config, LogFormat, MigrationsConfig, NatsAuth, NatsConfig, Secret};
use connect::{check_goose_dsn, clickhouse_tls, client_tls, nats_auth};
// Bare variant names keep the parsers readable.
use Form::*;
use VarDefault::{Derived, Unset, Value};

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

/// Parses `vars` (and reports each of `not_utf8` as such) into a [`Config`].
pub(super) fn parse(
    vars: impl IntoIterator<Item = (String, String)>,
    not_utf8: &[String],
) -> Result<Config, ConfigError> {
    let mut r = Reader::new(vars);
    for name in not_utf8 {
        if let Some(var) = VARIABLES.iter().find(|v| v.name == name) {
            r.fail(var, None, "is not valid UTF-8".to_owned());
        }
    }
    let config = build(&mut r);
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

    let (servers, url_auth) = r.get_nats_url(&NATS_URL).unwrap_or_default();
    let auth = nats_auth(r, url_auth);
    let nats_tls = client_tls(
        r,
        [&NATS_CA_FILE, &NATS_CLIENT_CERT_FILE, &NATS_CLIENT_KEY_FILE],
        false,
    );
    let seconds = |n: u64| Duration::from_secs(n);
    let nats = NatsConfig {
        servers,
        auth,
        tls: nats_tls,
        tls_first: r.get(&NATS_TLS_FIRST, flag).unwrap_or_default(),
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
        stream_replicas: r
            .get(&NATS_STREAM_REPLICAS, number)
            .and_then(to_usize)
            .unwrap_or(1),
        allow_sequence_reuse: r.get(&NATS_ALLOW_SEQUENCE_REUSE, flag).unwrap_or_default(),
    };
    let clickhouse_url = r.get_url(&CLICKHOUSE_URL);
    let clickhouse_tls = clickhouse_tls(r, clickhouse_url.as_deref());
    let clickhouse = ClickHouseConfig {
        url: clickhouse_url.unwrap_or_default(),
        database: r.get(&CLICKHOUSE_DATABASE, text).unwrap_or_default(),
        username: r.get(&CLICKHOUSE_USERNAME, text).unwrap_or_default(),
        password: r.get(&CLICKHOUSE_PASSWORD, secret).unwrap_or_default(),
        table: r.get(&CLICKHOUSE_TABLE, text).unwrap_or_default(),
        insert_timeout: r
            .get(&CLICKHOUSE_INSERT_TIMEOUT_SECS, duration)
            .unwrap_or_default(),
        insert_concurrency: insert_concurrency.and_then(to_usize).unwrap_or(1),
        async_insert: r.get(&CLICKHOUSE_ASYNC_INSERT, flag).unwrap_or_default(),
        tls: clickhouse_tls,
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
        ca_file: clickhouse.tls.as_ref().and_then(|tls| tls.ca_file.clone()),
        timeout: r
            .get(&CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS, duration)
            .unwrap_or_default(),
        lease_ttl: r
            .get(&CLICKHOUSE_MIGRATIONS_LEASE_TTL_SECS, duration)
            .unwrap_or_default(),
    };
    check_goose_dsn(r, migrations.dsn_override.as_ref());
    let client_cert = clickhouse
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_cert.is_some());
    if client_cert && migrations.enabled && migrations.dsn_override.is_none() {
        r.fail_with_value(
            &CLICKHOUSE_CLIENT_CERT_FILE,
            "goose's ClickHouse driver (clickhouse-go) cannot present a client certificate, \
             so it cannot migrate a ClickHouse that requires one: set \
             PONIX_CLICKHOUSE_MIGRATIONS_ENABLED=false and run the migrations from elsewhere \
             (see the README's \"Connecting to production\"), or set \
             PONIX_CLICKHOUSE_GOOSE_DSN to an endpoint that admits goose without one"
                .to_owned(),
        );
    }
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

pub(super) const PREFIX: &str = "PONIX_";

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
        let parsed = parse(var.form(), &raw);
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
    text(form, s).map(Secret::new)
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

#[cfg(test)]
mod tests {
    use super::super::percent_encode_userinfo;
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
        let _ = build(&mut reader);
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
        assert_eq!(
            format!("{:?}", c.migrations.dsn_override.as_ref().unwrap()),
            "***"
        );
        assert_eq!(c.clickhouse.password.expose(), "hunter2");
    }

    #[test]
    fn a_bad_secret_is_reported_without_its_value() {
        let err = parse(
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
}
