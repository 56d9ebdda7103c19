//! The checks `cargo xtask image` runs on the built image, for real: commands inside
//! it, its files, its metadata and a running stack. Each one gives a row of the
//! printed table: ok or FAILED, with what was observed.

use std::fs;
use std::path::Path;

use anyhow::Context;
use localenv::Layout;
use xshell::Shell;

use super::cmd::Cmd;
use super::inputs::Inputs;
use super::secrets::{self, KnownSecret};
use super::stack::{self, Stack};
use super::{IMAGE_GOOSE, IMAGE_MIGRATIONS_DIR, IMAGE_USER, host};

/// What `id` prints inside the image: uid and gid 10001, no other group.
pub const IMAGE_ID: &str = "uid=10001(ponix) gid=10001(ponix) groups=10001(ponix)";
/// The writer's commands, as `--help` heads their sections.
pub const HELP_COMMANDS: &[&str] = &[
    "ponix-writer migrate",
    "ponix-writer check",
    "ponix-writer dead-letters",
];
/// Variables `--help` must document besides those docker/.env.example sets: the
/// stack's addresses and the ones the image itself sets.
pub const HELP_VARIABLES: &[&str] = &[
    "PONIX_NATS_URL",
    "PONIX_CLICKHOUSE_URL",
    "PONIX_HTTP_ADDR",
    "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
    "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
];

/// The checks, then the size, of one platform's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub platform: Option<String>,
    pub reference: String,
    pub checks: Vec<Check>,
    pub size: Cmd,
}

/// What a command's output must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// This word appears, whole (v3.3.0 does not match v3.30.0).
    Word(String),
    /// Every one of these appears (as a substring).
    Contains(Vec<String>),
    /// The trimmed output equals this.
    Exactly(String),
    /// Exit status 0 is enough.
    Success,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Run a command; its exit status must be 0 and its output match.
    Output { command: Cmd, expect: Expect },
    /// Copy /app/migrations out of a created (never started) container and compare
    /// it byte for byte with migrations/.
    Migrations {
        create: Cmd,
        copy: Cmd,
        remove: Cmd,
        expected: Vec<String>,
    },
    /// Scan the build history and Config.Env for secrets.
    NoSecrets { history: Cmd, env: Cmd },
    /// The HEALTHCHECK goes healthy against NATS and ClickHouse, and /readyz answers.
    Healthy(Box<Stack>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub kind: CheckKind,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub observed: String,
}

/// What the checks need at run time beyond their command lines.
pub struct RunContext<'a> {
    pub sh: &'a Shell,
    pub layout: &'a Layout,
    /// Values the image must not contain, with where they come from.
    pub known_secrets: Vec<KnownSecret>,
    /// docker/.env.example with docker/.env over it: the stack's environment values.
    pub settings: Vec<(String, String)>,
}

