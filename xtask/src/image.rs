//! `cargo xtask image`: builds the writer's container image from docker/Dockerfile,
//! checks inside it that goose reports the pinned version and that the migrations are
//! there, prints its size, and pushes it when asked.
//!
//! The whole run is computed first as a [`Plan`] of `docker` command lines: `--dry-run`
//! prints it and stops, so it works without a Docker engine, and the unit tests check
//! it. Base images and goose come from pins.env as build arguments.

use std::fmt;
use std::fs;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::text::shell_quote;
use xshell::{Shell, cmd};

use crate::compose;
use crate::flags;
use crate::pins::Pins;

pub const DOCKERFILE: &str = "docker/Dockerfile";
pub const DEFAULT_NAME: &str = "ponix-writer";
/// Build arguments the Dockerfile declares, with their values from pins.env.
pub const PINNED_BUILD_ARGS: &[&str] = &[
    "RUST_IMAGE",
    "RUNTIME_IMAGE",
    "GOOSE_VERSION",
    "GOOSE_SHA256_LINUX_X86_64",
    "GOOSE_SHA256_LINUX_ARM64",
];
/// Build arguments xtask computes, for the OCI labels.
pub const LABEL_BUILD_ARGS: &[&str] = &["VERSION", "REVISION", "SOURCE"];
/// Where the Dockerfile puts goose and the migrations.
pub const IMAGE_GOOSE: &str = "/usr/local/bin/goose";
pub const IMAGE_MIGRATIONS_DIR: &str = "/app/migrations";
/// The Dockerfile's `USER`.
pub const IMAGE_USER: &str = "10001:10001";

impl flags::Image {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        let pins = Pins::load(&layout)?;
        if self.push && self.registry.is_none() {
            bail!("--push needs --registry, such as `--registry ghcr.io/<owner>`");
        }
        let name = image_name(self.registry.as_deref(), self.name.as_deref())?;
        let git = git_state(sh).context("reading the commit to tag the image with")?;
        let platforms = self.platform.clone().map(|p| p.0).unwrap_or_default();
        let builder = if compose::buildx_available() {
            Builder::Buildx
        } else if self.dry_run && platforms.len() > 1 {
            eprintln!("[image] docker buildx is not installed here; the plan assumes it");
            Builder::Buildx
        } else {
            Builder::Docker
        };
        let inputs = Inputs {
            name,
            version: workspace_version(&layout)?,
            revision: git.revision,
            dirty: git.dirty,
            source: source_url(sh),
            platforms,
            push: self.push,
            builder,
            build_args: pinned_build_args(&pins)?,
            goose_version: pins.goose_version()?.to_owned(),
            migrations: migration_files(&layout)?,
        };
        let plan = Plan::new(&inputs)?;
        print!("{}", plan.describe(self.dry_run));
        if self.dry_run {
            return Ok(());
        }
        if !compose::docker_engine_available() {
            bail!(
                "no Docker engine answers (`docker info` failed): start Docker, or run \
                 `cargo xtask image --dry-run` to see the commands"
            );
        }
        plan.execute(sh)
    }
}

// ---- Inputs ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// `docker buildx build`: multi-platform builds, `--load` or `--push`.
    Buildx,
    /// `docker build` with BuildKit (the Dockerfile needs it for cache mounts).
    Docker,
}

/// Everything the plan depends on, gathered before anything runs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Repository without a tag, registry included: `ghcr.io/acme/ponix-writer`.
    pub name: String,
    pub version: String,
    /// The full commit id.
    pub revision: String,
    /// Uncommitted changes: the commit tag gets a `-dirty` suffix.
    pub dirty: bool,
    /// The repository URL for `org.opencontainers.image.source` (may be empty).
    pub source: String,
    /// Empty: the engine's own platform.
    pub platforms: Vec<String>,
    pub push: bool,
    pub builder: Builder,
    /// `(name, value)` for each of [`PINNED_BUILD_ARGS`].
    pub build_args: Vec<(String, String)>,
    pub goose_version: String,
    /// File names in migrations/, sorted.
    pub migrations: Vec<String>,
}

