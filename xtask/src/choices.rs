//! The fixed values that xtask's flags choose among, parsed with `FromStr` so that
//! xflags rejects a typo before anything runs, naming the choices. A leaf module:
//! it uses nothing else of xtask, so both flags.rs and the commands can use it.

use anyhow::{Context, bail};

/// `--backend`: where NATS and ClickHouse run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Compose,
    Local,
}

/// `--backend compose` or `--backend local`.
impl std::str::FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(choice: &str) -> anyhow::Result<Backend> {
        match choice {
            "compose" => Ok(Backend::Compose),
            "local" => Ok(Backend::Local),
            other => bail!("unknown backend {other:?}: expected `compose` or `local`"),
        }
    }
}

/// `cargo xtask docker --images`: where the container images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// Official where `docker pull` works, local stand-ins otherwise.
    Auto,
    Local,
    Official,
}

impl std::str::FromStr for ImageSource {
    type Err = anyhow::Error;

    fn from_str(choice: &str) -> anyhow::Result<ImageSource> {
        match choice {
            "auto" => Ok(ImageSource::Auto),
            "local" => Ok(ImageSource::Local),
            "official" => Ok(ImageSource::Official),
            other => {
                bail!("unknown image source {other:?}: expected `auto`, `local` or `official`")
            }
        }
    }
}

/// `cargo xtask drill --backend`: where testkit starts the drills' private instances
/// (its `PONIX_TEST_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Local,
    Containers,
    Compose,
}

impl TestBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            TestBackend::Local => "local",
            TestBackend::Containers => "containers",
            TestBackend::Compose => "compose",
        }
    }
}

impl std::str::FromStr for TestBackend {
    type Err = anyhow::Error;

    fn from_str(choice: &str) -> anyhow::Result<TestBackend> {
        [
            TestBackend::Local,
            TestBackend::Containers,
            TestBackend::Compose,
        ]
        .into_iter()
        .find(|backend| backend.as_str() == choice)
        .with_context(|| {
            format!("unknown backend {choice:?}: expected `local`, `containers` or `compose`")
        })
    }
}

/// `--payload`: the envelope shape the bench publishes (ponix-bench's own flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Payload {
    Small,
    #[default]
    Medium,
    Large,
}

impl Payload {
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Small => "small",
            Payload::Medium => "medium",
            Payload::Large => "large",
        }
    }
}

impl std::str::FromStr for Payload {
    type Err = anyhow::Error;

    fn from_str(choice: &str) -> anyhow::Result<Payload> {
        [Payload::Small, Payload::Medium, Payload::Large]
            .into_iter()
            .find(|payload| payload.as_str() == choice)
            .with_context(|| {
                format!("unknown payload {choice:?}: expected `small`, `medium` or `large`")
            })
    }
}

/// Every drill, in the order `all` runs them.
pub const DRILLS: &[&str] = &[
    "clickhouse-down",
    "clickhouse-hang",
    "nats-restart",
    "nats-failover",
    "writer-kill",
    "poison",
    "schema-drift",
    "backlog",
    "long-outage",
    "replicas",
    "rolling-migration",
    "migration-crash",
];

/// `cargo xtask drill NAME`: one of [`DRILLS`], or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillChoice {
    All,
    One(&'static str),
}

impl std::str::FromStr for DrillChoice {
    type Err = anyhow::Error;

    fn from_str(choice: &str) -> anyhow::Result<DrillChoice> {
        if choice == "all" {
            return Ok(DrillChoice::All);
        }
        match DRILLS.iter().find(|name| **name == choice) {
            Some(name) => Ok(DrillChoice::One(name)),
            None => bail!(
                "unknown drill {choice:?}: expected `all` or one of {}",
                DRILLS.join(", ")
            ),
        }
    }
}

/// `--platform`: linux/amd64, linux/arm64, or both comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platforms(pub Vec<String>);

impl std::str::FromStr for Platforms {
    type Err = anyhow::Error;

    fn from_str(flag: &str) -> anyhow::Result<Platforms> {
        parse_platforms(Some(flag)).map(Platforms)
    }
}

/// `--platform linux/amd64,linux/arm64` → both; none → the engine's own.
pub fn parse_platforms(flag: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(flag) = flag else {
        return Ok(Vec::new());
    };
    let platforms: Vec<String> = flag.split(',').map(str::trim).map(str::to_owned).collect();
    for platform in &platforms {
        if !matches!(platform.as_str(), "linux/amd64" | "linux/arm64") {
            bail!(
                "unsupported platform {platform:?}: goose is pinned for linux/amd64 and \
                 linux/arm64 only (pins.env)"
            );
        }
    }
    Ok(platforms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse() {
        assert_eq!("local".parse::<Backend>().unwrap(), Backend::Local);
        assert_eq!("compose".parse::<Backend>().unwrap(), Backend::Compose);
        assert!("kubernetes".parse::<Backend>().is_err());
    }

    #[test]
    fn test_backends_parse() {
        for backend in [
            TestBackend::Local,
            TestBackend::Containers,
            TestBackend::Compose,
        ] {
            assert_eq!(backend.as_str().parse::<TestBackend>().unwrap(), backend);
        }
        let err = "docker".parse::<TestBackend>().unwrap_err().to_string();
        assert!(err.contains("`containers`"), "{err}");
    }

    #[test]
    fn payload_names_round_trip() {
        for payload in [Payload::Small, Payload::Medium, Payload::Large] {
            assert_eq!(payload.as_str().parse::<Payload>().unwrap(), payload);
        }
        assert!("huge".parse::<Payload>().is_err());
        assert_eq!(Payload::default(), Payload::Medium);
    }

    #[test]
    fn the_drill_name_is_one_of_the_drills_or_all() {
        assert_eq!("all".parse::<DrillChoice>().unwrap(), DrillChoice::All);
        assert_eq!(
            "poison".parse::<DrillChoice>().unwrap(),
            DrillChoice::One("poison")
        );
        let err = "poisson".parse::<DrillChoice>().unwrap_err().to_string();
        assert!(err.contains("clickhouse-down"), "{err}");
    }

    #[test]
    fn platforms_are_the_pinned_goose_architectures() {
        assert_eq!(parse_platforms(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_platforms(Some("linux/amd64, linux/arm64")).unwrap(),
            ["linux/amd64", "linux/arm64"]
        );
        assert!(parse_platforms(Some("linux/riscv64")).is_err());
        assert!(parse_platforms(Some("windows/amd64")).is_err());
    }
}
