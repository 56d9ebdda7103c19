//! `cargo xtask tools`: installs the pinned tools into `.tools/`.
//!
//! Each step is a no-op when the pinned version is already there, and replaces
//! whatever other version it finds.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;
use crate::pins::Pins;
use localenv::Layout;
use localenv::local::find_on_path;

/// Build tags that leave out every goose driver except ClickHouse's.
const GOOSE_BUILD_TAGS: &str = "no_postgres no_mysql no_sqlite3 no_mssql no_vertica no_ydb \
                                no_libsql no_duckdb no_spanner no_redshift no_starrocks no_turso";

impl flags::Tools {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        install_all(sh, &layout)
    }
}

pub fn install_all(sh: &Shell, layout: &Layout) -> anyhow::Result<()> {
    let pins = install_runtime(sh, layout)?;
    crate::tools_lint::install_linters(sh, layout, &pins)
        .context("installing the deploy-file linters")?;
    crate::tools_fuzz::install_cargo_fuzz(sh, layout, &pins).context("installing cargo-fuzz")?;
    eprintln!("tools ready in {}", layout.tools_dir().display());
    Ok(())
}

/// What the local backend needs to run the pipeline (goose, nats-server, the chDB
/// endpoint), without the linters and fuzzer: `cargo xtask bench` installs only these.
pub fn install_runtime(sh: &Shell, layout: &Layout) -> anyhow::Result<Pins> {
    let pins = Pins::load(layout)?;
    fs::create_dir_all(layout.bin_dir())
        .with_context(|| format!("creating {}", layout.bin_dir().display()))?;
    install_goose(sh, layout, &pins).context("installing goose")?;
    install_nats_server(sh, layout, &pins).context("installing nats-server")?;
    install_python_env(sh, layout).context("installing the chDB endpoint's virtualenv")?;
    Ok(pins)
}

fn install_goose(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let version = pins.goose_version()?;
    let goose = GoTool {
        name: "goose",
        version,
        package: "github.com/pressly/goose/v3/cmd/goose",
        build_tags: GOOSE_BUILD_TAGS,
        binary: &layout.goose(),
        version_flag: "--version",
    };
    install_go_tool(sh, layout, &goose, || {
        download_goose_release(sh, layout, pins, version)
    })
}