/// `<registry>/<name>`, lower-case as registries require.
pub fn image_name(registry: Option<&str>, name: Option<&str>) -> anyhow::Result<String> {
    let name = name.unwrap_or(DEFAULT_NAME).trim_matches('/');
    let full = match registry.map(|r| r.trim_end_matches('/')) {
        Some(registry) if !registry.is_empty() => format!("{registry}/{name}"),
        _ => name.to_owned(),
    };
    let repository_path = full.split_once('/').map_or(full.as_str(), |(_, rest)| rest);
    let valid = !full.is_empty()
        && full
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c))
        && !repository_path.contains(':')
        && !full.contains("//");
    if !valid {
        bail!(
            "image name {full:?} is not a valid repository: use lower-case letters, digits, \
             `.`, `_`, `-` and `/`, and no tag (for GHCR: ghcr.io/<owner in lower case>)"
        );
    }
    Ok(full)
}

pub fn pinned_build_args(pins: &Pins) -> anyhow::Result<Vec<(String, String)>> {
    PINNED_BUILD_ARGS
        .iter()
        .map(|key| Ok((key.to_string(), pins.get(key)?.to_owned())))
        .collect()
}

/// `[workspace.package] version` from the root Cargo.toml.
pub fn workspace_version(layout: &Layout) -> anyhow::Result<String> {
    let path = layout.root.join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_workspace_version(&text).with_context(|| {
        format!(
            "{} has no `version = \"...\"` under [workspace.package]",
            path.display()
        )
    })
}

fn parse_workspace_version(manifest: &str) -> Option<String> {
    let mut in_section = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section
            && let Some(value) = line.strip_prefix("version")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

pub struct GitState {
    pub revision: String,
    pub dirty: bool,
}

fn git_state(sh: &Shell) -> anyhow::Result<GitState> {
    let revision = cmd!(sh, "git rev-parse HEAD")
        .quiet()
        .read()
        .context("`git rev-parse HEAD` failed: the image is tagged with the commit, so build from a git checkout")?;
    let status = cmd!(sh, "git status --porcelain")
        .quiet()
        .read()
        .context("`git status` failed")?;
    Ok(GitState {
        revision,
        dirty: !status.trim().is_empty(),
    })
}

/// The repository's web address: GitHub Actions' own variables, else `origin`.
fn source_url(sh: &Shell) -> String {
    if let (Ok(server), Ok(repository)) = (
        std::env::var("GITHUB_SERVER_URL"),
        std::env::var("GITHUB_REPOSITORY"),
    ) {
        return format!("{server}/{repository}");
    }
    cmd!(sh, "git remote get-url origin")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .and_then(|url| web_url(&url))
        .unwrap_or_default()
}

/// `git@github.com:o/r.git` or `https://github.com/o/r.git` → `https://github.com/o/r`.
/// Local paths and credentials-bearing URLs give `None`.
pub fn web_url(remote: &str) -> Option<String> {
    let remote = remote.trim().trim_end_matches('/').trim_end_matches(".git");
    let url = if let Some(rest) = remote.strip_prefix("git@") {
        let (host, path) = rest.split_once(':')?;
        format!("https://{host}/{path}")
    } else if let Some(rest) = remote.strip_prefix("ssh://git@") {
        format!("https://{rest}")
    } else if remote.starts_with("https://") {
        remote.to_owned()
    } else {
        return None;
    };
    let authority = url["https://".len()..]
        .split('/')
        .next()
        .unwrap_or_default();
    (!authority.contains('@') && url.matches('/').count() >= 4).then_some(url)
}

fn migration_files(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let dir = layout.migrations_dir();
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sql") {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{} holds no .sql migration", dir.display());
    }
    Ok(names)
}

// ---- The plan ----------------------------------------------------------------------

/// One `docker` command line, with the environment it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerCmd {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl DockerCmd {
    fn new(args: &[&str]) -> DockerCmd {
        DockerCmd {
            env: Vec::new(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
        }
    }

    fn arg(mut self, arg: impl Into<String>) -> DockerCmd {
        self.args.push(arg.into());
        self
    }

    fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let args = &self.args;
        let mut command = cmd!(sh, "docker {args...}");
        for (key, value) in &self.env {
            command = command.env(key, value);
        }
        command.run().with_context(|| format!("`{self}` failed"))
    }

    fn read(&self, sh: &Shell) -> anyhow::Result<String> {
        let args = &self.args;
        cmd!(sh, "docker {args...}")
            .read()
            .with_context(|| format!("`{self}` failed"))
    }
}

