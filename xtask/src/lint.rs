//! `cargo xtask lint`: checks the deploy files without a Docker engine.
//!
//! - actionlint on .github/workflows (shellcheck on their `run:` scripts);
//! - hadolint on docker/Dockerfile, shellcheck on the shell scripts;
//! - docker/compose.yaml against the compose specification's JSON schema, as written
//!   and with pins.env interpolated (which also proves every variable it needs is set);
//! - `docker compose config` where the compose plugin exists (CI), skipped elsewhere;
//! - consistency: versions set in pins.env only (rust-toolchain.toml included), and
//!   the files agreeing with each other, read with TOML and YAML parsers.
//!
//! The pinned linters are installed first when missing (the same step as
//! `cargo xtask tools`). Every check runs; the command fails if any did.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::{Shell, cmd};

use crate::compose::{self, COMPOSE_FILE, ComposeBackend};
use crate::flags;
use crate::image::{self, DOCKERFILE, LABEL_BUILD_ARGS, PINNED_BUILD_ARGS};
use crate::tools::lint as tools_lint;
use localenv::env_file;
use localenv::pins::Pins;

const WORKFLOWS_DIR: &str = ".github/workflows";
/// Shapes the image's build context (the repository root).
const DOCKERIGNORE: &str = ".dockerignore";
/// The Rust toolchain for cargo and rustup; must agree with pins.env.
const TOOLCHAIN_FILE: &str = "rust-toolchain.toml";
/// Shell scripts checked with shellcheck.
const SHELL_SCRIPTS: &[&str] = &[
    "docker/healthcheck.sh",
    "docker/local/clickhouse-entrypoint.sh",
    ".ci/run",
    "service/tests/support/failing-goose",
];

impl flags::Lint {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        let summary = run_checks(sh, &layout)?;
        println!("lint: {summary}");
        Ok(())
    }
}

