//! Command-line flags. `cargo xtask` with no arguments lists the commands.
//! A flag that chooses among fixed values parses into its enum, so a typo fails
//! before anything runs and lists the choices.

use localenv::local::Engine;

use crate::choices::{Backend, DrillChoice, ImageSource, Payload, Platforms, TestBackend};

xflags::xflags! {
    src "./src/flags.rs"

    /// The project's harness: tools, local infrastructure, tests, drills and images.
    cmd xtask {
        /// Install the pinned tools (goose, nats-server, the chDB endpoint's virtualenv) into .tools/.
        cmd tools {}

        /// Start NATS and a ClickHouse endpoint as local processes and print their addresses.
        cmd up {
            /// ClickHouse engine: `chdb` (default where no `clickhouse` binary is on PATH) or `server`.
            optional --clickhouse engine: Engine
            /// Run NATS as a JetStream cluster of this many nodes (3 to 5; default: one server).
            optional --nats-cluster nodes: usize
        }

        /// Run every check end to end against real NATS and ClickHouse (the README's test command).
        cmd e2e {
            /// `local` processes (default: every check) or `compose` (the stack with the writer in its container: pipeline, snapshots, compose-fault drills).
            optional --backend backend: Backend
            /// ClickHouse engine for the local backend: `chdb` or `server`.
            optional --clickhouse engine: Engine
        }

        /// Run the failure drills, each against a NATS and ClickHouse of its own, and print their table.
        cmd drill {
            /// clickhouse-down, clickhouse-hang, nats-restart, nats-failover, writer-kill, poison, schema-drift, backlog, long-outage, replicas, rolling-migration, migration-crash, or all.
            required name: DrillChoice
            /// Envelopes per drill (default 10,000; backlog publishes 20 times as many).
            optional --messages messages: u64
            /// Where each drill's NATS and ClickHouse run: `local` processes (default), `containers` (testcontainers) or `compose`.
            optional --backend backend: TestBackend
        }

        /// Run the integration tests and the drills with their private NATS and ClickHouse in containers (needs a Docker engine).
        cmd test-containers {
            /// `containers` (testcontainers; default) or `compose` (a compose project per instance).
            optional --backend backend: TestBackend
            /// Envelopes per drill (default 2,000).
            optional --messages messages: u64
        }

        /// Measure the writer end to end against the raw JetStream and ClickHouse rates on the same data (local backend, release build).
        cmd bench {
            /// 100,000 envelopes instead of 1,000,000.
            optional --quick
            /// Envelopes in the backlog (overrides --quick).
            optional --messages messages: u64
            /// Envelope payload: small (5 fields), medium (30, nested; default) or large (200).
            optional --payload payload: Payload
            /// Length of the fixed-rate latency phase (default 30).
            optional --latency-seconds seconds: u64
            /// ClickHouse engine for the local backend: `chdb` or `server`.
            optional --clickhouse engine: Engine
        }

        /// Fuzz the decode path (fuzz/, cargo-fuzz on stable) for a while; fails on a crash, naming the input.
        cmd fuzz {
            /// How long to run, in seconds (default 60).
            optional --seconds seconds: u64
        }

        /// Run the pipeline locally: infrastructure, migrations, the writer and its demo producer.
        cmd dev {
            /// `compose` (needs a Docker engine and the compose plugin) or `local` processes; default: compose where both answer.
            optional --backend backend: Backend
            /// ClickHouse engine for the local backend: `chdb` or `server`.
            optional --clickhouse engine: Engine
            /// Milliseconds between demo envelopes (default 200).
            optional --interval-ms interval: u64
            /// Exit successfully once this many rows are stored (a smoke test), instead of running until Ctrl-C.
            optional --until-rows rows: u64
        }

        /// Stop exactly the processes `up` started, and delete their data.
        cmd down {
            /// Keep the NATS store and ClickHouse data directories.
            optional --keep
        }

        /// Build the writer's container image, check it for real (inside it and against a running stack), print its size.
        cmd image {
            /// Repository name without a tag (default: ponix-writer), placed under --registry.
            optional --name name: String
            /// Registry and namespace for the tags, such as ghcr.io/acme (needed by --push).
            optional --registry registry: String
            /// Target platform(s): linux/amd64, linux/arm64, or both comma-separated (needs --push).
            optional --platform platform: Platforms
            /// Push both tags to --registry after the checks pass.
            optional --push
            /// Print the tags and every command without running any (no Docker engine needed).
            optional --dry-run
            /// Build the writer with cargo on this machine and copy it and .tools/bin/goose into the image
            /// (target runtime-prebuilt). The default when RUST_IMAGE is not present locally.
            optional --from-host
            /// Build the writer inside RUST_IMAGE (target runtime, pulled when missing).
            optional --from-source
        }

        /// Lint the deploy files: workflows (actionlint), Dockerfile (hadolint), compose schema, pins.
        cmd lint {}

        /// Make sure a Docker engine answers (installing and starting one on Debian as root), with the pinned compose and buildx plugins and the images (official, or local stand-ins where no registry answers).
        cmd docker {
            /// Where images come from: `auto` (default: official where they can be pulled), `local` stand-ins, or `official`.
            optional --images source: ImageSource
            /// Only the engine and the plugins.
            optional --no-images
            /// Stop the dockerd this command started, failing if any container is left.
            optional --stop
        }
    }
}

