//! The command line of one JetStream nats-server on loopback: what `up` starts, what
//! testkit's private servers start, and what each node of a local cluster extends.
//! A leaf, so that the single-server and the cluster code both build on it.

use std::ffi::OsString;
use std::path::Path;

use anyhow::bail;

use crate::layout::Layout;

pub fn nats_argv(layout: &Layout, port: u16, store_dir: &Path) -> anyhow::Result<Vec<OsString>> {
    let binary = layout.nats_server();
    if !binary.exists() {
        bail!(
            "nats-server not found at {}: run `cargo xtask tools`",
            binary.display()
        );
    }
    Ok(vec![
        binary.into(),
        "--addr".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string().into(),
        "--jetstream".into(),
        "--store_dir".into(),
        store_dir.into(),
    ])
}