/// The checks of the image `reference` for `platform` (None: the engine's own).
/// `pull`: the image was pushed by a multi-platform build, so each run pulls it.
pub fn verification(
    inputs: &Inputs,
    reference: &str,
    platform: Option<&str>,
    pull: bool,
) -> Verification {
    let platform_args = || {
        let mut args: Vec<String> = Vec::new();
        if pull {
            args.extend(["--pull".into(), "always".into()]);
        }
        if let Some(platform) = platform {
            args.extend(["--platform".into(), platform.into()]);
        }
        args
    };
    let run = |entrypoint: Option<&str>| {
        let mut command = Cmd::docker(&["run", "--rm"]).args(platform_args());
        if let Some(entrypoint) = entrypoint {
            command = command.arg("--entrypoint").arg(entrypoint);
        }
        command.arg(reference)
    };
    let mut help_names: Vec<String> = HELP_COMMANDS
        .iter()
        .chain(HELP_VARIABLES)
        .map(|s| s.to_string())
        .collect();
    for name in &inputs.writer_settings {
        if !help_names.contains(name) {
            help_names.push(name.clone());
        }
    }
    let files = format!("ponix-image-{}-files", inputs.run_id);
    let mut checks = vec![
        Check {
            what: "ponix-writer --version is the workspace version".into(),
            kind: CheckKind::Output {
                command: run(None).arg("--version"),
                expect: Expect::Exactly(format!("ponix-writer {}", inputs.version)),
            },
        },
        Check {
            what: "ponix-writer --help lists the commands and PONIX_ variables".into(),
            kind: CheckKind::Output {
                command: run(None).arg("--help"),
                expect: Expect::Contains(help_names),
            },
        },
        Check {
            what: format!("goose --version is the pinned {}", inputs.goose_version),
            kind: CheckKind::Output {
                command: run(Some(IMAGE_GOOSE)).arg("--version"),
                expect: Expect::Word(inputs.goose_version.clone()),
            },
        },
        Check {
            what: format!("goose validate accepts {IMAGE_MIGRATIONS_DIR}"),
            kind: CheckKind::Output {
                command: run(Some(IMAGE_GOOSE))
                    .arg("-dir")
                    .arg(IMAGE_MIGRATIONS_DIR)
                    .arg("validate"),
                expect: Expect::Success,
            },
        },
        Check {
            what: format!("{IMAGE_MIGRATIONS_DIR} equals migrations/"),
            kind: CheckKind::Migrations {
                create: Cmd::docker(&["create", "--name", &files])
                    .args(
                        platform_args()
                            .into_iter()
                            .filter(|a| a != "--pull" && a != "always"),
                    )
                    .arg(reference),
                copy: Cmd::docker(&["cp"])
                    .arg(format!("{files}:{IMAGE_MIGRATIONS_DIR}"))
                    .arg(host::MIGRATIONS_COPY),
                remove: Cmd::docker(&["rm", "--force", &files]),
                expected: inputs.migrations.clone(),
            },
        },
        Check {
            what: format!("Config.User is {IMAGE_USER}"),
            kind: CheckKind::Output {
                command: Cmd::docker(&["image", "inspect", "--format", "{{.Config.User}}"])
                    .arg(reference),
                expect: Expect::Exactly(IMAGE_USER.into()),
            },
        },
        Check {
            what: "runs as uid/gid 10001, non-root (id)".into(),
            kind: CheckKind::Output {
                command: run(Some("/usr/bin/id")),
                expect: Expect::Exactly(IMAGE_ID.into()),
            },
        },
        Check {
            what: "no secret in docker history nor Config.Env".into(),
            kind: CheckKind::NoSecrets {
                history: Cmd::docker(&["history", "--no-trunc", "--format", "{{.CreatedBy}}"])
                    .arg(reference),
                env: Cmd::docker(&["image", "inspect", "--format", "{{json .Config.Env}}"])
                    .arg(reference),
            },
        },
    ];
    // The stack runs the image natively: a foreign platform would need emulation.
    if platform.is_none_or(|p| p == host::PLATFORM) {
        checks.push(Check {
            what: "HEALTHCHECK healthy with NATS + ClickHouse, /readyz 200".into(),
            kind: CheckKind::Healthy(Box::new(Stack::new(
                &inputs.run_id,
                &inputs.stack_images,
                reference,
                &inputs.writer_settings,
            ))),
        });
    }
    Verification {
        platform: platform.map(str::to_owned),
        reference: reference.to_owned(),
        checks,
        size: Cmd::docker(&["image", "inspect", "--format", "{{.Size}}"]).arg(reference),
    }
}

impl Check {
    /// Its command lines and what they must show, for the plan.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        match &self.kind {
            CheckKind::Output { command, expect } => {
                out.push_str(&format!("    {command}\n"));
                let expectation = match expect {
                    Expect::Word(word) => format!(": expect {word}"),
                    Expect::Contains(names) => format!(": expect {} names", names.len()),
                    Expect::Exactly(text) => format!(": expect {text:?}"),
                    Expect::Success => String::new(),
                };
                out.push_str(&format!("      # {}{expectation}\n", self.what));
            }
            CheckKind::Migrations {
                create,
                copy,
                remove,
                expected,
            } => {
                for command in [create, copy, remove] {
                    out.push_str(&format!("    {command}\n"));
                }
                out.push_str(&format!(
                    "      # {}: byte for byte, {} files\n",
                    self.what,
                    expected.len()
                ));
            }
            CheckKind::NoSecrets { history, env } => {
                out.push_str(&format!(
                    "    {history}\n    {env}\n      # {}\n",
                    self.what
                ));
            }
            CheckKind::Healthy(stack) => {
                for command in stack.commands() {
                    out.push_str(&format!("    {command}\n"));
                }
                out.push_str(&format!(
                    "      # {}; everything removed afterwards\n",
                    self.what
                ));
            }
        }
        out
    }

    /// Runs the check; an error running it is a failed row, not an abort.
    pub fn evaluate(&self, ctx: &RunContext<'_>) -> Outcome {
        let result = match &self.kind {
            CheckKind::Output { command, expect } => output_check(ctx.sh, command, expect),
            CheckKind::Migrations {
                create,
                copy,
                remove,
                expected,
            } => migrations_check(ctx, create, copy, remove, expected),
            CheckKind::NoSecrets { history, env } => secrets_check(ctx, history, env),
            CheckKind::Healthy(stack) => stack::run(ctx.sh, ctx.layout, stack, &ctx.settings)
                .map(|observed| Outcome { ok: true, observed }),
        };
        result.unwrap_or_else(|err| Outcome {
            ok: false,
            observed: format!("{err:#}"),
        })
    }
}

