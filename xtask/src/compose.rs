//! The compose backend: the `docker compose` command lines for docker/compose.yaml,
//! the endpoints it publishes, and whether a Docker engine answers here.
//!
//! The command lines are built by pure functions and unit-tested, because the
//! machines this project is developed on have no Docker engine: this path has to be
//! correct by construction. `cargo xtask lint` validates the compose file itself.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::{Shell, cmd};

use crate::env_file;

/// The stack, relative to the project root.
pub const COMPOSE_FILE: &str = "docker/compose.yaml";
/// The services' settings: the committed template, then the developer's own copy.
pub const SETTINGS_TEMPLATE: &str = "docker/.env.example";
pub const SETTINGS_LOCAL: &str = "docker/.env";

/// compose.yaml's own `name:`, used by `cargo xtask dev --backend compose`.
pub const DEV_PROJECT: &str = "ponix";
/// A separate project for e2e, so that its `down --volumes` never wipes dev data.
pub const E2E_PROJECT: &str = "ponix-e2e";
/// What e2e needs from the stack: the writer itself runs as a child process.
pub const INFRA_SERVICES: &[&str] = &["nats", "clickhouse"];
/// `up --wait` gives up after this long (first pulls of the images included).
pub const UP_WAIT_TIMEOUT_SECS: u32 = 300;

/// Where compose.yaml publishes the services (127.0.0.1 only).
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const NATS_MONITOR_URL: &str = "http://127.0.0.1:8222";
pub const CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";
pub const WRITER_URL: &str = "http://127.0.0.1:8080";

/// One compose project: which files, under which name, interpolated from which env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeBackend {
    pub project: String,
    pub files: Vec<PathBuf>,
    /// The interpolation env file: pins.env, which holds the image tags.
    pub env_file: PathBuf,
}

impl ComposeBackend {
    /// The infrastructure for `cargo xtask e2e --backend compose`.
    pub fn e2e(layout: &Layout) -> ComposeBackend {
        ComposeBackend::new(layout, E2E_PROJECT)
    }

    /// The whole stack, writer included, for `cargo xtask dev --backend compose`.
    pub fn dev(layout: &Layout) -> ComposeBackend {
        ComposeBackend::new(layout, DEV_PROJECT)
    }

    fn new(layout: &Layout, project: &str) -> ComposeBackend {
        ComposeBackend {
            project: project.to_owned(),
            files: vec![layout.root.join(COMPOSE_FILE)],
            env_file: layout.pins_file(),
        }
    }

