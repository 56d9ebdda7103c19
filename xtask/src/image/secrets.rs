//! The image must carry no secret: neither in its build history (`docker history
//! --no-trunc`, where BuildKit records build args and ENV lines) nor in its
//! Config.Env. Two rules, and findings that never repeat the value they found:
//!
//! - a variable named like a credential (a `_`-separated part such as PASSWORD,
//!   TOKEN, SECRET, KEY, CREDS) set to a non-empty value;
//! - a known secret value anywhere: the development password of
//!   docker/.env.example, docker/.env's, and any `PONIX_*_PASSWORD` value.

use std::collections::BTreeMap;

/// Name parts that mark a credential.
const SECRET_PARTS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PASS",
    "TOKEN",
    "SECRET",
    "KEY",
    "APIKEY",
    "CREDS",
    "CREDENTIALS",
];
/// Shorter values would match ordinary words (a user named like the database).
const MIN_KNOWN_LEN: usize = 6;

/// A value that must not appear, and where it comes from (for the finding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSecret {
    pub source: String,
    pub value: String,
}

/// Whether `name` looks like a credential's variable.
pub fn is_secret_name(name: &str) -> bool {
    name.to_ascii_uppercase()
        .split(['_', '-', '.'])
        .any(|part| SECRET_PARTS.contains(&part))
}

/// Known secret values from settings files (and the environment): every
/// credential-named key with a value long enough to look for.
pub fn known_secrets<'a>(
    source: &str,
    entries: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<KnownSecret> {
    entries
        .into_iter()
        .filter(|(key, value)| is_secret_name(key) && value.chars().count() >= MIN_KNOWN_LEN)
        .map(|(key, value)| KnownSecret {
            source: format!("{key} of {source}"),
            value: value.clone(),
        })
        .collect()
}

/// `PONIX_*_PASSWORD` values of this process's environment.
pub fn environment_secrets() -> Vec<KnownSecret> {
    let vars: BTreeMap<String, String> = std::env::vars()
        .filter(|(key, _)| key.starts_with("PONIX_") && key.ends_with("_PASSWORD"))
        .collect();
    known_secrets("the environment", &vars)
}

/// The findings, none of which contains a secret value.
pub fn scan(history: &str, env: &[String], known: &[KnownSecret]) -> Vec<String> {
    let mut findings = Vec::new();
    for var in env {
        if let Some((name, value)) = var.split_once('=')
            && is_secret_name(name)
            && !unquote(value).is_empty()
        {
            findings.push(format!("Config.Env sets {name}"));
        }
    }
    for (index, line) in history.lines().enumerate() {
        let entry = index + 1;
        for word in line.split_whitespace() {
            if let Some((name, value)) = word.split_once('=') {
                let name = name.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
                if !name.is_empty() && is_secret_name(name) && !unquote(value).is_empty() {
                    findings.push(format!("history entry {entry} sets {name}"));
                }
            }
        }
    }
    for secret in known {
        let in_env = env.iter().any(|var| var.contains(&secret.value));
        let entries: Vec<String> = history
            .lines()
            .enumerate()
            .filter(|(_, line)| line.contains(&secret.value))
            .map(|(index, _)| (index + 1).to_string())
            .collect();
        if in_env {
            findings.push(format!("Config.Env holds the value of {}", secret.source));
        }
        if !entries.is_empty() {
            findings.push(format!(
                "history entry {} holds the value of {}",
                entries.join(", "),
                secret.source
            ));
        }
    }
    findings.dedup();
    findings
}

