//! What the plan of `cargo xtask image` depends on, gathered before anything runs:
//! the image's name, version and commit, where the writer comes from, the pinned
//! build arguments and what the checks compare the image with.

use super::stack::StackImages;

/// Where the writer binary in the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built inside RUST_IMAGE: target `runtime`.
    Source,
    /// Built with cargo on this machine and staged with goose: target `runtime-prebuilt`.
    Host {
        /// Pass the staging directory as the named context `prebuilt` (BuildKit 0.10+);
        /// otherwise the Dockerfile reads it from the main context.
        named_context: bool,
    },
}

impl Origin {
    pub fn target(&self) -> &'static str {
        match self {
            Origin::Source => "runtime",
            Origin::Host { .. } => "runtime-prebuilt",
        }
    }
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
    pub source_url: String,
    /// Empty: the engine's own platform.
    pub platforms: Vec<String>,
    pub push: bool,
    pub origin: Origin,
    /// `(name, value)` for each of [`super::PINNED_BUILD_ARGS`].
    pub build_args: Vec<(String, String)>,
    pub goose_version: String,
    /// File names in migrations/, sorted.
    pub migrations: Vec<String>,
    /// The PONIX_* settings the writer gets in the stack (names only).
    pub writer_settings: Vec<String>,
    pub stack_images: StackImages,
    /// Names the containers and network of this run: `ponix-image-<run_id>-...`.
    pub run_id: String,
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn inputs() -> Inputs {
        Inputs {
            name: "ponix-writer".into(),
            version: "0.1.0".into(),
            revision: "ba160c674e59aa8c3a5a7c2e8f3e6d1f00112233".into(),
            dirty: false,
            source_url: "https://github.com/acme/ponix-writer".into(),
            platforms: Vec::new(),
            push: false,
            origin: Origin::Source,
            build_args: vec![
                ("RUST_IMAGE".into(), "rust:1.95.0-bookworm".into()),
                ("GOOSE_VERSION".into(), "v3.28.0".into()),
            ],
            goose_version: "v3.28.0".into(),
            migrations: vec!["1_init.sql".into(), "2_more.sql".into()],
            writer_settings: vec![
                "PONIX_CLICKHOUSE_DATABASE".into(),
                "PONIX_CLICKHOUSE_PASSWORD".into(),
            ],
            stack_images: StackImages {
                nats: "nats:2.15.0-alpine".into(),
                clickhouse: "clickhouse/clickhouse-server:25.8.3.66".into(),
            },
            run_id: "42".into(),
        }
    }
}
