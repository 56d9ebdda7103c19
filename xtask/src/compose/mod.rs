//! The compose backend: the `docker compose` command lines for docker/compose.yaml,
//! the ports Docker chose for it, read back, and whether a Docker engine answers here.
//!
//! The command lines and the parsing of compose's answers are pure functions with
//! unit tests; `cargo xtask e2e --backend compose` runs them for real, and
//! `cargo xtask lint` validates the compose file itself.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::{Cmd, Shell, cmd};

use localenv::env_file;
use localenv::images::images_env;

pub use crate::docker::probe::{
    buildx_available, compose_available, default_backend_reason, docker_engine_available,
};

/// The stack, relative to the project root.
pub const COMPOSE_FILE: &str = "docker/compose.yaml";
/// The services' settings: the committed template, then the developer's own copy.
pub const SETTINGS_TEMPLATE: &str = "docker/.env.example";
pub const SETTINGS_LOCAL: &str = "docker/.env";

/// compose.yaml's own `name:`, used by `cargo xtask dev --backend compose`.
pub const DEV_PROJECT: &str = "ponix";
/// A separate project for e2e, so that its `down --volumes` never wipes dev data.
pub const E2E_PROJECT: &str = "ponix-e2e";
/// `up --wait` gives up after this long (first pulls of the images included).
pub const UP_WAIT_TIMEOUT_SECS: u32 = 300;
/// The writer image compose.yaml runs unless `PONIX_IMAGE` names another.
pub const DEFAULT_WRITER_IMAGE: &str = "ponix-writer:dev";

/// A service's port inside the stack, published on a host port Docker chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    pub service: &'static str,
    pub port: u16,
}

pub const NATS: ServicePort = ServicePort {
    service: "nats",
    port: 4222,
};
pub const NATS_MONITOR: ServicePort = ServicePort {
    service: "nats",
    port: 8222,
};
pub const CLICKHOUSE: ServicePort = ServicePort {
    service: "clickhouse",
    port: 8123,
};
pub const WRITER: ServicePort = ServicePort {
    service: "writer",
    port: 8080,
};

/// One compose project: which files, under which name, interpolated from which env
/// files, running which writer image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeBackend {
    pub project: String,
    pub files: Vec<PathBuf>,
    /// The interpolation env files, later ones winning: pins.env, which holds the
    /// image tags, then `.tools/docker/images.env` where it exists.
    pub env_files: Vec<PathBuf>,
    /// `PONIX_IMAGE` for compose: the writer image to run (built by xtask, never by
    /// compose: `up --no-build`).
    pub writer_image: String,
}

/// The host ports Docker chose, read back after `up --wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub nats: u16,
    pub nats_monitor: u16,
    pub clickhouse: u16,
    pub writer: u16,
}

impl Published {
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats)
    }
    pub fn nats_monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nats_monitor)
    }
    pub fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.clickhouse)
    }
    pub fn writer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.writer)
    }
}

impl ComposeBackend {
    /// The stack for `cargo xtask e2e --backend compose`.
    pub fn e2e(layout: &Layout) -> ComposeBackend {
        ComposeBackend::new(layout, E2E_PROJECT)
    }

    /// The stack for `cargo xtask dev --backend compose`.
    pub fn dev(layout: &Layout) -> ComposeBackend {
        ComposeBackend::new(layout, DEV_PROJECT)
    }

    fn new(layout: &Layout, project: &str) -> ComposeBackend {
        let mut env_files = vec![layout.pins_file()];
        // The local stand-ins' names (`cargo xtask docker`), after pins.env so that they win.
        let images = images_env(layout);
        if images.is_file() {
            env_files.push(images);
        }
        ComposeBackend {
            project: project.to_owned(),
            files: vec![layout.root.join(COMPOSE_FILE)],
            env_files,
            writer_image: writer_image_from_env(),
        }
    }

