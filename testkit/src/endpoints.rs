//! Where the test infrastructure is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::goose::Goose;

/// Set by `cargo xtask e2e`: a test that cannot find its infrastructure fails
/// instead of being skipped.
pub const REQUIRE_INFRA_VAR: &str = "PONIX_REQUIRE_INFRA";

/// The command a developer runs to get endpoints, named in every error.
pub const HOW_TO_START: &str = "run `cargo xtask up` (then `cargo test`), or `cargo xtask e2e`";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub nats_url: String,
    pub clickhouse_url: String,
    pub database: String,
    pub username: String,
    pub password: String,
    pub goose_binary: PathBuf,
    pub migrations_dir: PathBuf,
    /// Where `cargo xtask up` recorded its processes; absent when the endpoints
    /// came from the environment alone (for example a compose stack).
    pub run_dir: Option<PathBuf>,
}

impl Endpoints {
    /// Variables from the process environment win over the env file, so that a
    /// developer can point the tests at any NATS and ClickHouse.
    pub fn discover() -> anyhow::Result<Option<Endpoints>> {
        let layout = Layout::workspace();
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let env_file = layout.env_file();
        if let Ok(text) = std::fs::read_to_string(&env_file) {
            vars.extend(parse_env_file(&text));
        }
        vars.extend(std::env::vars().filter(|(key, _)| key.starts_with("PONIX_")));
        if !vars.contains_key("PONIX_NATS_URL") || !vars.contains_key("PONIX_CLICKHOUSE_URL") {
            return Ok(None);
        }
        let get =
            |key: &str, default: &str| vars.get(key).cloned().unwrap_or_else(|| default.to_owned());
        Ok(Some(Endpoints {
            nats_url: get("PONIX_NATS_URL", ""),
            clickhouse_url: get("PONIX_CLICKHOUSE_URL", ""),
            database: get("PONIX_CLICKHOUSE_DATABASE", "ponix"),
            username: get("PONIX_CLICKHOUSE_USERNAME", "default"),
            password: get("PONIX_CLICKHOUSE_PASSWORD", ""),
            goose_binary: vars
                .get("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| layout.goose()),
            migrations_dir: vars
                .get("PONIX_CLICKHOUSE_MIGRATIONS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| layout.migrations_dir()),
            run_dir: vars.get("PONIX_TEST_RUN_DIR").map(PathBuf::from),
        }))
    }

    /// Like [`Endpoints::discover`], but an absence is an error naming the fix.
    pub fn require() -> anyhow::Result<Endpoints> {
        match Endpoints::discover()? {
            Some(endpoints) => Ok(endpoints),
            None => bail!("no NATS/ClickHouse endpoints are configured: {HOW_TO_START}"),
        }
    }

    /// The ClickHouse HTTP port, for tests that talk to the endpoint directly.
    pub fn clickhouse_port(&self) -> anyhow::Result<u16> {
        port_of(&self.clickhouse_url)
    }

    pub fn nats_port(&self) -> anyhow::Result<u16> {
        port_of(&self.nats_url)
    }

    /// goose with these endpoints' migrations, against `database` on their ClickHouse.
    pub fn goose(&self, database: &str) -> anyhow::Result<Goose> {
        let dsn = Goose::local_dsn(
            self.clickhouse_port()?,
            &self.username,
            &self.password,
            database,
        );
        Ok(Goose::new(&self.goose_binary, &self.migrations_dir, dsn))
    }
}

/// The port of `url`, or of its first server when it lists several (a cluster).
fn port_of(url: &str) -> anyhow::Result<u16> {
    let first = url.split(',').next().unwrap_or(url);
    let authority = first.split("://").nth(1).unwrap_or(first);
    let host_port = authority.split('/').next().unwrap_or_default();
    let host_port = host_port.rsplit('@').next().unwrap_or_default();
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("no port in {url:?}"))
}

/// Reads `export KEY=value` lines as written by `cargo xtask up`, including its
/// single-quoting.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(key, value)| (key.to_owned(), unquote(value)))
        .collect()
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace(r"'\''", "'"),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_env_file_xtask_writes() {
        let vars = parse_env_file(
            "export PONIX_NATS_URL=nats://127.0.0.1:4222\nexport PONIX_CLICKHOUSE_PASSWORD=''\n\
             export QUOTED='it'\\''s'\n# comment\n",
        );
        assert_eq!(
            vars,
            vec![
                (
                    "PONIX_NATS_URL".to_owned(),
                    "nats://127.0.0.1:4222".to_owned()
                ),
                ("PONIX_CLICKHOUSE_PASSWORD".to_owned(), String::new()),
                ("QUOTED".to_owned(), "it's".to_owned()),
            ]
        );
    }

    #[test]
    fn finds_ports_in_urls() {
        assert_eq!(port_of("http://127.0.0.1:8123").unwrap(), 8123);
        assert_eq!(port_of("http://user:pw@host:9000/db").unwrap(), 9000);
        assert_eq!(port_of("nats://127.0.0.1:4222").unwrap(), 4222);
        assert_eq!(
            port_of("nats://127.0.0.1:4222,nats://127.0.0.1:4223").unwrap(),
            4222
        );
        assert!(port_of("http://localhost").is_err());
    }
}
