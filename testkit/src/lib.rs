//! Test support for the workspace.
//!
//! - [`endpoints`]: finds the NATS and ClickHouse endpoints that `cargo xtask up`
//!   started (from the environment or `.tools/run/endpoints.env`).
//! - [`harness`]: the `main` of integration-test binaries. Without endpoints the
//!   tests are reported as ignored, with the command that runs them; under
//!   `cargo xtask e2e` (`PONIX_REQUIRE_INFRA=1`) missing endpoints fail instead.
//! - [`infra`]: RAII handles that stop, freeze and restart ClickHouse and NATS,
//!   either private instances a test starts for itself (local processes, or
//!   containers with `PONIX_TEST_BACKEND=containers|compose`) or the shared ones.
//! - [`pki`]: certificates made at test time, and an HTTPS probe.
//! - [`snapshot`]: the insta settings with the one shared redaction table.
//! - [`strategies`]: the one module of proptest strategies.
//! - [`writer`]: the writer process, with waits for a Tokio runtime.

pub mod cluster;
pub mod endpoints;
pub mod harness;
pub mod infra;
pub mod pki;
pub mod snapshot;
pub mod strategies;
pub mod writer;

pub use endpoints::Endpoints;
/// The local backend's process control and probes, for tests that need them directly.
pub use localenv;