    /// `docker` arguments common to every command: `compose`, project, files, env files.
    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["compose".into(), "--project-name".into()];
        args.push(self.project.clone().into());
        for file in &self.files {
            args.push("--file".into());
            args.push(file.into());
        }
        for env_file in &self.env_files {
            args.push("--env-file".into());
            args.push(env_file.into());
        }
        args
    }

    fn with(&self, tail: &[&str]) -> Vec<OsString> {
        let mut args = self.base_args();
        args.extend(tail.iter().map(OsString::from));
        args
    }

    /// Starts every service with the writer image as it is (never built by compose)
    /// and returns once each one's healthcheck passes; fails if one does not within
    /// [`UP_WAIT_TIMEOUT_SECS`].
    pub fn up_args(&self) -> Vec<OsString> {
        let timeout = UP_WAIT_TIMEOUT_SECS.to_string();
        self.with(&[
            "up",
            "--detach",
            "--no-build",
            "--pull",
            "missing",
            "--wait",
            "--wait-timeout",
            &timeout,
        ])
    }

    /// Removes the containers, the network and the named volumes (the data).
    pub fn down_args(&self) -> Vec<OsString> {
        self.with(&["down", "--volumes", "--remove-orphans", "--timeout", "45"])
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

    /// The host address `port` of `service` is published on.
    pub fn port_args(&self, port: ServicePort) -> Vec<OsString> {
        self.with(&["port", port.service, &port.port.to_string()])
    }

    /// The variables the writer, goose and the tests read, like
    /// `localenv::local::Endpoints::env_vars` for the local backend. The ClickHouse
    /// credentials are the ones the stack's settings create.
    pub fn env_vars(
        &self,
        layout: &Layout,
        published: &Published,
    ) -> anyhow::Result<Vec<(&'static str, String)>> {
        let settings = load_settings(&layout.root)?;
        let setting = |key: &str| -> anyhow::Result<String> {
            settings
                .get(key)
                .cloned()
                .with_context(|| format!("{SETTINGS_TEMPLATE} (or {SETTINGS_LOCAL}) has no {key}"))
        };
        Ok(vec![
            ("PONIX_NATS_URL", published.nats_url()),
            ("PONIX_CLICKHOUSE_URL", published.clickhouse_url()),
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

    /// `docker ARGS` with the writer image in compose's environment, and ClickHouse's
    /// open-file limit capped where this host's hard limit is lower.
    fn docker<'a>(&self, sh: &'a Shell, args: Vec<OsString>) -> Cmd<'a> {
        let mut command = cmd!(sh, "docker {args...}").env("PONIX_IMAGE", &self.writer_image);
        if let Some(limit) = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| clickhouse_nofile(&limits))
        {
            command = command.env("CLICKHOUSE_NOFILE", limit.to_string());
        }
        command
    }

    /// `up --wait` for the whole stack, then the ports Docker chose. Needs a Docker
    /// engine with the compose plugin, and the writer image built.
    pub fn up(&self, sh: &Shell) -> anyhow::Result<Published> {
        require_compose()?;
        self.docker(sh, self.up_args()).run().with_context(|| {
            format!(
                "`docker compose up --wait` failed for project {}: a service did not become \
                 healthy, or an image is missing (the writer's: `cargo xtask image`; the \
                 others: `docker compose pull`, or the local stand-ins of `cargo xtask docker`)",
                self.project
            )
        })?;
        self.published(sh)
    }

    /// The host ports of every published service port.
    pub fn published(&self, sh: &Shell) -> anyhow::Result<Published> {
        let read = |port: ServicePort| -> anyhow::Result<u16> {
            let output = self
                .docker(sh, self.port_args(port))
                .quiet()
                .read()
                .with_context(|| {
                    format!(
                        "`docker compose port {} {}` failed for project {}",
                        port.service, port.port, self.project
                    )
                })?;
            parse_port_output(&output).with_context(|| {
                format!(
                    "reading the host port of {}:{} in project {}",
                    port.service, port.port, self.project
                )
            })
        };
        Ok(Published {
            nats: read(NATS)?,
            nats_monitor: read(NATS_MONITOR)?,
            clickhouse: read(CLICKHOUSE)?,
            writer: read(WRITER)?,
        })
    }

    /// `down --volumes --remove-orphans`: nothing of the project is left.
    pub fn down(&self, sh: &Shell) -> anyhow::Result<()> {
        self.docker(sh, self.down_args())
            .run()
            .with_context(|| format!("`docker compose down` failed for project {}", self.project))
    }

    /// Writes `ps` and every service's log to `.tools/logs/compose-<project>.log`
    /// (e2e.yml uploads that directory when a run fails), prints the last lines, and
    /// returns the file's path.
    pub fn save_logs(&self, sh: &Shell, layout: &Layout) -> anyhow::Result<PathBuf> {
        let mut text = String::new();
        for args in [self.ps_args(), self.logs_args()] {
            let output = self
                .docker(sh, args)
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

/// `PONIX_IMAGE` where the caller set it (a published image), else the tag xtask
/// builds.
pub fn writer_image_from_env() -> String {
    std::env::var("PONIX_IMAGE")
        .ok()
        .filter(|image| !image.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_WRITER_IMAGE.to_owned())
}

/// compose.yaml's open-file limit for ClickHouse.
const CLICKHOUSE_NOFILE: u64 = 262_144;

/// The open-file limit for ClickHouse when this host's hard limit (from
/// `/proc/self/limits`) is below compose.yaml's: runc fails to start a container
/// asking for more (`error setting rlimit type 7`).
fn clickhouse_nofile(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let hard = line.split_whitespace().nth(4)?;
    match hard.parse::<u64>() {
        Ok(hard) if hard < CLICKHOUSE_NOFILE => Some(hard),
        _ => None,
    }
}

/// `docker compose port` prints `127.0.0.1:49153` (or `[::1]:49153`); the port.
pub fn parse_port_output(output: &str) -> anyhow::Result<u16> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .context("`docker compose port` printed nothing: is the service running?")?;
    let (_, port) = line
        .rsplit_once(':')
        .with_context(|| format!("no port in `docker compose port` output {line:?}"))?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => bail!("no port in `docker compose port` output {line:?}"),
        Ok(port) => Ok(port),
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

fn require_compose() -> anyhow::Result<()> {
    if !compose_available() {
        bail!(
            "`docker compose` is not available: install Docker with the compose plugin \
             (v2), or use `--backend local`"
        );
    }
    Ok(())
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
    fn up_waits_for_every_service_and_never_builds() {
        let backend = ComposeBackend::e2e(&layout());
        assert_eq!(
            strings(backend.up_args()),
            expect(&[
                "up",
                "--detach",
                "--no-build",
                "--pull",
                "missing",
                "--wait",
                "--wait-timeout",
                "300",
            ])
        );
    }

    #[test]
    fn down_removes_volumes_and_orphans() {
        let backend = ComposeBackend::e2e(&layout());
        assert_eq!(
            strings(backend.down_args()),
            expect(&["down", "--volumes", "--remove-orphans", "--timeout", "45"])
        );
    }

    #[test]
    fn logs_ps_config_and_port() {
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
        assert_eq!(
            strings(backend.port_args(CLICKHOUSE)),
            expect(&["port", "clickhouse", "8123"])
        );
    }

    #[test]
    fn the_local_images_env_file_comes_after_the_pins() {
        let root = std::env::temp_dir().join(format!("xtask-compose-{}", std::process::id()));
        let images = images_env(&Layout::new(&root));
        fs::create_dir_all(images.parent().unwrap()).unwrap();
        let without = ComposeBackend::dev(&Layout::new(&root));
        assert_eq!(without.env_files, [root.join("pins.env")]);
        fs::write(&images, "NATS_IMAGE=ponix-local/nats:2.15.0\n").unwrap();
        let args = strings(ComposeBackend::dev(&Layout::new(&root)).ps_args());
        let _ = fs::remove_dir_all(&root);
        let env_files: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "--env-file")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(
            env_files,
            [
                &root.join("pins.env").display().to_string(),
                &images.display().to_string()
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
    fn every_port_xtask_reads_back_is_published_on_loopback_at_a_chosen_port() {
        let text = fs::read_to_string(Layout::workspace().root.join(COMPOSE_FILE)).unwrap();
        for (port, variable) in [
            (NATS, "NATS_HOST_PORT"),
            (NATS_MONITOR, "NATS_MONITOR_HOST_PORT"),
            (CLICKHOUSE, "CLICKHOUSE_HOST_PORT"),
            (WRITER, "WRITER_HOST_PORT"),
        ] {
            let line = format!("- \"127.0.0.1:${{{variable}:-}}:{}\"", port.port);
            assert!(
                text.lines().any(|l| l.trim() == line),
                "compose.yaml does not publish {}:{} as {line}",
                port.service,
                port.port
            );
        }
        assert!(
            !text.contains(":9000"),
            "nothing uses ClickHouse's native port"
        );
    }

    #[test]
    fn clickhouse_open_files_are_capped_at_the_hosts_hard_limit() {
        let limits = |soft: &str, hard: &str| {
            format!(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max processes             unlimited            unlimited            processes\n\
                 Max open files            {soft:<20} {hard:<20} files\n"
            )
        };
        assert_eq!(clickhouse_nofile(&limits("1024", "20000")), Some(20000));
        assert_eq!(clickhouse_nofile(&limits("1024", "1048576")), None);
        assert_eq!(clickhouse_nofile(&limits("unlimited", "unlimited")), None);
        assert_eq!(clickhouse_nofile("no such line"), None);
        let text = fs::read_to_string(Layout::workspace().root.join(COMPOSE_FILE)).unwrap();
        assert!(text.contains(&format!("${{CLICKHOUSE_NOFILE:-{CLICKHOUSE_NOFILE}}}")));
    }

    #[test]
    fn port_output_is_parsed() {
        assert_eq!(parse_port_output("127.0.0.1:49153\n").unwrap(), 49153);
        assert_eq!(parse_port_output("[::1]:8123").unwrap(), 8123);
        assert_eq!(
            parse_port_output("\n127.0.0.1:32768\n[::1]:32768\n").unwrap(),
            32768
        );
        assert!(parse_port_output("").is_err());
        assert!(parse_port_output(":0").is_err());
        assert!(parse_port_output("no service").is_err());
    }

    #[test]
    fn published_urls_use_the_ports_read_back() {
        let published = Published {
            nats: 1,
            nats_monitor: 2,
            clickhouse: 3,
            writer: 4,
        };
        assert_eq!(published.nats_url(), "nats://127.0.0.1:1");
        assert_eq!(published.nats_monitor_url(), "http://127.0.0.1:2");
        assert_eq!(published.clickhouse_url(), "http://127.0.0.1:3");
        assert_eq!(published.writer_url(), "http://127.0.0.1:4");
    }

    #[test]
    fn env_vars_carry_the_stacks_credentials_and_ports() {
        let layout = Layout::workspace();
        let published = Published {
            nats: 40001,
            nats_monitor: 40002,
            clickhouse: 40003,
            writer: 40004,
        };
        let vars: BTreeMap<_, _> = ComposeBackend::e2e(&layout)
            .env_vars(&layout, &published)
            .unwrap()
            .into_iter()
            .collect();
        let settings = load_settings(&layout.root).unwrap();
        assert_eq!(vars["PONIX_NATS_URL"], "nats://127.0.0.1:40001");
        assert_eq!(vars["PONIX_CLICKHOUSE_URL"], "http://127.0.0.1:40003");
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
}
