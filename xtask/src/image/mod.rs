//! `cargo xtask image`: builds the writer's container image from docker/Dockerfile
//! and checks it for real: commands inside it, its files and metadata, no secret in
//! its history or environment, and its HEALTHCHECK against a running NATS and
//! ClickHouse. Prints a table of the checks and the image size; pushes when asked,
//! only after every check passed.
//!
//! The whole run is computed first as a [`plan::Plan`] of command lines: `--dry-run`
//! prints it and stops, so it works without a Docker engine, and the unit tests
//! check it. Base images and goose come from pins.env as build arguments, with the
//! images overlaid by .tools/docker/images.env where `cargo xtask docker` made local
//! stand-ins. The writer is built inside RUST_IMAGE (`--from-source`, target
//! `runtime`) or on this machine (`--from-host`, target `runtime-prebuilt`); by
//! default on this machine when RUST_IMAGE is not present locally.

mod checks;
mod cmd;
mod dockerfile;
mod host;
mod inputs;
mod plan;
mod secrets;
mod stack;

use std::fs;
use std::time::Instant;

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::{Shell, cmd};

use crate::compose;
use localenv::images::Images;

use crate::docker::images::image_exists;
use crate::flags;

pub use dockerfile::dockerfile_args;
use inputs::{Inputs, Origin};
use plan::Plan;
use stack::StackImages;

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
/// The first Docker release whose built-in BuildKit (0.11) knows named contexts.
const NAMED_CONTEXT_DOCKER_MAJOR: u32 = 23;

impl flags::Image {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        localenv::interrupt::install();
        let started = Instant::now();
        let layout = Layout::new(&sh.current_dir());
        let images = Images::load(&layout)?;
        if self.push && self.registry.is_none() {
            bail!("--push needs --registry, such as `--registry ghcr.io/<owner>`");
        }
        if self.from_host && self.from_source {
            bail!("--from-host and --from-source exclude each other: pass one, or neither (auto)");
        }
        let name = image_name(self.registry.as_deref(), self.name.as_deref())?;
        let git = git_state(sh).context("reading the commit to tag the image with")?;
        let engine = compose::docker_engine_available();
        let rust_image = images.get("RUST_IMAGE")?;
        let (origin, why) = choose_origin(
            self.from_host,
            self.from_source,
            engine.then(|| image_exists(sh, rust_image)),
            engine && named_contexts_supported(sh),
        );
        println!("[image] the writer: {why}");
        let settings: Vec<(String, String)> =
            compose::load_settings(&layout.root)?.into_iter().collect();
        let inputs = Inputs {
            name,
            version: workspace_version(&layout)?,
            revision: git.revision,
            dirty: git.dirty,
            source_url: source_url(sh),
            platforms: self.platform.clone().map(|p| p.0).unwrap_or_default(),
            push: self.push,
            origin,
            build_args: pinned_build_args(&images)?,
            goose_version: images.pins.goose_version()?.to_owned(),
            migrations: migration_files(&layout)?,
            writer_settings: settings
                .iter()
                .map(|(key, _)| key.clone())
                .filter(|key| key.starts_with("PONIX_"))
                .collect(),
            stack_images: StackImages {
                nats: images.get("NATS_IMAGE")?.to_owned(),
                clickhouse: images.get("CLICKHOUSE_IMAGE")?.to_owned(),
            },
            run_id: std::process::id().to_string(),
        };
        let plan = Plan::new(&inputs)?;
        print!("{}", plan.describe(self.dry_run));
        if self.dry_run {
            if !compose::buildx_available() {
                println!(
                    "[image] note: docker buildx is not installed here; `cargo xtask docker` installs it"
                );
            }
            return Ok(());
        }
        if !engine {
            bail!(
                "no Docker engine answers (`docker info` failed): run `cargo xtask docker`, or \
                 `cargo xtask image --dry-run` to see the commands"
            );
        }
        if !compose::buildx_available() {
            bail!(
                "`docker buildx version` failed: the build needs BuildKit, which the docker CLI \
                 reaches through the buildx plugin; run `cargo xtask docker` to install it"
            );
        }
        let mut known_secrets = secrets::known_secrets(
            "docker/.env.example (or docker/.env)",
            settings.iter().map(|(k, v)| (k, v)),
        );
        known_secrets.extend(secrets::environment_secrets());
        let ctx = checks::RunContext {
            sh,
            layout: &layout,
            known_secrets,
            settings,
        };
        let result = execute(&plan, &ctx);
        println!("[image] took {:.0} s", started.elapsed().as_secs_f64());
        result
    }
}

/// The origin, and the sentence that says why it was chosen. `rust_image_present`
/// is None when no engine answers (a dry run).
fn choose_origin(
    from_host: bool,
    from_source: bool,
    rust_image_present: Option<bool>,
    named_context: bool,
) -> (Origin, String) {
    let host = Origin::Host { named_context };
    let how = |origin: &Origin| match origin {
        Origin::Source => "built inside RUST_IMAGE (target runtime)",
        Origin::Host { .. } => "built on this machine with cargo (target runtime-prebuilt)",
    };
    let (origin, reason) = if from_host {
        (host, "--from-host")
    } else if from_source {
        (Origin::Source, "--from-source")
    } else {
        match rust_image_present {
            Some(true) => (
                Origin::Source,
                "auto: RUST_IMAGE is present locally; --from-host to build on this machine",
            ),
            Some(false) => (
                host,
                "auto: RUST_IMAGE is not present locally; --from-source to build (and pull) it",
            ),
            None => (
                Origin::Source,
                "auto: no Docker engine to ask whether RUST_IMAGE is present; assumed",
            ),
        }
    };
    let text = format!("{} ({reason})", how(&origin));
    (origin, text)
}

