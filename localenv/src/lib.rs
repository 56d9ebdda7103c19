//! The local backend, shared by xtask (which starts and stops it) and testkit
//! (which finds it, and freezes or restarts its processes in failure drills).
//! Blocking and light on dependencies (nix, ureq without TLS), so that xtask stays
//! quick to compile.

pub mod cluster;
pub mod interrupt;
pub mod layout;
pub mod local;
pub mod net;
pub mod process;
pub mod text;

pub use layout::Layout;