fn unquote(value: &str) -> &str {
    value.trim().trim_matches(|c| c == '"' || c == '\'')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a real `docker history --no-trunc --format {{.CreatedBy}}`.
    const CLEAN_HISTORY: &str = "ENTRYPOINT [\"/usr/local/bin/ponix-writer\"]\n\
        HEALTHCHECK &{[\"CMD\" \"/usr/local/bin/ponix-healthcheck\"] \"10s\" \"3s\" \"1m0s\" '\\x03'}\n\
        ENV PONIX_CLICKHOUSE_MIGRATIONS_DIR=/app/migrations PONIX_CLICKHOUSE_GOOSE_BINARY_PATH=/usr/local/bin/goose PONIX_HTTP_ADDR=0.0.0.0:8080\n\
        RUN |3 VERSION=0.1.0 REVISION=ba160c67 SOURCE= /bin/bash -o errexit -c apt-get update\n\
        RUN |3 GOOSE_VERSION=v3.28.0 GOOSE_SHA256_LINUX_X86_64=ab07 GOOSE_SHA256_LINUX_ARM64=3968 /bin/bash -c curl\n";
    const CLEAN_ENV: &[&str] = &[
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PONIX_CLICKHOUSE_MIGRATIONS_DIR=/app/migrations",
        "PONIX_HTTP_ADDR=0.0.0.0:8080",
    ];

    fn env(extra: &[&str]) -> Vec<String> {
        CLEAN_ENV
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }

    fn dev_password() -> Vec<KnownSecret> {
        let settings: BTreeMap<String, String> = [
            ("CLICKHOUSE_USER", "ponix"),
            ("CLICKHOUSE_PASSWORD", "ponix-dev-password"),
            ("PONIX_CLICKHOUSE_PASSWORD", "ponix-dev-password"),
            ("PONIX_LOG_LEVEL", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        known_secrets("docker/.env.example", &settings)
    }

    #[test]
    fn a_clean_image_has_no_finding() {
        assert_eq!(
            scan(CLEAN_HISTORY, &env(&[]), &dev_password()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_password_build_arg_in_the_history_is_found_without_its_value() {
        let history = format!(
            "{CLEAN_HISTORY}RUN |1 PONIX_CLICKHOUSE_PASSWORD=ponix-dev-password /bin/sh -c migrate\n"
        );
        let findings = scan(&history, &env(&[]), &dev_password());
        assert_eq!(
            findings,
            [
                "history entry 6 sets PONIX_CLICKHOUSE_PASSWORD",
                "history entry 6 holds the value of CLICKHOUSE_PASSWORD of docker/.env.example",
                "history entry 6 holds the value of PONIX_CLICKHOUSE_PASSWORD of docker/.env.example",
            ]
        );
        assert!(findings.iter().all(|f| !f.contains("ponix-dev-password")));
    }

    #[test]
    fn a_token_in_the_environment_is_found() {
        let findings = scan(CLEAN_HISTORY, &env(&["GITHUB_TOKEN=ghp_abc123"]), &[]);
        assert_eq!(findings, ["Config.Env sets GITHUB_TOKEN"]);
        let findings = scan(CLEAN_HISTORY, &env(&["AWS_SECRET_ACCESS_KEY=x"]), &[]);
        assert_eq!(findings, ["Config.Env sets AWS_SECRET_ACCESS_KEY"]);
        // An empty value is a declaration, not a secret.
        assert!(scan(CLEAN_HISTORY, &env(&["PONIX_CLICKHOUSE_PASSWORD="]), &[]).is_empty());
    }

    #[test]
    fn the_development_password_is_found_under_any_name() {
        let findings = scan(
            CLEAN_HISTORY,
            &env(&["DSN=http://u:ponix-dev-password@h"]),
            &dev_password(),
        );
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(findings[0].starts_with("Config.Env holds the value of CLICKHOUSE_PASSWORD"));
        let history = format!("{CLEAN_HISTORY}LABEL note=ponix-dev-password\n");
        assert_eq!(scan(&history, &env(&[]), &dev_password()).len(), 2);
    }

    #[test]
    fn names_are_matched_by_part() {
        assert!(is_secret_name("PONIX_CLICKHOUSE_PASSWORD"));
        assert!(is_secret_name("api_key"));
        assert!(is_secret_name("DOCKER_CREDS"));
        assert!(!is_secret_name("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH"));
        assert!(!is_secret_name("MONKEY"));
        assert!(!is_secret_name("GOOSE_SHA256_LINUX_X86_64"));
    }

    #[test]
    fn short_values_are_not_looked_for() {
        let settings: BTreeMap<String, String> =
            [("CLICKHOUSE_PASSWORD".to_owned(), "ponix".to_owned())]
                .into_iter()
                .collect();
        assert!(known_secrets("x", &settings).is_empty());
    }
}