impl Xtask {
    /// The command list, printed by a bare `cargo xtask`.
    pub const HELP: &'static str = Self::HELP_;
}

// generated start
// The following code is generated by `xflags` macro.
// Run `env UPDATE_XFLAGS=1 cargo build` to regenerate.
#[derive(Debug)]
pub struct Xtask {
    pub subcommand: XtaskCmd,
}

#[derive(Debug)]
pub enum XtaskCmd {
    Tools(Tools),
    Up(Up),
    E2e(E2e),
    Drill(Drill),
    TestContainers(TestContainers),
    Bench(Bench),
    Fuzz(Fuzz),
    Dev(Dev),
    Down(Down),
    Image(Image),
    Lint(Lint),
    Docker(Docker),
}

#[derive(Debug)]
pub struct Tools;

#[derive(Debug)]
pub struct Up {
    pub clickhouse: Option<Engine>,
    pub nats_cluster: Option<usize>,
}

#[derive(Debug)]
pub struct E2e {
    pub backend: Option<Backend>,
    pub clickhouse: Option<Engine>,
}

#[derive(Debug)]
pub struct Drill {
    pub name: DrillChoice,

    pub messages: Option<u64>,
    pub backend: Option<TestBackend>,
}

#[derive(Debug)]
pub struct TestContainers {
    pub backend: Option<TestBackend>,
    pub messages: Option<u64>,
}

#[derive(Debug)]
pub struct Bench {
    pub quick: bool,
    pub messages: Option<u64>,
    pub payload: Option<Payload>,
    pub latency_seconds: Option<u64>,
    pub clickhouse: Option<Engine>,
}

#[derive(Debug)]
pub struct Fuzz {
    pub seconds: Option<u64>,
}

#[derive(Debug)]
pub struct Dev {
    pub backend: Option<Backend>,
    pub clickhouse: Option<Engine>,
    pub interval_ms: Option<u64>,
    pub until_rows: Option<u64>,
}

#[derive(Debug)]
pub struct Down {
    pub keep: bool,
}

#[derive(Debug)]
pub struct Image {
    pub name: Option<String>,
    pub registry: Option<String>,
    pub platform: Option<Platforms>,
    pub push: bool,
    pub dry_run: bool,
    pub from_host: bool,
    pub from_source: bool,
}

#[derive(Debug)]
pub struct Lint;

#[derive(Debug)]
pub struct Docker {
    pub images: Option<ImageSource>,
    pub no_images: bool,
    pub stop: bool,
}

impl Xtask {
    #[allow(dead_code)]
    pub fn from_env_or_exit() -> Self {
        Self::from_env_or_exit_()
    }

    #[allow(dead_code)]
    pub fn from_env() -> xflags::Result<Self> {
        Self::from_env_()
    }

    #[allow(dead_code)]
    pub fn from_vec(args: Vec<std::ffi::OsString>) -> xflags::Result<Self> {
        Self::from_vec_(args)
    }
}
// generated end