/// A tool built from its source with `go install` into `.tools/bin`.
pub(crate) struct GoTool<'a> {
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
pub(crate) fn install_go_tool(
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

/// Without Go: the release binary for this platform, checked against the pinned sum.
fn download_goose_release(
    sh: &Shell,
    layout: &Layout,
    pins: &Pins,
    version: &str,
) -> anyhow::Result<()> {
    let (asset, sum_key) = goose_release_asset(std::env::consts::OS, std::env::consts::ARCH)?;
    let Some(expected) = pins.get_opt(sum_key) else {
        bail!(
            "Go is not installed and pins.env has no {sum_key} to verify a downloaded goose; \
             install Go (then re-run `cargo xtask tools`) or place goose {version} at {}",
            layout.goose().display()
        );
    };
    let url = format!("https://github.com/pressly/goose/releases/download/{version}/{asset}");
    let partial = layout.bin_dir().join("goose.download");
    eprintln!("[tools] goose {version}: downloading {url} ...");
    cmd!(
        sh,
        "curl --fail --silent --show-error --location --output {partial} {url}"
    )
    .run()
    .with_context(|| format!("downloading {url}; install curl, or Go to build goose instead"))?;
    let actual = sha256(sh, &partial)?;
    if actual != expected {
        let _ = fs::remove_file(&partial);
        bail!("checksum mismatch for {asset}: expected {expected}, got {actual}");
    }
    make_executable(&partial)?;
    fs::rename(&partial, layout.goose())?;
    Ok(())
}

fn goose_release_asset(os: &str, arch: &str) -> anyhow::Result<(&'static str, &'static str)> {
    Ok(match (os, arch) {
        ("linux", "x86_64") => ("goose_linux_x86_64", "GOOSE_SHA256_LINUX_X86_64"),
        ("linux", "aarch64") => ("goose_linux_arm64", "GOOSE_SHA256_LINUX_ARM64"),
        ("macos", "x86_64") => ("goose_darwin_x86_64", "GOOSE_SHA256_DARWIN_X86_64"),
        ("macos", "aarch64") => ("goose_darwin_arm64", "GOOSE_SHA256_DARWIN_ARM64"),
        _ => bail!("no goose release binary for {os}/{arch}: install Go to build it"),
    })
}

fn sha256(sh: &Shell, path: &Path) -> anyhow::Result<String> {
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

fn install_nats_server(sh: &Shell, layout: &Layout, pins: &Pins) -> anyhow::Result<()> {
    let version = pins.nats_server_version()?;
    let binary = layout.nats_server();
    let nats = GoTool {
        name: "nats-server",
        version,
        package: "github.com/nats-io/nats-server/v2",
        build_tags: "",
        binary: &binary,
        version_flag: "--version",
    };
    install_go_tool(sh, layout, &nats, || {
        bail!(
            "Go is needed to build nats-server {version}: install Go, or place nats-server \
             {version} at {}",
            binary.display()
        )
    })
}

/// The venv is rebuilt whenever requirements.txt differs from the copy stored in it.
fn install_python_env(sh: &Shell, layout: &Layout) -> anyhow::Result<()> {
    let requirements_path = layout.python_requirements();
    let requirements = fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let venv = layout.venv_dir();
    let stamp = venv.join("requirements.installed.txt");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(requirements.as_str())
        && layout.venv_python().exists()
    {
        eprintln!(
            "[tools] python virtualenv (chdb-core, lz4, clickhouse-cityhash): already installed"
        );
        return Ok(());
    }
    let python = find_on_path("python3").context(
        "python3 not found: install Python 3.9+ with venv support (Debian: apt-get install python3-venv)",
    )?;
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing stale {}", venv.display()))?;
    }
    let started = Instant::now();
    eprintln!(
        "[tools] python virtualenv: creating {} and installing pinned packages (about 200 MB) ...",
        venv.display()
    );
    cmd!(sh, "{python} -m venv {venv}")
        .run()
        .context("creating the virtualenv failed: install python3-venv (Debian: apt-get install python3-venv)")?;
    let venv_python = layout.venv_python();
    cmd!(sh, "{venv_python} -m pip install --quiet --disable-pip-version-check --no-input --requirement {requirements_path}")
        .run()
        .context("pip could not install the pinned packages; check that PyPI is reachable")?;
    cmd!(
        sh,
        "{venv_python} -c 'import chdb, lz4.block, clickhouse_cityhash.cityhash'"
    )
    .quiet()
    .run()
    .context("the virtualenv was built but chdb/lz4/clickhouse_cityhash do not import")?;
    fs::write(&stamp, requirements)?;
    eprintln!(
        "[tools] python virtualenv: installed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// `binary flag` output, or `None` when the binary is missing or fails.
pub(crate) fn installed_version(sh: &Shell, binary: &Path, flag: &str) -> Option<String> {
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
pub(crate) fn reports(output: &str, version: &str) -> bool {
    output
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|word| word == version)
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
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
        assert!(reports("Haskell Dockerfile Linter 2.15.1\n", "2.15.1"));
        assert!(reports("check-jsonschema, version 0.39.0\n", "0.39.0"));
        assert!(!reports("v1.7.12", "v1.7.1"));
    }

    #[test]
    fn release_assets_cover_the_supported_platforms() {
        assert_eq!(
            goose_release_asset("linux", "x86_64").unwrap().0,
            "goose_linux_x86_64"
        );
        assert_eq!(
            goose_release_asset("macos", "aarch64").unwrap().1,
            "GOOSE_SHA256_DARWIN_ARM64"
        );
        assert!(goose_release_asset("windows", "x86_64").is_err());
    }
}
