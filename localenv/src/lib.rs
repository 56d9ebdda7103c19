//! The local backend, shared by xtask (which starts and stops it) and testkit
//! (which finds it, and freezes or restarts its processes in failure drills), and
//! the one way to run the writer binary and goose, read pins.env and the env files, and
//! choose the container images.
//! Blocking and light on dependencies (nix, ureq without TLS), so that xtask stays
//! quick to compile.

pub mod cluster;
pub mod env_file;
pub mod goose;
pub mod images;
pub mod interrupt;
pub mod layout;
pub mod local;
pub mod nats;
pub mod net;
pub mod pins;
pub mod process;
pub mod text;
pub mod writer;

pub use layout::Layout;