impl fmt::Display for DockerCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.env {
            write!(f, "{key}={} ", shell_quote(value))?;
        }
        f.write_str("docker")?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}

/// What a check's output must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// This word appears, whole (v3.3.0 does not match v3.30.0).
    Word(String),
    /// Exactly these lines, in any order.
    Lines(Vec<String>),
    /// The trimmed output equals this.
    Exactly(String),
    /// Exit status 0 is enough.
    Success,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub command: DockerCmd,
    pub expect: Expect,
}

/// The checks, then the size, of one platform's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub platform: Option<String>,
    pub checks: Vec<Check>,
    pub size: DockerCmd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub builder: Builder,
    pub tags: Vec<String>,
    pub build: DockerCmd,
    pub verifications: Vec<Verification>,
    /// `docker push` per tag; empty when the build pushes itself (several platforms).
    pub push: Vec<DockerCmd>,
    pub pushes: bool,
}

impl Plan {
    pub fn new(inputs: &Inputs) -> anyhow::Result<Plan> {
        let multi = inputs.platforms.len() > 1;
        if multi && inputs.builder != Builder::Buildx {
            bail!("building for several platforms needs docker buildx; install the buildx plugin");
        }
        if multi && !inputs.push {
            bail!(
                "an image for several platforms cannot be loaded into the local engine: pass one \
                 --platform, or --push with --registry"
            );
        }
        let commit_tag = if inputs.dirty {
            format!(
                "{}-dirty",
                &inputs.revision[..12.min(inputs.revision.len())]
            )
        } else {
            inputs.revision[..12.min(inputs.revision.len())].to_owned()
        };
        let tags = vec![
            format!("{}:{}", inputs.name, inputs.version),
            format!("{}:{commit_tag}", inputs.name),
        ];

        let mut build = match inputs.builder {
            Builder::Buildx => DockerCmd::new(&["buildx", "build"]),
            Builder::Docker => DockerCmd {
                env: vec![("DOCKER_BUILDKIT".into(), "1".into())],
                args: vec!["build".into()],
            },
        };
        build = build.arg("--file").arg(DOCKERFILE);
        let labels = [
            ("VERSION", inputs.version.as_str()),
            ("REVISION", inputs.revision.as_str()),
            ("SOURCE", inputs.source.as_str()),
        ];
        let build_args = inputs
            .build_args
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .chain(labels);
        for (key, value) in build_args {
            build = build.arg("--build-arg").arg(format!("{key}={value}"));
        }
        for tag in &tags {
            build = build.arg("--tag").arg(tag);
        }
        if !inputs.platforms.is_empty() {
            build = build.arg("--platform").arg(inputs.platforms.join(","));
        }
        if inputs.builder == Builder::Buildx {
            build = build.arg(if multi { "--push" } else { "--load" });
        }
        build = build.arg(".");

        // The commit tag names exactly this build.
        let reference = &tags[1];
        let verifications = if multi {
            inputs
                .platforms
                .iter()
                .map(|platform| verification(inputs, reference, Some(platform), true))
                .collect()
        } else {
            let platform = inputs.platforms.first().map(String::as_str);
            vec![verification(inputs, reference, platform, false)]
        };
        let push = if inputs.push && !multi {
            tags.iter()
                .map(|tag| DockerCmd::new(&["push"]).arg(tag))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Plan {
            builder: inputs.builder,
            tags,
            build,
            verifications,
            push,
            pushes: inputs.push,
        })
    }

    /// The plan as text: tags, then every command in the order it runs.
    pub fn describe(&self, dry_run: bool) -> String {
        let mut out = String::new();
        let builder = match self.builder {
            Builder::Buildx => "docker buildx",
            Builder::Docker => "docker build (BuildKit)",
        };
        let mode = if dry_run {
            " (dry run: nothing is executed)"
        } else {
            ""
        };
        out.push_str(&format!(
            "image plan{mode}\n  builder: {builder}\n  tags:\n"
        ));
        for tag in &self.tags {
            out.push_str(&format!("    {tag}\n"));
        }
        out.push_str("  commands:\n");
        out.push_str(&format!("    {}\n", self.build));
        if self.pushes && self.push.is_empty() {
            out.push_str("      (pushes every platform and tag)\n");
        }
        for verification in &self.verifications {
            for check in &verification.checks {
                out.push_str(&format!(
                    "    {}\n      # {}{}\n",
                    check.command,
                    check.what,
                    expectation(&check.expect)
                ));
            }
            out.push_str(&format!("    {}\n      # image size\n", verification.size));
        }
        for push in &self.push {
            out.push_str(&format!("    {push}\n"));
        }
        out
    }