fn output_check(sh: &Shell, command: &Cmd, expect: &Expect) -> anyhow::Result<Outcome> {
    let output = command
        .to_xshell(sh)
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("running `{command}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let said = first_line(&stderr).or_else(|| first_line(&stdout));
        return Ok(Outcome {
            ok: false,
            observed: format!("{}: {}", output.status, said.unwrap_or("no output")),
        });
    }
    // goose prints some of its answers on stderr.
    let text = if stdout.trim().is_empty() {
        stderr
    } else {
        stdout
    };
    Ok(match satisfies(&text, expect) {
        Ok(observed) => Outcome { ok: true, observed },
        Err(problem) => Outcome {
            ok: false,
            observed: problem,
        },
    })
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Ok with what was observed, or Err with what is wrong.
pub fn satisfies(output: &str, expect: &Expect) -> Result<String, String> {
    let trimmed = output.trim();
    match expect {
        Expect::Word(word) => trimmed
            .split(|c: char| c.is_whitespace() || c == ',')
            .any(|w| w == word)
            .then(|| first_line(trimmed).unwrap_or_default().to_owned())
            .ok_or_else(|| format!("expected {word} in {trimmed:?}")),
        Expect::Contains(names) => {
            let missing: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|name| !output.contains(name))
                .collect();
            let variables = count_variables(output);
            if missing.is_empty() {
                Ok(format!(
                    "all {} expected names; {variables} PONIX_ variables listed",
                    names.len()
                ))
            } else {
                Err(format!("missing: {}", missing.join(", ")))
            }
        }
        Expect::Exactly(text) => (trimmed == text)
            .then(|| trimmed.to_owned())
            .ok_or_else(|| format!("expected {text:?}, found {trimmed:?}")),
        Expect::Success => Ok(first_line(trimmed).unwrap_or("exit 0").to_owned()),
    }
}

/// Distinct `PONIX_*` names in a text.
fn count_variables(text: &str) -> usize {
    let mut names: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("PONIX_") && word.len() > "PONIX_".len())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

fn migrations_check(
    ctx: &RunContext<'_>,
    create: &Cmd,
    copy: &Cmd,
    remove: &Cmd,
    expected: &[String],
) -> anyhow::Result<Outcome> {
    let copied = ctx.layout.root.join(host::MIGRATIONS_COPY);
    if copied.exists() {
        fs::remove_dir_all(&copied).with_context(|| format!("removing {}", copied.display()))?;
    }
    if let Some(parent) = copied.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    create
        .read(ctx.sh)
        .context("creating a container of the image")?;
    let copy_result = copy.read(ctx.sh);
    let removed = remove.read(ctx.sh);
    copy_result.context("copying the migrations out of the image")?;
    removed.context("removing the container the migrations were copied from")?;
    let outcome = compare_dirs(&ctx.layout.migrations_dir(), &copied, expected);
    fs::remove_dir_all(&copied).with_context(|| format!("removing {}", copied.display()))?;
    outcome
}

