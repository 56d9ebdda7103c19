//! Where things live: the project-local, git-ignored tools directory and its layout.

use std::path::{Path, PathBuf};

/// Everything `cargo xtask` installs or starts lives under `<root>/.tools/`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// The layout of the workspace this crate was built in.
    pub fn workspace() -> Self {
        // This crate sits at <root>/localenv.
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        Layout::new(manifest_dir.parent().unwrap_or(manifest_dir))
    }

    pub fn tools_dir(&self) -> PathBuf {
        self.root.join(".tools")
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.tools_dir().join("bin")
    }
    pub fn goose(&self) -> PathBuf {
        self.bin_dir().join("goose")
    }
    pub fn nats_server(&self) -> PathBuf {
        self.bin_dir().join("nats-server")
    }
    pub fn venv_dir(&self) -> PathBuf {
        self.tools_dir().join("venv")
    }
    pub fn venv_python(&self) -> PathBuf {
        self.venv_dir().join("bin").join("python")
    }
    pub fn chdb_server_dir(&self) -> PathBuf {
        self.root.join("xtask").join("chdb_server")
    }
    pub fn python_requirements(&self) -> PathBuf {
        self.chdb_server_dir().join("requirements.txt")
    }
    /// State of the processes `up` started: pid files, argv files and the env file.
    pub fn run_dir(&self) -> PathBuf {
        self.tools_dir().join("run")
    }
    /// The Docker host's state: dockerd's log and pid, and images.env.
    pub fn docker_dir(&self) -> PathBuf {
        self.tools_dir().join("docker")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.tools_dir().join("logs")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.tools_dir().join("data")
    }
    /// Shell `export` lines for the running endpoints; tests read it too.
    pub fn env_file(&self) -> PathBuf {
        self.run_dir().join("endpoints.env")
    }
    pub fn migrations_dir(&self) -> PathBuf {
        self.root.join("migrations")
    }
    pub fn pins_file(&self) -> PathBuf {
        self.root.join("pins.env")
    }
}