    fn execute(&self, sh: &Shell) -> anyhow::Result<()> {
        eprintln!(
            "[image] building {} (this takes minutes the first time) ...",
            self.tags[1]
        );
        self.build.run(sh).context(
            "the image build failed; its output is above (BuildKit is required: install the \
             buildx plugin or use Docker 23+)",
        )?;
        for verification in &self.verifications {
            let platform = verification
                .platform
                .as_deref()
                .map(|p| format!(" [{p}]"))
                .unwrap_or_default();
            for check in &verification.checks {
                let output = check
                    .command
                    .read(sh)
                    .with_context(|| format!("checking {}{platform}", check.what))?;
                if let Err(problem) = satisfies(&output, &check.expect) {
                    bail!("image check failed{platform}: {}: {problem}", check.what);
                }
                eprintln!("[image] ok{platform}: {}", check.what);
            }
            let bytes = verification
                .size
                .read(sh)
                .context("reading the image size")?;
            let bytes: u64 = bytes
                .trim()
                .parse()
                .with_context(|| format!("`docker image inspect` printed {bytes:?}, not a size"))?;
            println!(
                "image size{platform}: {:.1} MB ({bytes} bytes)",
                bytes as f64 / 1e6
            );
        }
        for push in &self.push {
            push.run(sh).context(
                "pushing failed: log in to the registry first (`docker login <registry>`)",
            )?;
        }
        let verb = if self.pushes {
            "built and pushed"
        } else {
            "built"
        };
        println!("{verb}:");
        for tag in &self.tags {
            println!("  {tag}");
        }
        Ok(())
    }
}

fn verification(
    inputs: &Inputs,
    reference: &str,
    platform: Option<&str>,
    pull: bool,
) -> Verification {
    let run = |entrypoint: Option<&str>| {
        let mut command = DockerCmd::new(&["run", "--rm"]);
        if pull {
            command = command.arg("--pull").arg("always");
        }
        if let Some(platform) = platform {
            command = command.arg("--platform").arg(platform);
        }
        if let Some(entrypoint) = entrypoint {
            command = command.arg("--entrypoint").arg(entrypoint);
        }
        command.arg(reference)
    };
    let checks = vec![
        Check {
            what: format!("goose reports the pinned {}", inputs.goose_version),
            command: run(Some(IMAGE_GOOSE)).arg("--version"),
            expect: Expect::Word(inputs.goose_version.clone()),
        },
        Check {
            what: format!(
                "the migrations in {IMAGE_MIGRATIONS_DIR} are the repository's {}",
                inputs.migrations.len()
            ),
            command: run(Some("/bin/ls")).arg("-1").arg(IMAGE_MIGRATIONS_DIR),
            expect: Expect::Lines(inputs.migrations.clone()),
        },
        Check {
            what: "goose validates the migrations".into(),
            command: run(Some(IMAGE_GOOSE))
                .arg("-dir")
                .arg(IMAGE_MIGRATIONS_DIR)
                .arg("validate"),
            expect: Expect::Success,
        },
        Check {
            what: format!("the entrypoint is ponix-writer {}", inputs.version),
            command: run(None).arg("--version"),
            expect: Expect::Exactly(format!("ponix-writer {}", inputs.version)),
        },
        Check {
            what: format!("it runs as user {IMAGE_USER}"),
            command: DockerCmd::new(&["image", "inspect", "--format", "{{.Config.User}}"])
                .arg(reference),
            expect: Expect::Exactly(IMAGE_USER.into()),
        },
    ];
    Verification {
        platform: platform.map(str::to_owned),
        checks,
        size: DockerCmd::new(&["image", "inspect", "--format", "{{.Size}}"]).arg(reference),
    }
}