/// Installs the linters if needed, runs every check and returns a one-line summary
/// (the key figure of e2e's `lint` step).
pub fn run_checks(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    let pins = Pins::load(layout)?;
    tools_lint::install_linters(sh, layout, &pins).context("installing the pinned linters")?;

    let checks: [(&str, &dyn Fn() -> anyhow::Result<String>); 6] = [
        ("actionlint", &|| actionlint(sh, layout)),
        ("hadolint", &|| hadolint(sh, layout)),
        ("shellcheck", &|| shellcheck(sh, layout)),
        ("compose schema", &|| compose_schema(sh, layout, &pins)),
        ("compose config", &|| compose_config(sh, layout)),
        ("consistency", &|| consistency(layout, &pins)),
    ];
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for (name, check) in checks {
        eprintln!("[lint] {name} ...");
        match check() {
            Ok(figure) => {
                eprintln!("[lint] {name}: ok, {figure}");
                passed.push(format!("{name} ({figure})"));
            }
            Err(err) => {
                eprintln!("[lint] {name}: FAILED\n{err:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} lint checks failed: {} (details above)",
            failed.len(),
            checks.len(),
            failed.join(", ")
        );
    }
    Ok(format!(
        "{} checks passed: {}",
        passed.len(),
        passed.join("; ")
    ))
}

fn require(path: PathBuf) -> anyhow::Result<PathBuf> {
    if !path.exists() {
        bail!("{} not found: run `cargo xtask tools`", path.display());
    }
    Ok(path)
}

fn actionlint(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    let actionlint = require(tools_lint::actionlint(layout))?;
    let shellcheck = require(tools_lint::lint_venv_bin(layout, "shellcheck"))?;
    let workflows = workflow_files(&layout.root)?;
    if workflows.is_empty() {
        bail!("no workflow in {WORKFLOWS_DIR}");
    }
    let count = workflows.len();
    // The pinned shellcheck, and no pyflakes: the same findings on every machine.
    cmd!(
        sh,
        "{actionlint} -no-color -shellcheck={shellcheck} -pyflakes= {workflows...}"
    )
    .run()
    .context("actionlint found problems in the workflows (listed above)")?;
    Ok(format!("{count} workflows"))
}

fn workflow_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = root.join(WORKFLOWS_DIR);
    let mut files = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Local composite actions: `.github/actions/<name>/action.yml`.
fn action_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = root.join(".github/actions");
    let mut files = Vec::new();
    if dir.exists() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let action_dir = entry?.path();
            for name in ["action.yml", "action.yaml"] {
                let path = action_dir.join(name);
                if path.exists() {
                    files.push(path);
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The writer's Dockerfile and the local stand-ins' (`cargo xtask docker`).
const DOCKERFILES: &[&str] = &[
    DOCKERFILE,
    "docker/local/nats.Dockerfile",
    "docker/local/clickhouse.Dockerfile",
];

fn hadolint(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    let hadolint = require(tools_lint::lint_venv_bin(layout, "hadolint"))?;
    let dockerfiles: Vec<_> = DOCKERFILES.iter().map(|f| layout.root.join(f)).collect();
    cmd!(sh, "{hadolint} --no-color {dockerfiles...}")
        .run()
        .context("hadolint found problems in the Dockerfiles (listed above)")?;
    Ok(DOCKERFILES.join(", "))
}

fn shellcheck(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    let shellcheck = require(tools_lint::lint_venv_bin(layout, "shellcheck"))?;
    let scripts: Vec<PathBuf> = SHELL_SCRIPTS
        .iter()
        .map(|script| layout.root.join(script))
        .filter(|path| path.exists())
        .collect();
    let count = scripts.len();
    cmd!(sh, "{shellcheck} {scripts...}")
        .run()
        .context("shellcheck found problems in the shell scripts (listed above)")?;
    Ok(format!("{count} scripts"))
}

fn compose_schema(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<String> {
    let checker = require(tools_lint::lint_venv_bin(layout, "check-jsonschema"))?;
    let compose_file = layout.root.join(COMPOSE_FILE);
    let text = fs::read_to_string(&compose_file)
        .with_context(|| format!("reading {}", compose_file.display()))?;
    let interpolated = env_file::interpolate(&text, |name| pins.get_opt(name).map(str::to_owned))
        .map_err(|problems| {
        anyhow::anyhow!(
            "{COMPOSE_FILE} cannot be interpolated from pins.env:\n  {}",
            problems.join("\n  ")
        )
    })?;
    let dir = layout.tools_dir().join("lint");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let resolved = dir.join("compose.pins-interpolated.yaml");
    fs::write(&resolved, interpolated)
        .with_context(|| format!("writing {}", resolved.display()))?;
    cmd!(
        sh,
        "{checker} --builtin-schema vendor.compose-spec {compose_file} {resolved}"
    )
    .run()
    .context("docker/compose.yaml does not match the compose specification (details above)")?;
    Ok("compose.yaml as written and interpolated".into())
}

fn compose_config(sh: &Shell, layout: &Layout) -> anyhow::Result<String> {
    if !compose::compose_available() {
        return Ok("skipped: no docker compose plugin here".into());
    }
    let args = ComposeBackend::dev(layout).config_args();
    cmd!(sh, "docker {args...}")
        .run()
        .context("`docker compose config` rejected docker/compose.yaml (details above)")?;
    Ok("docker compose config accepted it".into())
}

// ---- Consistency -------------------------------------------------------------------

/// The rules no linter knows: each version in pins.env only, and the deploy files
/// agreeing with each other and with xtask.
fn consistency(layout: &Layout, pins: &Pins) -> anyhow::Result<String> {
    let read = |relative: &str| {
        fs::read_to_string(layout.root.join(relative))
            .with_context(|| format!("reading {relative}"))
    };
    let dockerfile = read(DOCKERFILE)?;
    let dockerignore = read(DOCKERIGNORE)?;
    let manifest = read("Cargo.toml")?;
    let compose_text = read(COMPOSE_FILE)?;
    let toolchain_file = read(TOOLCHAIN_FILE)?;
    let settings = compose::load_settings(&layout.root)?;
    let mut workflows = Vec::new();
    for path in workflow_files(&layout.root)?
        .into_iter()
        .chain(action_files(&layout.root)?)
    {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        workflows.push((path, text));
    }

    let mut problems = Vec::new();
    problems.extend(dockerfile_problems(&dockerfile));
    problems.extend(build_context_problems(&manifest, &dockerignore));
    problems.extend(compose_problems(&compose_text));
    problems.extend(toolchain_problems(&toolchain_file, pins));
    problems.extend(pin_problems(pins));
    problems.extend(settings_problems(&settings));
    for (path, text) in &workflows {
        let name = path.strip_prefix(&layout.root).unwrap_or(path).display();
        problems.extend(
            workflow_problems(text)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok("pins, toolchain, build args, build context, credentials and action pins agree".into())
}

/// The image is built from a context that `.dockerignore` empties and then refills
/// directory by directory. Cargo loads every workspace member even to build one
/// package, so a member left out of the context breaks the image build (only on a
/// Docker host, long after the change): every member's top directory must be
/// re-included.
fn build_context_problems(manifest: &str, dockerignore: &str) -> Vec<String> {
    let Some(members) = workspace_members(manifest) else {
        return vec!["Cargo.toml: no `members = [...]` under [workspace]".to_owned()];
    };
    let included: Vec<&str> = dockerignore
        .lines()
        .filter_map(|line| line.trim().strip_prefix('!'))
        .map(|path| path.trim_end_matches('/'))
        .collect();
    members
        .iter()
        .filter(|member| {
            let top = member.split('/').next().unwrap_or(member);
            !included.contains(&top)
        })
        .map(|member| {
            format!(
                "{DOCKERIGNORE}: workspace member {member} is not in the image's build context; add `!{}/`",
                member.split('/').next().unwrap_or(member)
            )
        })
        .collect()
}

/// The paths in the root manifest's `[workspace] members`.
fn workspace_members(manifest: &str) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        workspace: Workspace,
    }
    #[derive(serde::Deserialize)]
    struct Workspace {
        members: Vec<String>,
    }
    toml::from_str::<Manifest>(manifest)
        .ok()
        .map(|manifest| manifest.workspace.members)
}

/// Build args exactly as xtask passes them, none with a default, base images only
/// through them.
fn dockerfile_problems(dockerfile: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (declared, with_default) = image::dockerfile_args(dockerfile);
    for name in with_default {
        problems.push(format!(
            "{DOCKERFILE}: ARG {name} has a default; versions come from pins.env only"
        ));
    }
    let expected: Vec<&str> = PINNED_BUILD_ARGS
        .iter()
        .chain(LABEL_BUILD_ARGS)
        .copied()
        .collect();
    for name in &declared {
        if !expected.contains(&name.as_str()) {
            problems.push(format!(
                "{DOCKERFILE}: ARG {name} is not passed by `cargo xtask image` (xtask/src/image.rs)"
            ));
        }
    }
    for name in expected {
        if !declared.iter().any(|d| d == name) {
            problems.push(format!("{DOCKERFILE}: ARG {name} is missing"));
        }
    }
    let mut stages: Vec<String> = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("FROM ") else {
            continue;
        };
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let image = words.first().copied().unwrap_or_default();
        let from_pin = image
            .strip_prefix("${")
            .and_then(|s| s.strip_suffix('}'))
            .is_some_and(|name| PINNED_BUILD_ARGS.contains(&name));
        // `scratch` is BuildKit's empty filesystem, not an image to pull.
        let scratch = image == "scratch";
        if !from_pin && !scratch && !stages.iter().any(|s| s == image) {
            problems.push(format!(
                "{DOCKERFILE}: `FROM {image}` names an image directly; use a pinned build arg"
            ));
        }
        if let [_, as_kw, stage] = words.as_slice()
            && as_kw.eq_ignore_ascii_case("as")
        {
            stages.push(stage.to_string());
        }
    }
    problems
}

/// Images only through pins.env, and the build args of the writer equal to the
/// Dockerfile's pinned ones.
fn compose_problems(compose_text: &str) -> Vec<String> {
    let compose: serde_yaml_ng::Value = match serde_yaml_ng::from_str(compose_text) {
        Ok(compose) => compose,
        Err(err) => return vec![format!("{COMPOSE_FILE}: not YAML: {err}")],
    };
    let Some(services) = compose.get("services").and_then(|s| s.as_mapping()) else {
        return vec![format!("{COMPOSE_FILE}: no `services:`")];
    };
    let mut problems = Vec::new();
    let mut build_args = None;
    for (name, service) in services {
        let name = name.as_str().unwrap_or("?");
        if let Some(image) = service.get("image").and_then(|i| i.as_str())
            && !image.starts_with("${")
        {
            problems.push(format!(
                "{COMPOSE_FILE}: service {name} sets `image: {image}`; use a variable from pins.env"
            ));
        }
        if let Some(args) = service.get("build").and_then(|b| b.get("args")) {
            build_args = args.as_mapping();
        }
    }
    let args: Vec<(String, String)> = build_args
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            let text = |v: &serde_yaml_ng::Value| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{v:?}"))
            };
            (text(key), text(value))
        })
        .collect();
    let mut names: Vec<&str> = args.iter().map(|(key, _)| key.as_str()).collect();
    names.sort_unstable();
    let mut expected = PINNED_BUILD_ARGS.to_vec();
    expected.sort_unstable();
    if names != expected {
        problems.push(format!(
            "{COMPOSE_FILE}: the writer's build args are {names:?}, expected {expected:?}"
        ));
    }
    for (key, value) in &args {
        if !value.starts_with(&format!("${{{key}:?")) && value != &format!("${{{key}}}") {
            problems.push(format!(
                "{COMPOSE_FILE}: build arg {key} must be ${{{key}:?...}} from pins.env, found {value}"
            ));
        }
    }
    problems
}

/// rust-toolchain.toml names the toolchain pins.env pins.
fn toolchain_problems(toolchain_file: &str, pins: &Pins) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct ToolchainFile {
        toolchain: Toolchain,
    }
    #[derive(serde::Deserialize)]
    struct Toolchain {
        channel: String,
    }
    let channel = match toml::from_str::<ToolchainFile>(toolchain_file) {
        Ok(file) => file.toolchain.channel,
        Err(err) => return vec![format!("{TOOLCHAIN_FILE}: no [toolchain] channel: {err}")],
    };
    match pins.get("RUST_TOOLCHAIN") {
        Ok(pinned) if pinned == channel => Vec::new(),
        Ok(pinned) => vec![format!(
            "{TOOLCHAIN_FILE}: channel {channel} differs from RUST_TOOLCHAIN={pinned} in pins.env; \
             set both to the same release"
        )],
        Err(err) => vec![err.to_string()],
    }
}

