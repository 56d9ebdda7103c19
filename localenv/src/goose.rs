//! goose, run by hand the way the tests, the drills and the endpoint's own tests
//! drive it: one command line, the output kept, a failure quoting it.
//!
//! The writer runs goose itself at start-up (`ponix_writer::migrate`); this is for
//! harness code that applies, rolls back or inspects migrations around it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// goose with its migrations directory and its ClickHouse DSN fixed.
#[derive(Debug, Clone)]
pub struct Goose {
    binary: PathBuf,
    dir: PathBuf,
    dsn: String,
    env: Vec<(String, String)>,
}

impl Goose {
    /// `dsn` is a clickhouse-go DSN, for example `http://user:pass@127.0.0.1:8123/db`.
    pub fn new(binary: &Path, dir: &Path, dsn: impl Into<String>) -> Goose {
        Goose {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            dsn: dsn.into(),
            env: Vec::new(),
        }
    }

    /// The DSN of a ClickHouse on `127.0.0.1:port` over plain HTTP.
    pub fn local_dsn(port: u16, username: &str, password: &str, database: &str) -> String {
        format!("http://{username}:{password}@127.0.0.1:{port}/{database}")
    }

    /// An environment variable for every run (goose's `ENVSUB` reads them).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Goose {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs `goose -dir <dir> clickhouse <dsn> <args>` and returns what it printed
    /// (stdout, then stderr). A non-zero exit is an error that quotes the output; the
    /// DSN, which holds the password, is never quoted.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.binary)
            .arg("-dir")
            .arg(&self.dir)
            .args(["clickhouse", &self.dsn])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| {
                format!(
                    "running {}: install it with `cargo xtask tools`",
                    self.binary.display()
                )
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(
            output.status.success(),
            "goose {} failed ({}):\n{text}",
            args.join(" "),
            output.status
        );
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_quotes_the_output_but_never_the_dsn() {
        // `sh -c` stands in for goose: it sees the same arguments.
        let dir = std::env::temp_dir();
        let script = dir.join(format!("fake-goose-{}", std::process::id()));
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"goose: $5 went wrong\" >&2\nexit 1\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let goose = Goose::new(&script, &dir, Goose::local_dsn(1, "u", "s3cret", "db"));
        let err = goose.run(&["status"]).unwrap_err().to_string();
        std::fs::remove_file(&script).unwrap();
        assert!(err.contains("goose status failed"), "{err}");
        assert!(err.contains("goose: status went wrong"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_missing_binary_names_the_fix() {
        let goose = Goose::new(Path::new("/nonexistent/goose"), Path::new("."), "");
        let err = format!("{:#}", goose.run(&["status"]).unwrap_err());
        assert!(err.contains("cargo xtask tools"), "{err}");
    }
}