fn expectation(expect: &Expect) -> String {
    match expect {
        Expect::Word(word) => format!(": expect {word}"),
        Expect::Lines(lines) => format!(": expect {}", lines.join(" ")),
        Expect::Exactly(text) => format!(": expect {text:?}"),
        Expect::Success => String::new(),
    }
}

fn satisfies(output: &str, expect: &Expect) -> Result<(), String> {
    match expect {
        Expect::Word(word) => output
            .split(|c: char| c.is_whitespace() || c == ',')
            .any(|w| w == word)
            .then_some(())
            .ok_or_else(|| format!("expected {word} in {:?}", output.trim())),
        Expect::Lines(expected) => {
            let mut actual: Vec<&str> = output
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            actual.sort_unstable();
            let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            expected.sort_unstable();
            (actual == expected)
                .then_some(())
                .ok_or_else(|| format!("expected {expected:?}, found {actual:?}"))
        }
        Expect::Exactly(text) => (output.trim() == text)
            .then_some(())
            .ok_or_else(|| format!("expected {text:?}, found {:?}", output.trim())),
        Expect::Success => Ok(()),
    }
}

/// `ARG` names the Dockerfile declares (automatic platform args excluded) and those
/// that wrongly carry a default. For the consistency checks of `cargo xtask lint`.
pub fn dockerfile_args(dockerfile: &str) -> (Vec<String>, Vec<String>) {
    const AUTOMATIC: &[&str] = &[
        "TARGETPLATFORM",
        "TARGETOS",
        "TARGETARCH",
        "TARGETVARIANT",
        "BUILDPLATFORM",
        "BUILDOS",
        "BUILDARCH",
        "BUILDVARIANT",
    ];
    let mut declared = Vec::new();
    let mut with_default = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("ARG ") else {
            continue;
        };
        let (name, default) = match rest.trim().split_once('=') {
            Some((name, _)) => (name.trim(), true),
            None => (rest.trim(), false),
        };
        if AUTOMATIC.contains(&name) {
            continue;
        }
        if default {
            with_default.push(name.to_owned());
        }
        if !declared.iter().any(|d| d == name) {
            declared.push(name.to_owned());
        }
    }
    (declared, with_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            name: "ponix-writer".into(),
            version: "0.1.0".into(),
            revision: "ba160c674e59aa8c3a5a7c2e8f3e6d1f00112233".into(),
            dirty: false,
            source: "https://github.com/acme/ponix-writer".into(),
            platforms: Vec::new(),
            push: false,
            builder: Builder::Buildx,
            build_args: vec![
                ("RUST_IMAGE".into(), "rust:1.95.0-bookworm".into()),
                ("GOOSE_VERSION".into(), "v3.28.0".into()),
            ],
            goose_version: "v3.28.0".into(),
            migrations: vec!["1_init.sql".into(), "2_more.sql".into()],
        }
    }

    fn line(command: &DockerCmd) -> String {
        command.to_string()
    }

    #[test]
    fn tags_are_version_and_commit() {
        let plan = Plan::new(&inputs()).unwrap();
        assert_eq!(
            plan.tags,
            ["ponix-writer:0.1.0", "ponix-writer:ba160c674e59"]
        );
        let dirty = Plan::new(&Inputs {
            dirty: true,
            ..inputs()
        })
        .unwrap();
        assert_eq!(dirty.tags[1], "ponix-writer:ba160c674e59-dirty");
    }

    #[test]
    fn buildx_build_loads_the_image_with_every_build_arg() {
        let plan = Plan::new(&inputs()).unwrap();
        assert_eq!(
            line(&plan.build),
            "docker buildx build --file docker/Dockerfile \
             --build-arg RUST_IMAGE=rust:1.95.0-bookworm --build-arg GOOSE_VERSION=v3.28.0 \
             --build-arg VERSION=0.1.0 \
             --build-arg REVISION=ba160c674e59aa8c3a5a7c2e8f3e6d1f00112233 \
             --build-arg SOURCE=https://github.com/acme/ponix-writer \
             --tag ponix-writer:0.1.0 --tag ponix-writer:ba160c674e59 --load ."
        );
        assert!(plan.push.is_empty());
    }

    #[test]
    fn plain_docker_build_turns_buildkit_on() {
        let plan = Plan::new(&Inputs {
            builder: Builder::Docker,
            platforms: vec!["linux/arm64".into()],
            ..inputs()
        })
        .unwrap();
        let build = line(&plan.build);
        assert!(build.starts_with("DOCKER_BUILDKIT=1 docker build --file docker/Dockerfile "));
        assert!(build.ends_with(" --platform linux/arm64 ."), "{build}");
        assert!(!build.contains("--load"));
    }

    #[test]
    fn an_empty_source_is_quoted() {
        let plan = Plan::new(&Inputs {
            source: String::new(),
            ..inputs()
        })
        .unwrap();
        assert!(line(&plan.build).contains(" --build-arg SOURCE= "));
    }

    #[test]
    fn checks_run_inside_the_commit_tagged_image() {
        let plan = Plan::new(&inputs()).unwrap();
        let [verification] = plan.verifications.as_slice() else {
            panic!("one platform, one verification");
        };
        let commands: Vec<String> = verification
            .checks
            .iter()
            .map(|c| line(&c.command))
            .collect();
        assert_eq!(
            commands,
            [
                "docker run --rm --entrypoint /usr/local/bin/goose ponix-writer:ba160c674e59 --version",
                "docker run --rm --entrypoint /bin/ls ponix-writer:ba160c674e59 -1 /app/migrations",
                "docker run --rm --entrypoint /usr/local/bin/goose ponix-writer:ba160c674e59 -dir /app/migrations validate",
                "docker run --rm ponix-writer:ba160c674e59 --version",
                "docker image inspect --format '{{.Config.User}}' ponix-writer:ba160c674e59",
            ]
        );
        assert_eq!(
            verification.checks[0].expect,
            Expect::Word("v3.28.0".into())
        );
        assert_eq!(
            line(&verification.size),
            "docker image inspect --format '{{.Size}}' ponix-writer:ba160c674e59"
        );
    }

    #[test]
    fn push_goes_to_the_registry_after_the_checks() {
        let plan = Plan::new(&Inputs {
            name: image_name(Some("ghcr.io/acme"), None).unwrap(),
            push: true,
            ..inputs()
        })
        .unwrap();
        assert!(line(&plan.build).ends_with(" --load ."));
        let pushes: Vec<String> = plan.push.iter().map(line).collect();
        assert_eq!(
            pushes,
            [
                "docker push ghcr.io/acme/ponix-writer:0.1.0",
                "docker push ghcr.io/acme/ponix-writer:ba160c674e59",
            ]
        );
        let text = plan.describe(true);
        let build_at = text.find("buildx build").unwrap();
        let check_at = text.find("docker run").unwrap();
        let push_at = text.find("docker push").unwrap();
        assert!(build_at < check_at && check_at < push_at, "{text}");
    }

    #[test]
    fn several_platforms_push_from_the_build_and_check_each_one() {
        let plan = Plan::new(&Inputs {
            name: "ghcr.io/acme/ponix-writer".into(),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            push: true,
            ..inputs()
        })
        .unwrap();
        let build = line(&plan.build);
        assert!(
            build.ends_with(" --platform linux/amd64,linux/arm64 --push ."),
            "{build}"
        );
        assert!(plan.push.is_empty());
        assert_eq!(plan.verifications.len(), 2);
        assert_eq!(
            line(&plan.verifications[1].checks[0].command),
            "docker run --rm --pull always --platform linux/arm64 --entrypoint \
             /usr/local/bin/goose ghcr.io/acme/ponix-writer:ba160c674e59 --version"
        );
    }

    #[test]
    fn several_platforms_need_buildx_and_push() {
        let multi = Inputs {
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            ..inputs()
        };
        assert!(Plan::new(&multi).is_err());
        assert!(
            Plan::new(&Inputs {
                push: true,
                builder: Builder::Docker,
                ..multi
            })
            .is_err()
        );
    }

    #[test]
    fn image_names() {
        assert_eq!(image_name(None, None).unwrap(), "ponix-writer");
        assert_eq!(
            image_name(Some("ghcr.io/acme/"), None).unwrap(),
            "ghcr.io/acme/ponix-writer"
        );
        assert_eq!(
            image_name(Some("localhost:5000"), Some("w")).unwrap(),
            "localhost:5000/w"
        );
        assert!(image_name(Some("ghcr.io/Acme"), None).is_err());
        assert!(image_name(None, Some("ponix-writer:1.0")).is_err());
        assert!(image_name(None, Some("a b")).is_err());
    }

    #[test]
    fn checks_compare_output() {
        assert!(satisfies("goose version: v3.28.0\n", &Expect::Word("v3.28.0".into())).is_ok());
        assert!(satisfies("goose version: v3.28.0", &Expect::Word("v3.2.0".into())).is_err());
        let lines = Expect::Lines(vec!["a.sql".into(), "b.sql".into()]);
        assert!(satisfies("b.sql\na.sql\n", &lines).is_ok());
        assert!(satisfies("a.sql\n", &lines).is_err());
        assert!(satisfies("a.sql\nb.sql\nc.sql\n", &lines).is_err());
        assert!(
            satisfies(
                "ponix-writer 0.1.0\n",
                &Expect::Exactly("ponix-writer 0.1.0".into())
            )
            .is_ok()
        );
    }

    #[test]
    fn the_dry_run_names_every_command_and_tag() {
        let text = Plan::new(&inputs()).unwrap().describe(true);
        assert!(text.starts_with("image plan (dry run: nothing is executed)\n"));
        assert!(text.contains("    ponix-writer:0.1.0\n"));
        assert!(text.contains("    ponix-writer:ba160c674e59\n"));
        assert_eq!(text.matches("\n    docker ").count(), 7, "{text}");
    }

    #[test]
    fn workspace_version_is_read_from_the_manifest() {
        let manifest = "[workspace]\nmembers = []\n\n[workspace.package]\nedition = \"2024\"\nversion = \"1.2.3\"\n\n[profile.release]\nversion = \"x\"\n";
        assert_eq!(parse_workspace_version(manifest).unwrap(), "1.2.3");
        assert_eq!(
            parse_workspace_version("[package]\nversion = \"1\"\n"),
            None
        );
        assert!(
            workspace_version(&Layout::workspace())
                .unwrap()
                .starts_with("0.")
        );
    }

    #[test]
    fn remote_urls_become_web_addresses() {
        for remote in [
            "git@github.com:acme/ponix.git",
            "https://github.com/acme/ponix.git",
            "https://github.com/acme/ponix",
            "ssh://git@github.com/acme/ponix.git",
        ] {
            assert_eq!(
                web_url(remote).as_deref(),
                Some("https://github.com/acme/ponix"),
                "{remote}"
            );
        }
        assert_eq!(web_url("/srv/git/ponix"), None);
        assert_eq!(web_url("https://user:token@github.com/acme/ponix"), None);
    }

    #[test]
    fn the_dockerfile_declares_exactly_the_build_args_without_defaults() {
        let text = fs::read_to_string(Layout::workspace().root.join(DOCKERFILE)).unwrap();
        let (declared, with_default) = dockerfile_args(&text);
        let mut declared = declared;
        declared.sort();
        let mut expected: Vec<String> = PINNED_BUILD_ARGS
            .iter()
            .chain(LABEL_BUILD_ARGS)
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(declared, expected);
        assert!(with_default.is_empty(), "{with_default:?}");
        assert_eq!(
            dockerfile_args("ARG A=1\nARG TARGETARCH\nARG B\n"),
            (vec!["A".to_owned(), "B".to_owned()], vec!["A".to_owned()])
        );
    }

    #[test]
    fn the_dockerfile_puts_things_where_the_checks_look() {
        let text = fs::read_to_string(Layout::workspace().root.join(DOCKERFILE)).unwrap();
        assert!(text.contains(&format!(" {IMAGE_GOOSE}\n")));
        assert!(text.contains(&format!("COPY migrations/ {IMAGE_MIGRATIONS_DIR}/\n")));
        assert!(text.contains(&format!("\nUSER {IMAGE_USER}\n")));
        assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/ponix-writer\"]"));
    }

    #[test]
    fn every_pinned_build_arg_is_in_pins_env() {
        let pins = Pins::load(&Layout::workspace()).unwrap();
        let args = pinned_build_args(&pins).unwrap();
        assert_eq!(args.len(), PINNED_BUILD_ARGS.len());
    }
}