/// Whether the engine's own BuildKit knows named contexts (Docker 23 and later).
fn named_contexts_supported(sh: &Shell) -> bool {
    let format = "{{.Server.Version}}";
    cmd!(sh, "docker version --format {format}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .and_then(|version| docker_major(&version))
        .is_some_and(|major| major >= NAMED_CONTEXT_DOCKER_MAJOR)
}

fn docker_major(version: &str) -> Option<u32> {
    version.trim().split('.').next()?.parse().ok()
}

fn execute(plan: &Plan, ctx: &checks::RunContext<'_>) -> anyhow::Result<()> {
    let sh = ctx.sh;
    let _staged = match &plan.host_build {
        Some(cargo) => {
            eprintln!("[image] building the writer on this machine: {cargo}");
            cargo
                .to_xshell(sh)
                .env("CARGO_INCREMENTAL", "0")
                .run()
                .context("`cargo build --release -p ponix-writer` failed (its output is above)")?;
            Some(host::stage(ctx.layout)?)
        }
        None => None,
    };
    eprintln!(
        "[image] building {} (minutes the first time) ...",
        plan.tags[1]
    );
    let build_started = Instant::now();
    plan.build.run(sh).with_context(|| match plan.origin {
        Origin::Source => {
            "the image build failed; its output is above (where RUST_IMAGE cannot \
                           be pulled, `--from-host` builds the writer on this machine instead)"
        }
        Origin::Host { .. } => "the image build failed; its output is above",
    })?;
    println!(
        "[image] built {} in {:.0} s",
        plan.tags[1],
        build_started.elapsed().as_secs_f64()
    );
    drop(_staged);

    let mut failed = 0;
    for verification in &plan.verifications {
        let platform = verification
            .platform
            .as_deref()
            .map(|p| format!(" [{p}]"))
            .unwrap_or_default();
        let checks_started = Instant::now();
        let mut rows = Vec::new();
        for check in &verification.checks {
            eprintln!("[image] check{platform}: {} ...", check.what);
            let outcome = check.evaluate(ctx);
            if !outcome.ok {
                failed += 1;
            }
            rows.push((check, outcome));
        }
        println!(
            "image checks{platform}: {} ({:.0} s)",
            verification.reference,
            checks_started.elapsed().as_secs_f64()
        );
        print!("{}", checks::table(&rows));
        // The table cuts long observations; a failure is worth reading whole.
        for (check, outcome) in rows.iter().filter(|(_, outcome)| !outcome.ok) {
            println!("FAILED: {}:\n  {}", check.what, outcome.observed);
        }
        let size = verification
            .size
            .read(sh)
            .context("reading the image size")?;
        let bytes: u64 = size
            .trim()
            .parse()
            .with_context(|| format!("`{}` printed {size:?}, not a size", verification.size))?;
        println!(
            "image size{platform}: {bytes} bytes ({:.1} MB)",
            bytes as f64 / 1e6
        );
    }
    if failed > 0 {
        bail!("{failed} image check(s) FAILED (table above); nothing was pushed");
    }
    for push in &plan.push {
        push.run(sh)
            .context("pushing failed: log in to the registry first (`docker login <registry>`)")?;
    }
    let verb = if plan.pushes {
        "built and pushed"
    } else {
        "built"
    };
    println!("{verb}:");
    for tag in &plan.tags {
        println!("  {tag}");
    }
    Ok(())
}

// ---- Inputs ------------------------------------------------------------------------

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

/// The pinned build args, images overlaid by .tools/docker/images.env.
pub fn pinned_build_args(images: &Images) -> anyhow::Result<Vec<(String, String)>> {
    PINNED_BUILD_ARGS
        .iter()
        .map(|key| Ok((key.to_string(), images.get(key)?.to_owned())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use localenv::pins::Pins;

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
    fn every_pinned_build_arg_is_in_pins_env() {
        let images = Images::official(Pins::load(&Layout::workspace()).unwrap());
        let args = pinned_build_args(&images).unwrap();
        assert_eq!(args.len(), PINNED_BUILD_ARGS.len());
    }

    #[test]
    fn the_origin_is_chosen_and_said() {
        let (origin, why) = choose_origin(false, false, Some(false), false);
        assert_eq!(
            origin,
            Origin::Host {
                named_context: false
            }
        );
        assert!(why.contains("RUST_IMAGE is not present locally"), "{why}");
        let (origin, _) = choose_origin(false, false, Some(true), true);
        assert_eq!(origin, Origin::Source);
        let (origin, why) = choose_origin(true, false, Some(true), true);
        assert_eq!(
            origin,
            Origin::Host {
                named_context: true
            }
        );
        assert!(why.ends_with("(--from-host)"), "{why}");
        let (origin, _) = choose_origin(false, true, Some(false), false);
        assert_eq!(origin, Origin::Source);
        let (origin, _) = choose_origin(false, false, None, false);
        assert_eq!(origin, Origin::Source);
    }

    #[test]
    fn docker_versions_tell_named_context_support() {
        assert_eq!(docker_major("20.10.24+dfsg1"), Some(20));
        assert_eq!(docker_major("28.2.2\n"), Some(28));
        assert_eq!(docker_major("dev"), None);
    }
}
