//! The installer core that every tool family uses: a Go tool built at its pinned
//! version, a virtualenv rebuilt when what it was built from changes, and the
//! version checks that make each step a no-op once the pinned version is there.
//! It knows no tool by name.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::local::find_on_path;
use xshell::{Shell, cmd};

/// A tool built from its source with `go install` into `.tools/bin`.
pub struct GoTool<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// The package path without `@version`.
    pub package: &'a str,
    /// Space-separated, or empty.
    pub build_tags: &'a str,
    pub binary: &'a Path,
    /// The flag that makes the binary print its version.
    pub version_flag: &'a str,
}

/// Installs `tool` at its pinned version unless it is already there: with `go
/// install` where Go is on PATH, else with `without_go` (which may fail with what to
/// do instead). Either way the installed binary must report the pinned version.
pub fn install_go_tool(
    sh: &Shell,
    layout: &Layout,
    tool: &GoTool,
    without_go: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let GoTool {
        name,
        version,
        package,
        build_tags,
        binary,
        version_flag,
    } = *tool;
    if installed_version(sh, binary, version_flag).is_some_and(|out| reports(&out, version)) {
        eprintln!("[tools] {name} {version}: already installed");
        return Ok(());
    }
    let started = Instant::now();
    if find_on_path("go").is_some() {
        eprintln!("[tools] {name} {version}: building with `go install` (about a minute) ...");
        let tags: &[&str] = if build_tags.is_empty() {
            &[]
        } else {
            &["-tags", build_tags]
        };
        let versioned = format!("{package}@{version}");
        cmd!(sh, "go install {tags...} {versioned}")
            .env("GOBIN", layout.bin_dir())
            .run()
            .with_context(|| {
                format!("`go install` of {name} failed; check that Go and the Go module proxy are reachable")
            })?;
    } else {
        without_go()?;
    }
    let reported = installed_version(sh, binary, version_flag).unwrap_or_default();
    if !reports(&reported, version) {
        bail!("installed {name} reports {reported:?}, expected {version}");
    }
    eprintln!(
        "[tools] {name} {version}: installed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// A virtualenv of pinned PyPI packages under `.tools/`, rebuilt from scratch
/// whenever `recipe` (what it is built from) differs from the copy stored in it.
pub struct Venv<'a> {
    /// What the messages call it.
    pub label: &'a str,
    pub dir: PathBuf,
    /// The file in `dir` that stores the recipe it was built from.
    pub stamp: &'a str,
    pub recipe: String,
    /// `pip install` arguments after the common flags.
    pub pip_args: Vec<OsString>,
    /// Files a complete virtualenv has.
    pub expected: Vec<PathBuf>,
    /// Proves that what was installed works; run once after installing.
    pub check: &'a dyn Fn(&Shell) -> anyhow::Result<()>,
}

impl Venv<'_> {
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    pub fn install(&self, sh: &Shell) -> anyhow::Result<()> {
        let label = self.label;
        let stamp = self.dir.join(self.stamp);
        let complete = self.python().exists() && self.expected.iter().all(|path| path.exists());
        if complete && fs::read_to_string(&stamp).ok().as_deref() == Some(self.recipe.as_str()) {
            eprintln!("[tools] {label}: already installed");
            return Ok(());
        }
        let python = find_on_path("python3").context(
            "python3 not found: install Python 3.9+ with venv support (Debian: apt-get install python3-venv)",
        )?;
        let venv = &self.dir;
        if venv.exists() {
            fs::remove_dir_all(venv)
                .with_context(|| format!("removing stale {}", venv.display()))?;
        }
        let started = Instant::now();
        eprintln!("[tools] {label}: installing into {} ...", venv.display());
        cmd!(sh, "{python} -m venv {venv}")
            .run()
            .context("creating the virtualenv failed: install python3-venv (Debian: apt-get install python3-venv)")?;
        let venv_python = self.python();
        let pip_args = &self.pip_args;
        cmd!(sh, "{venv_python} -m pip install --quiet --disable-pip-version-check --no-input {pip_args...}")
            .run()
            .with_context(|| format!("pip could not install {label}; check that PyPI is reachable"))?;
        (self.check)(sh).with_context(|| format!("{label} was installed but does not work"))?;
        fs::write(&stamp, &self.recipe).with_context(|| format!("writing {}", stamp.display()))?;
        eprintln!("[tools] {label}: installed in {:.0?}", started.elapsed());
        Ok(())
    }
}

pub fn sha256(sh: &Shell, path: &Path) -> anyhow::Result<String> {
    let output = if find_on_path("sha256sum").is_some() {
        cmd!(sh, "sha256sum {path}").read()
    } else {
        cmd!(sh, "shasum -a 256 {path}").read()
    }
    .context("computing a SHA-256 (needs sha256sum or shasum)")?;
    Ok(output
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// `binary flag` output, or `None` when the binary is missing or fails.
pub fn installed_version(sh: &Shell, binary: &Path, flag: &str) -> Option<String> {
    if !binary.exists() {
        return None;
    }
    cmd!(sh, "{binary} {flag}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
}

/// True when `output` names exactly `version` as a whole word (v3.3.0 ≠ v3.30.0).
pub fn reports(output: &str, version: &str) -> bool {
    output
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|word| word == version)
}

pub fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_must_match_exactly() {
        assert!(reports("goose version: v3.30.0\n", "v3.30.0"));
        assert!(reports("nats-server: v2.15.2", "v2.15.2"));
        assert!(!reports("goose version: v3.30.0", "v3.3.0"));
        assert!(!reports("nats-server: v2.15.20", "v2.15.2"));
        assert!(reports(
            "v1.7.12\ninstalled by building from source\n",
            "v1.7.12"
        ));
        // The docker plugins' version lines.
        assert!(reports("Docker Compose version v5.6.0\n", "v5.6.0"));
        assert!(reports("github.com/docker/buildx v0.38.2 \n", "v0.38.2"));
        assert!(!reports("Docker Compose version dev\n", "v5.6.0"));
        assert!(!reports("Docker Compose version v5.6.01\n", "v5.6.0"));
        assert!(!reports("", "v5.6.0"));
        assert!(reports("Haskell Dockerfile Linter 2.15.1\n", "2.15.1"));
        assert!(reports("check-jsonschema, version 0.39.0\n", "0.39.0"));
        assert!(!reports("v1.7.12", "v1.7.1"));
    }

    #[test]
    fn a_venv_with_its_recipe_stored_is_not_rebuilt() {
        let dir = std::env::temp_dir().join(format!("xtask-venv-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin").join("python"), "").unwrap();
        fs::write(dir.join("stamp.txt"), "pkg==1\n").unwrap();
        let venv = Venv {
            label: "test venv",
            dir: dir.clone(),
            stamp: "stamp.txt",
            recipe: "pkg==1\n".to_owned(),
            pip_args: Vec::new(),
            expected: vec![dir.join("bin").join("python")],
            check: &|_| bail!("a complete venv is not checked again"),
        };
        let sh = Shell::new().unwrap();
        venv.install(&sh).unwrap();
        assert!(dir.join("stamp.txt").exists(), "nothing was rebuilt");
        let _ = fs::remove_dir_all(&dir);
    }
}
