//! `--from-host`: the writer built with cargo on this machine and staged with the
//! pinned goose for the Dockerfile's `runtime-prebuilt` target. For machines where
//! the Rust toolchain cannot run inside a builder container (no rust image, no
//! registry). The binaries are linked against this machine's glibc, so the runtime
//! image must carry the same or a newer one (ponix-local/debian:bookworm does).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use localenv::Layout;

use super::cmd::Cmd;

/// Where the binaries are staged, relative to the root: the named context
/// `prebuilt`, or the part of the main context the Dockerfile's `prebuilt` stage reads.
pub const STAGING_DIR: &str = ".tools/docker/prebuilt";
/// Where the migrations check copies /app/migrations to.
pub const MIGRATIONS_COPY: &str = ".tools/docker/image-check/migrations";
/// The platform binaries built here run on.
pub const PLATFORM: &str = if cfg!(target_arch = "aarch64") {
    "linux/arm64"
} else {
    "linux/amd64"
};

/// `cargo build --release` of the writer, with the commit it reports.
pub fn cargo_build(revision: &str) -> Cmd {
    Cmd {
        program: "cargo",
        env: vec![("PONIX_BUILD_COMMIT".into(), revision.into())],
        args: [
            "build",
            "--release",
            "--locked",
            "--package",
            "ponix-writer",
        ]
        .map(String::from)
        .to_vec(),
    }
}

/// The staged binaries; the directory is removed when this is dropped, so that a
/// later `--from-source` build context does not carry them.
pub struct Staged {
    pub dir: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("[image] could not remove {}: {err}", self.dir.display());
        }
    }
}

/// Copies the release binary and .tools/bin/goose into [`STAGING_DIR`].
pub fn stage(layout: &Layout) -> anyhow::Result<Staged> {
    let writer = target_dir(layout).join("release").join("ponix-writer");
    let goose = layout.goose();
    if !goose.exists() {
        bail!(
            "{} not found: run `cargo xtask tools` (it builds the pinned goose)",
            goose.display()
        );
    }
    if !writer.exists() {
        bail!(
            "{} not found after `cargo build --release`",
            writer.display()
        );
    }
    let dir = layout.root.join(STAGING_DIR);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let staged = Staged { dir };
    for (from, name) in [(&writer, "ponix-writer"), (&goose, "goose")] {
        copy(from, &staged.dir.join(name))?;
    }
    Ok(staged)
}

/// A copy (symlinks followed) with the mode kept: the binaries stay executable.
fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// cargo's target directory: CARGO_TARGET_DIR when set, else `<root>/target`.
fn target_dir(layout: &Layout) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => layout.root.join(dir),
        None => layout.root.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_copies_both_binaries_and_cleans_up() {
        let root = std::env::temp_dir().join(format!("ponix-image-stage-{}", std::process::id()));
        let layout = Layout::new(&root);
        let release = target_dir(&layout).join("release");
        fs::create_dir_all(&release).unwrap();
        fs::create_dir_all(layout.bin_dir()).unwrap();
        let err = stage(&layout).err().unwrap().to_string();
        assert!(err.contains("cargo xtask tools"), "{err}");
        fs::write(layout.goose(), "goose").unwrap();
        fs::write(release.join("ponix-writer"), "writer").unwrap();
        let dir = {
            let staged = stage(&layout).unwrap();
            assert_eq!(
                fs::read_to_string(staged.dir.join("ponix-writer")).unwrap(),
                "writer"
            );
            assert_eq!(
                fs::read_to_string(staged.dir.join("goose")).unwrap(),
                "goose"
            );
            staged.dir.clone()
        };
        assert!(!dir.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