/// The copied directory holds exactly `expected`, each equal to the repository's.
fn compare_dirs(repository: &Path, copied: &Path, expected: &[String]) -> anyhow::Result<Outcome> {
    let mut found = Vec::new();
    for entry in fs::read_dir(copied).with_context(|| format!("listing {}", copied.display()))? {
        found.push(entry?.file_name().to_string_lossy().into_owned());
    }
    found.sort();
    let mut problems = Vec::new();
    for name in &found {
        if !expected.contains(name) {
            problems.push(format!("{name} is not in migrations/"));
        }
    }
    for name in expected {
        if !found.contains(name) {
            problems.push(format!("{name} is missing"));
            continue;
        }
        let ours = fs::read(repository.join(name))
            .with_context(|| format!("reading migrations/{name}"))?;
        let theirs = fs::read(copied.join(name)).with_context(|| format!("reading {name}"))?;
        if ours != theirs {
            problems.push(format!("{name} differs"));
        }
    }
    Ok(if problems.is_empty() {
        Outcome {
            ok: true,
            observed: format!("{} files, byte-identical", found.len()),
        }
    } else {
        Outcome {
            ok: false,
            observed: problems.join("; "),
        }
    })
}

fn secrets_check(ctx: &RunContext<'_>, history: &Cmd, env: &Cmd) -> anyhow::Result<Outcome> {
    let history_text = history.read(ctx.sh)?;
    let env_json = env.read(ctx.sh)?;
    let env_vars: Vec<String> = serde_yaml_ng::from_str::<Option<Vec<String>>>(&env_json)
        .with_context(|| format!("`{env}` printed {env_json:?}, not a JSON list"))?
        .unwrap_or_default();
    let findings = secrets::scan(&history_text, &env_vars, &ctx.known_secrets);
    let entries = history_text.lines().count();
    Ok(if findings.is_empty() {
        Outcome {
            ok: true,
            observed: format!(
                "none in {entries} history entries and {} variables ({} known values looked for)",
                env_vars.len(),
                ctx.known_secrets.len()
            ),
        }
    } else {
        Outcome {
            ok: false,
            observed: findings.join("; "),
        }
    })
}