    /// `docker` arguments common to every command: `compose`, project, files, env file.
    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["compose".into(), "--project-name".into()];
        args.push(self.project.clone().into());
        for file in &self.files {
            args.push("--file".into());
            args.push(file.into());
        }
        args.push("--env-file".into());
        args.push(self.env_file.clone().into());
        args
    }

    fn with(&self, tail: &[&str]) -> Vec<OsString> {
        let mut args = self.base_args();
        args.extend(tail.iter().map(OsString::from));
        args
    }

    /// Starts `services` (all when empty) and returns once each one's healthcheck
    /// passes; fails if one does not within [`UP_WAIT_TIMEOUT_SECS`].
    pub fn up_args(&self, services: &[&str]) -> Vec<OsString> {
        let timeout = UP_WAIT_TIMEOUT_SECS.to_string();
        let mut args = self.with(&["up", "--detach", "--wait", "--wait-timeout", &timeout]);
        args.extend(services.iter().map(OsString::from));
        args
    }

    /// The whole stack with the writer's image (re)built first: for `dev`.
    pub fn up_stack_args(&self) -> Vec<OsString> {
        let timeout = UP_WAIT_TIMEOUT_SECS.to_string();
        self.with(&[
            "up",
            "--build",
            "--detach",
            "--wait",
            "--wait-timeout",
            &timeout,
        ])
    }

    /// Removes the containers, the network and the named volumes (the data).
    pub fn down_args(&self) -> Vec<OsString> {
        self.with(&["down", "--volumes", "--remove-orphans"])
    }

    /// Every service's log, for a failure report.
    pub fn logs_args(&self) -> Vec<OsString> {
        self.with(&["logs", "--no-color", "--timestamps"])
    }

    /// The services' state (health included), stopped ones too.
    pub fn ps_args(&self) -> Vec<OsString> {
        self.with(&["ps", "--all"])
    }

    /// Resolves and validates the files without starting anything (needs no engine).
    pub fn config_args(&self) -> Vec<OsString> {
        self.with(&["config", "--quiet"])
    }

    /// The variables the writer, goose and the tests read, like
    /// `localenv::local::Endpoints::env_vars` for the local backend. The ClickHouse
    /// credentials are the ones the stack's settings create.
    pub fn env_vars(&self, layout: &Layout) -> anyhow::Result<Vec<(&'static str, String)>> {
        let settings = load_settings(&layout.root)?;
        let setting = |key: &str| -> anyhow::Result<String> {
            settings
                .get(key)
                .cloned()
                .with_context(|| format!("{SETTINGS_TEMPLATE} (or {SETTINGS_LOCAL}) has no {key}"))
        };
        Ok(vec![
            ("PONIX_NATS_URL", NATS_URL.to_owned()),
            ("PONIX_CLICKHOUSE_URL", CLICKHOUSE_URL.to_owned()),
            (
                "PONIX_CLICKHOUSE_DATABASE",
                setting("PONIX_CLICKHOUSE_DATABASE")?,
            ),
            (
                "PONIX_CLICKHOUSE_USERNAME",
                setting("PONIX_CLICKHOUSE_USERNAME")?,
            ),
            (
                "PONIX_CLICKHOUSE_PASSWORD",
                setting("PONIX_CLICKHOUSE_PASSWORD")?,
            ),
            (
                "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
                layout.migrations_dir().display().to_string(),
            ),
            (
                "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
                layout.goose().display().to_string(),
            ),
        ])
    }

    // ---- Running the command lines ----------------------------------------------

    /// `up --wait` for `services` (all when empty). Needs a Docker engine with the
    /// compose plugin: check [`docker_engine_available`] first to choose a backend.
    pub fn up(&self, sh: &Shell, services: &[&str]) -> anyhow::Result<()> {
        require_compose()?;
        let args = self.up_args(services);
        cmd!(sh, "docker {args...}").run().with_context(|| {
            format!(
                "`docker compose up --wait` failed for project {}: a service did not become \
                 healthy (its log follows when called from e2e; or run `docker compose -p {} logs`)",
                self.project, self.project
            )
        })
    }

    /// `down --volumes --remove-orphans`: nothing of the project is left.
    pub fn down(&self, sh: &Shell) -> anyhow::Result<()> {
        let args = self.down_args();
        cmd!(sh, "docker {args...}")
            .run()
            .with_context(|| format!("`docker compose down` failed for project {}", self.project))
    }

    /// Writes `ps` and every service's log to `.tools/logs/compose-<project>.log`
    /// (e2e.yml uploads that directory when a run fails), prints the last lines, and
    /// returns the file's path.
    pub fn save_logs(&self, sh: &Shell, layout: &Layout) -> anyhow::Result<PathBuf> {
        let ps = self.ps_args();
        let logs = self.logs_args();
        let mut text = String::new();
        for args in [ps, logs] {
            let output = cmd!(sh, "docker {args...}")
                .quiet()
                .ignore_status()
                .output()
                .context("running `docker compose` to collect the logs")?;
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text.push('\n');
        }
        let dir = layout.logs_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("compose-{}.log", self.project));
        fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        let tail: Vec<&str> = text.lines().rev().take(80).collect();
        eprintln!("----- {} (last {} lines) -----", path.display(), tail.len());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
        Ok(path)
    }
}

/// The services' settings: docker/.env.example, then docker/.env over it when present.
/// Env files, read by compose's rules (`env_file`).
pub fn load_settings(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let template = root.join(SETTINGS_TEMPLATE);
    let text =
        fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
    let mut settings =
        parse_settings(&text).with_context(|| format!("parsing {}", template.display()))?;
    let local = root.join(SETTINGS_LOCAL);
    if local.exists() {
        let text =
            fs::read_to_string(&local).with_context(|| format!("reading {}", local.display()))?;
        settings
            .extend(parse_settings(&text).with_context(|| format!("parsing {}", local.display()))?);
    }
    Ok(settings)
}

/// One settings file: an env file (see `env_file`) where a later value wins.
pub fn parse_settings(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(env_file::parse(text)?
        .into_iter()
        .map(|entry| (entry.key, entry.value))
        .collect())
}

// ---- Probes --------------------------------------------------------------------

/// How long a probe may take: `docker info` against a dead socket can hang.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// True when a Docker engine answers `docker info` within a few seconds. False when
/// the CLI is missing, no daemon runs, or it does not answer in time.
pub fn docker_engine_available() -> bool {
    probe(&["info", "--format", "{{.ServerVersion}}"])
}

/// True when the compose plugin is installed (no engine needed to answer).
pub fn compose_available() -> bool {
    probe(&["compose", "version"])
}

/// True when the buildx plugin is installed (no engine needed to answer).
pub fn buildx_available() -> bool {
    probe(&["buildx", "version"])
}

fn require_compose() -> anyhow::Result<()> {
    if !compose_available() {
        bail!(
            "`docker compose` is not available: install Docker with the compose plugin \
             (v2), or use `--backend local`"
        );
    }
    Ok(())
}

/// Runs `docker args` with its output discarded; true when it exits 0 in time.
fn probe(args: &[&str]) -> bool {
    run_with_timeout("docker", args, PROBE_TIMEOUT)
}

fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> bool {
    let Ok(mut child) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(Path::new("/project"))
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    const BASE: [&str; 7] = [
        "compose",
        "--project-name",
        "ponix-e2e",
        "--file",
        "/project/docker/compose.yaml",
        "--env-file",
        "/project/pins.env",
    ];

    fn expect(tail: &[&str]) -> Vec<String> {
        BASE.iter().chain(tail).map(|s| s.to_string()).collect()
    }

    #[test]
    fn e2e_up_waits_for_the_infrastructure_only() {
        let backend = ComposeBackend::e2e(&layout());
        assert_eq!(
            strings(backend.up_args(INFRA_SERVICES)),
            expect(&[
                "up",
                "--detach",
                "--wait",
                "--wait-timeout",
                "300",
                "nats",
                "clickhouse"
            ])
        );
    }

    #[test]
    fn down_removes_volumes_and_orphans() {
        let backend = ComposeBackend::e2e(&layout());
        assert_eq!(
            strings(backend.down_args()),
            expect(&["down", "--volumes", "--remove-orphans"])
        );
    }

    #[test]
    fn logs_ps_and_config() {
        let backend = ComposeBackend::e2e(&layout());
        assert_eq!(
            strings(backend.logs_args()),
            expect(&["logs", "--no-color", "--timestamps"])
        );
        assert_eq!(strings(backend.ps_args()), expect(&["ps", "--all"]));
        assert_eq!(
            strings(backend.config_args()),
            expect(&["config", "--quiet"])
        );
    }

    #[test]
    fn dev_runs_the_whole_stack_under_the_files_own_name() {
        let backend = ComposeBackend::dev(&layout());
        let args = strings(backend.up_stack_args());
        assert_eq!(args[..3], ["compose", "--project-name", "ponix"]);
        assert_eq!(
            args[7..],
            [
                "up",
                "--build",
                "--detach",
                "--wait",
                "--wait-timeout",
                "300"
            ]
        );
    }

    #[test]
    fn several_files_each_get_a_file_flag() {
        let mut backend = ComposeBackend::e2e(&layout());
        backend
            .files
            .push("/project/docker/compose.override.yaml".into());
        let args = strings(backend.ps_args());
        assert_eq!(
            args.iter().filter(|arg| *arg == "--file").count(),
            2,
            "{args:?}"
        );
    }

    #[test]
    fn projects_are_named_as_in_the_compose_file() {
        let text = fs::read_to_string(Layout::workspace().root.join(COMPOSE_FILE)).unwrap();
        assert!(
            text.lines()
                .any(|line| line == format!("name: {DEV_PROJECT}")),
            "compose.yaml must declare `name: {DEV_PROJECT}`"
        );
        assert_ne!(DEV_PROJECT, E2E_PROJECT);
    }

    #[test]
    fn endpoints_match_the_published_ports() {
        let text = fs::read_to_string(Layout::workspace().root.join(COMPOSE_FILE)).unwrap();
        // The host port is a variable (testkit's compose backend sets free ones); unset,
        // Docker chooses.
        for (url, port, var) in [
            (NATS_URL, 4222, "NATS_HOST_PORT"),
            (NATS_MONITOR_URL, 8222, "NATS_MONITOR_HOST_PORT"),
            (CLICKHOUSE_URL, 8123, "CLICKHOUSE_HOST_PORT"),
            (WRITER_URL, 8080, "WRITER_HOST_PORT"),
        ] {
            assert!(url.ends_with(&format!("127.0.0.1:{port}")), "{url}");
            assert!(
                text.contains(&format!("\"127.0.0.1:${{{var}:-}}:{port}\"")),
                "compose.yaml does not publish {port} on 127.0.0.1"
            );
        }
    }

    #[test]
    fn env_vars_carry_the_stacks_credentials() {
        let layout = Layout::workspace();
        let vars: BTreeMap<_, _> = ComposeBackend::e2e(&layout)
            .env_vars(&layout)
            .unwrap()
            .into_iter()
            .collect();
        let settings = load_settings(&layout.root).unwrap();
        assert_eq!(vars["PONIX_NATS_URL"], NATS_URL);
        assert_eq!(vars["PONIX_CLICKHOUSE_URL"], CLICKHOUSE_URL);
        assert_eq!(
            vars["PONIX_CLICKHOUSE_USERNAME"],
            settings["CLICKHOUSE_USER"]
        );
        assert_eq!(
            vars["PONIX_CLICKHOUSE_PASSWORD"],
            settings["CLICKHOUSE_PASSWORD"]
        );
        assert_eq!(vars["PONIX_CLICKHOUSE_DATABASE"], settings["CLICKHOUSE_DB"]);
    }

    #[test]
    fn settings_are_env_files_where_a_later_value_wins() {
        let settings = parse_settings("# c\nA=1\n\nB=x=y\nC=\nA = 2\n").unwrap();
        assert_eq!(settings["A"], "2");
        assert_eq!(settings["B"], "x=y");
        assert_eq!(settings["C"], "");
        assert!(parse_settings("oops\n").is_err());
    }

    #[test]
    fn a_missing_program_is_no_engine() {
        assert!(!run_with_timeout(
            "/nonexistent/docker",
            &["info"],
            Duration::from_secs(1)
        ));
        assert!(!run_with_timeout("false", &[], Duration::from_secs(5)));
        assert!(run_with_timeout("true", &[], Duration::from_secs(5)));
        assert!(!run_with_timeout(
            "sleep",
            &["5"],
            Duration::from_millis(200)
        ));
    }
}