/// Pins that must agree with each other.
/// The official images: pinned by digest, so that a re-pushed tag cannot change what
/// GitHub Actions runs.
const DIGEST_PINNED_IMAGES: &[&str] = &[
    "NATS_IMAGE",
    "CLICKHOUSE_IMAGE",
    "RUST_IMAGE",
    "RUNTIME_IMAGE",
];

fn digest_pinned(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(name, digest)| {
        name.contains(':') && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn pin_problems(pins: &Pins) -> Vec<String> {
    let mut problems = Vec::new();
    for key in DIGEST_PINNED_IMAGES {
        if let Some(image) = pins.get_opt(key)
            && !digest_pinned(image)
        {
            problems.push(format!(
                "pins.env: {key}={image} is not pinned by digest: write it as NAME:TAG@sha256:<64 hex digits> \
                 (`docker buildx imagetools inspect NAME:TAG` prints the digest)"
            ));
        }
    }
    match (pins.get("RUST_TOOLCHAIN"), pins.get("RUST_IMAGE")) {
        (Ok(toolchain), Ok(image)) => {
            // The tag sits before any `@sha256:` digest.
            let reference = image.split_once('@').map_or(image, |(name, _)| name);
            let tag = reference
                .rsplit_once(':')
                .map(|(_, tag)| tag)
                .unwrap_or_default();
            if tag != toolchain && !tag.starts_with(&format!("{toolchain}-")) {
                problems.push(format!(
                    "pins.env: RUST_IMAGE={image} does not carry RUST_TOOLCHAIN={toolchain}"
                ));
            }
        }
        (toolchain, image) => {
            for err in [toolchain.err(), image.err()].into_iter().flatten() {
                problems.push(err.to_string());
            }
        }
    }
    for key in PINNED_BUILD_ARGS {
        if let Err(err) = pins.get(key) {
            problems.push(err.to_string());
        }
    }
    problems
}

/// The ClickHouse server's user and database are the writer's.
fn settings_problems(settings: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (server, writer) in [
        ("CLICKHOUSE_DB", "PONIX_CLICKHOUSE_DATABASE"),
        ("CLICKHOUSE_USER", "PONIX_CLICKHOUSE_USERNAME"),
        ("CLICKHOUSE_PASSWORD", "PONIX_CLICKHOUSE_PASSWORD"),
    ] {
        if settings.get(server) != settings.get(writer) {
            problems.push(format!(
                "{}: {server} and {writer} differ; the writer would log in as someone the \
                 server never created",
                compose::SETTINGS_TEMPLATE
            ));
        }
    }
    problems
}

/// Remote actions pinned to a full commit, and no floating runner images, in a
/// workflow (`jobs`) or a composite action (`runs`).
fn workflow_problems(workflow: &str) -> Vec<String> {
    use serde_yaml_ng::Value;
    let workflow: Value = match serde_yaml_ng::from_str(workflow) {
        Ok(workflow) => workflow,
        Err(err) => return vec![format!("not YAML: {err}")],
    };
    let mut problems = Vec::new();
    let mut check_uses = |place: &str, uses: Option<&Value>| {
        let Some(reference) = uses.and_then(Value::as_str) else {
            return;
        };
        let pinned = reference
            .split_once('@')
            .is_some_and(|(_, rev)| rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()));
        if !reference.starts_with("./") && !pinned {
            problems.push(format!(
                "{place}: `{reference}` is not pinned to a full commit SHA"
            ));
        }
    };
    let mut runners = Vec::new();
    let steps_of = |value: &Value| -> Vec<Value> {
        value
            .get("steps")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
    };
    if let Some(jobs) = workflow.get("jobs").and_then(Value::as_mapping) {
        for (name, job) in jobs {
            let place = format!("jobs.{}", name.as_str().unwrap_or("?"));
            match job.get("runs-on") {
                Some(Value::String(runner)) => runners.push((place.clone(), runner.clone())),
                Some(Value::Sequence(labels)) => runners.extend(
                    labels
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|label| (place.clone(), label.to_owned())),
                ),
                _ => {}
            }
            check_uses(&place, job.get("uses"));
            for (index, step) in steps_of(job).iter().enumerate() {
                check_uses(&format!("{place}.steps[{index}]"), step.get("uses"));
            }
        }
    }
    if let Some(runs) = workflow.get("runs") {
        for (index, step) in steps_of(runs).iter().enumerate() {
            check_uses(&format!("runs.steps[{index}]"), step.get("uses"));
        }
    }
    for (place, runner) in runners {
        if runner.contains("-latest") {
            problems.insert(
                0,
                format!("{place}: runs-on {runner} floats; name the image version"),
            );
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workspace_member_must_be_in_the_build_context() {
        let manifest = "[workspace]\nresolver = \"3\"\nmembers = [\"service\", \"bench\", \"xtask\", \"localenv\"]\n";
        assert_eq!(
            workspace_members(manifest).unwrap(),
            ["service", "bench", "xtask", "localenv"]
        );
        let ignore = "*\n!Cargo.toml\n!service/\n!xtask/\n!localenv/\n";
        assert_eq!(
            build_context_problems(manifest, ignore),
            [
                ".dockerignore: workspace member bench is not in the image's build context; add `!bench/`"
            ]
        );
        assert!(build_context_problems(manifest, &format!("{ignore}!bench/\n")).is_empty());
        assert_eq!(build_context_problems("[package]\n", ignore).len(), 1);
    }

    #[test]
    fn the_compose_file_interpolates_from_pins_alone() {
        let layout = Layout::workspace();
        let pins = Pins::load(&layout).unwrap();
        let text = fs::read_to_string(layout.root.join(COMPOSE_FILE)).unwrap();
        let resolved =
            env_file::interpolate(&text, |name| pins.get_opt(name).map(str::to_owned)).unwrap();
        assert!(resolved.contains(&format!("image: {}", pins.get("NATS_IMAGE").unwrap())));
        assert!(resolved.contains(&format!("image: {}", pins.get("CLICKHOUSE_IMAGE").unwrap())));
        assert!(resolved.contains("image: ponix-writer:dev"));
        assert!(!resolved.contains("${"), "{resolved}");
    }

    #[test]
    fn the_repository_files_are_consistent() {
        let layout = Layout::workspace();
        let pins = Pins::load(&layout).unwrap();
        consistency(&layout, &pins).unwrap();
    }

    #[test]
    fn dockerfile_rules() {
        let good = "ARG RUST_IMAGE\nARG RUNTIME_IMAGE\nFROM ${RUST_IMAGE} AS build\n\
                    ARG GOOSE_VERSION\nARG GOOSE_SHA256_LINUX_X86_64\nARG GOOSE_SHA256_LINUX_ARM64\n\
                    FROM build AS test\nFROM scratch AS files\nFROM ${RUNTIME_IMAGE}\nARG VERSION\nARG REVISION\nARG SOURCE\n";
        assert_eq!(dockerfile_problems(good), Vec::<String>::new());
        let bad = good
            .replace("ARG VERSION\n", "ARG VERSION=1\n")
            .replace("FROM build AS test", "FROM rust:latest AS test")
            .replace("ARG SOURCE\n", "ARG OTHER\n");
        let problems = dockerfile_problems(&bad);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("ARG VERSION has a default"))
        );
        assert!(problems.iter().any(|p| p.contains("`FROM rust:latest`")));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("ARG OTHER is not passed"))
        );
        assert!(problems.iter().any(|p| p.contains("ARG SOURCE is missing")));
    }

    #[test]
    fn compose_rules() {
        let text = fs::read_to_string(Layout::workspace().root.join(COMPOSE_FILE)).unwrap();
        assert_eq!(compose_problems(&text), Vec::<String>::new());
        let tagged = text.replacen(
            "image: ${NATS_IMAGE:?",
            "image: nats:latest\n    x: ${NATS_IMAGE:?",
            1,
        );
        assert_eq!(compose_problems(&tagged).len(), 1);
        let literal_arg = text.replace(
            "RUST_IMAGE: ${RUST_IMAGE:?",
            "RUST_IMAGE: rust:1 # ${RUST_IMAGE:?",
        );
        assert_eq!(compose_problems(&literal_arg).len(), 1);
    }

    #[test]
    fn the_toolchain_file_must_name_the_pinned_toolchain() {
        let pins = Pins::parse("RUST_TOOLCHAIN=1.95.0\n").unwrap();
        assert!(toolchain_problems("[toolchain]\nchannel = \"1.95.0\"\n", &pins).is_empty());
        let problems = toolchain_problems("[toolchain]\nchannel = \"1.94.1\"\n", &pins);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("differs from RUST_TOOLCHAIN=1.95.0"));
        assert_eq!(toolchain_problems("[toolchain]\n", &pins).len(), 1);
    }

    #[test]
    fn pins_must_agree() {
        let pins = Pins::parse(
            "RUST_TOOLCHAIN=1.95.0\nRUST_IMAGE=rust:1.94.0-bookworm\nRUNTIME_IMAGE=x\n\
             GOOSE_VERSION=v\nGOOSE_SHA256_LINUX_X86_64=a\nGOOSE_SHA256_LINUX_ARM64=b\n",
        )
        .unwrap();
        let problems = pin_problems(&pins);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("does not carry RUST_TOOLCHAIN=1.95.0"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("RUNTIME_IMAGE=x is not pinned by digest"))
        );
        let digest = "0123456789abcdef".repeat(4);
        let good = Pins::parse(&format!(
            "RUST_TOOLCHAIN=1.95.0\nRUST_IMAGE=rust:1.95.0-bookworm@sha256:{digest}\n\
             RUNTIME_IMAGE=debian:bookworm-slim@sha256:{digest}\n\
             GOOSE_VERSION=v\nGOOSE_SHA256_LINUX_X86_64=a\nGOOSE_SHA256_LINUX_ARM64=b\n",
        ))
        .unwrap();
        assert!(pin_problems(&good).is_empty(), "{:?}", pin_problems(&good));
        let short = Pins::parse(&format!(
            "RUST_TOOLCHAIN=1.95.0\nRUST_IMAGE=rust:1.95.0-bookworm@sha256:{}\n\
             RUNTIME_IMAGE=debian:bookworm-slim@sha256:{digest}\n\
             GOOSE_VERSION=v\nGOOSE_SHA256_LINUX_X86_64=a\nGOOSE_SHA256_LINUX_ARM64=b\n",
            &digest[..63]
        ))
        .unwrap();
        assert_eq!(pin_problems(&short).len(), 1, "{:?}", pin_problems(&short));
    }

    #[test]
    fn settings_must_agree() {
        let settings = compose::parse_settings(
            "CLICKHOUSE_DB=p\nCLICKHOUSE_USER=u\nCLICKHOUSE_PASSWORD=x\n\
             PONIX_CLICKHOUSE_DATABASE=p\nPONIX_CLICKHOUSE_USERNAME=u\nPONIX_CLICKHOUSE_PASSWORD=y\n",
        )
        .unwrap();
        let problems = settings_problems(&settings);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("CLICKHOUSE_PASSWORD and PONIX_CLICKHOUSE_PASSWORD differ"));
    }

    #[test]
    fn workflow_rules() {
        let workflow = "jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n\
                        \x20     - uses: actions/checkout@v4\n\
                        \x20     - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1\n\
                        \x20     - uses: ./.github/actions/setup\n\
                        \x20     - run: 'echo uses: not/an-action@v1'\n";
        let problems = workflow_problems(workflow);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("jobs.a: runs-on ubuntu-latest"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("jobs.a.steps[0]: `actions/checkout@v4`"),
            "{problems:?}"
        );
        let action = "runs:\n  using: composite\n  steps:\n    - uses: actions/setup-go@v6\n";
        assert_eq!(
            workflow_problems(action),
            ["runs.steps[0]: `actions/setup-go@v6` is not pinned to a full commit SHA"]
        );
        assert_eq!(workflow_problems("jobs: [").len(), 1);
    }
}