/// The table: one row per check, then nothing else (the caller adds the size).
pub fn table(rows: &[(&Check, Outcome)]) -> String {
    let width = rows
        .iter()
        .map(|(check, _)| check.what.chars().count())
        .max()
        .unwrap_or(0)
        .max("check".len());
    let mut out = format!("  {:<width$}  {:<6}  observed\n", "check", "result");
    for (check, outcome) in rows {
        let result = if outcome.ok { "ok" } else { "FAILED" };
        let observed: String = outcome
            .observed
            .replace('\n', " ")
            .chars()
            .take(160)
            .collect();
        out.push_str(&format!(
            "  {:<width$}  {result:<6}  {observed}\n",
            check.what
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::inputs::tests::inputs;

    fn lines(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter_map(|check| match &check.kind {
                CheckKind::Output { command, .. } => Some(command.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn checks_run_inside_the_commit_tagged_image() {
        let verification = verification(&inputs(), "ponix-writer:ba160c674e59", None, false);
        assert_eq!(
            lines(&verification.checks),
            [
                "docker run --rm ponix-writer:ba160c674e59 --version",
                "docker run --rm ponix-writer:ba160c674e59 --help",
                "docker run --rm --entrypoint /usr/local/bin/goose ponix-writer:ba160c674e59 --version",
                "docker run --rm --entrypoint /usr/local/bin/goose ponix-writer:ba160c674e59 -dir /app/migrations validate",
                "docker image inspect --format '{{.Config.User}}' ponix-writer:ba160c674e59",
                "docker run --rm --entrypoint /usr/bin/id ponix-writer:ba160c674e59",
            ]
        );
        let kinds: Vec<&str> = verification
            .checks
            .iter()
            .map(|check| match check.kind {
                CheckKind::Output { .. } => "output",
                CheckKind::Migrations { .. } => "migrations",
                CheckKind::NoSecrets { .. } => "secrets",
                CheckKind::Healthy(_) => "healthy",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "output",
                "output",
                "output",
                "output",
                "migrations",
                "output",
                "output",
                "secrets",
                "healthy"
            ]
        );
        assert_eq!(
            verification.size.to_string(),
            "docker image inspect --format '{{.Size}}' ponix-writer:ba160c674e59"
        );
    }

    #[test]
    fn help_must_name_the_commands_and_every_setting() {
        let verification = verification(&inputs(), "w:1", None, false);
        let CheckKind::Output {
            expect: Expect::Contains(names),
            ..
        } = &verification.checks[1].kind
        else {
            panic!("the second check reads --help");
        };
        assert!(names.contains(&"ponix-writer migrate".to_owned()));
        assert!(names.contains(&"PONIX_CLICKHOUSE_PASSWORD".to_owned()));
        assert!(names.contains(&"PONIX_HTTP_ADDR".to_owned()));
    }

    #[test]
    fn migrations_are_copied_from_a_container_that_is_never_started() {
        let verification = verification(&inputs(), "w:1", Some("linux/arm64"), true);
        let check = verification
            .checks
            .iter()
            .find(|c| matches!(c.kind, CheckKind::Migrations { .. }))
            .unwrap();
        let CheckKind::Migrations {
            create,
            copy,
            remove,
            ..
        } = &check.kind
        else {
            unreachable!()
        };
        assert_eq!(
            create.to_string(),
            "docker create --name ponix-image-42-files --platform linux/arm64 w:1"
        );
        assert_eq!(
            copy.to_string(),
            "docker cp ponix-image-42-files:/app/migrations .tools/docker/image-check/migrations"
        );
        assert_eq!(remove.to_string(), "docker rm --force ponix-image-42-files");
    }

    #[test]
    fn a_foreign_platform_is_not_run_against_the_stack() {
        let foreign = if host::PLATFORM == "linux/arm64" {
            "linux/amd64"
        } else {
            "linux/arm64"
        };
        let checks = verification(&inputs(), "w:1", Some(foreign), true).checks;
        assert!(
            !checks
                .iter()
                .any(|c| matches!(c.kind, CheckKind::Healthy(_)))
        );
        let native = verification(&inputs(), "w:1", Some(host::PLATFORM), true).checks;
        assert!(matches!(native.last().unwrap().kind, CheckKind::Healthy(_)));
    }

    #[test]
    fn outputs_are_compared() {
        assert_eq!(
            satisfies("goose version: v3.28.0\n", &Expect::Word("v3.28.0".into())),
            Ok("goose version: v3.28.0".into())
        );
        assert!(satisfies("goose version: v3.28.0", &Expect::Word("v3.2.0".into())).is_err());
        assert!(
            satisfies(
                "ponix-writer 0.1.0\n",
                &Expect::Exactly("ponix-writer 0.1.0".into())
            )
            .is_ok()
        );
        assert!(
            satisfies(
                "ponix-writer 0.1.1\n",
                &Expect::Exactly("ponix-writer 0.1.0".into())
            )
            .is_err()
        );
        let help = Expect::Contains(vec!["ponix-writer migrate".into(), "PONIX_NATS_URL".into()]);
        assert_eq!(
            satisfies(
                "ponix-writer migrate\n PONIX_NATS_URL PONIX_X PONIX_X",
                &help
            ),
            Ok("all 2 expected names; 2 PONIX_ variables listed".into())
        );
        assert_eq!(
            satisfies("ponix-writer check\nPONIX_NATS_URL", &help),
            Err("missing: ponix-writer migrate".into())
        );
    }

    #[test]
    fn directories_are_compared_byte_for_byte() {
        let base = std::env::temp_dir().join(format!("ponix-image-compare-{}", std::process::id()));
        let (ours, theirs) = (base.join("ours"), base.join("theirs"));
        for dir in [&ours, &theirs] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("1.sql"), "select 1;").unwrap();
        }
        let expected = vec!["1.sql".to_owned()];
        assert!(compare_dirs(&ours, &theirs, &expected).unwrap().ok);
        fs::write(theirs.join("1.sql"), "select 2;").unwrap();
        let outcome = compare_dirs(&ours, &theirs, &expected).unwrap();
        assert_eq!(outcome.observed, "1.sql differs");
        fs::write(theirs.join("1.sql"), "select 1;").unwrap();
        fs::write(theirs.join("2.sql"), "").unwrap();
        let outcome = compare_dirs(&ours, &theirs, &expected).unwrap();
        assert!(!outcome.ok);
        assert_eq!(outcome.observed, "2.sql is not in migrations/");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_table_has_a_row_per_check() {
        let checks = verification(&inputs(), "w:1", None, false).checks;
        let rows = vec![
            (
                &checks[0],
                Outcome {
                    ok: true,
                    observed: "ponix-writer 0.1.0".into(),
                },
            ),
            (
                &checks[1],
                Outcome {
                    ok: false,
                    observed: "missing: x".into(),
                },
            ),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains(" ok ") && lines[1].ends_with("ponix-writer 0.1.0"));
        assert!(lines[2].contains(" FAILED ") && lines[2].ends_with("missing: x"));
    }
}
