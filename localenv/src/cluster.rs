//! A JetStream cluster of local nats-server processes: `cargo xtask up --nats-cluster
//! N` and the testkit's `NatsCluster` (which the `nats-failover` drill kills, freezes
//! and restarts node by node).
//!
//! Node `i` (1-based) is server `n<i>` of cluster [`CLUSTER_NAME`], with its own
//! store directory and three free loopback ports: clients, routes and monitoring
//! (HTTP). Every node lists the route URLs of all the others, so any node restarted
//! on its ports rejoins. A cluster is ready when every node answers a JetStream
//! account-info request and `/healthz`, and all of them name the same meta leader
//! in `/jsz`: only then can streams be created and placed.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};

use crate::layout::Layout;
use crate::nats::nats_argv;
use crate::net::READY_TIMEOUT;
use crate::net::{self, free_port, http_get, wait_until};
use crate::process::Recorded;

pub const CLUSTER_NAME: &str = "ponix";

/// The ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub client: u16,
    pub cluster: u16,
    pub monitor: u16,
}

impl NodePorts {
    pub fn free() -> anyhow::Result<NodePorts> {
        Ok(NodePorts {
            client: free_port()?,
            cluster: free_port()?,
            monitor: free_port()?,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client)
    }
}

/// The server name of node `index` (0-based): `n1`, `n2`, ...
pub fn server_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// The node a server name belongs to (0-based), if it is one of ours.
pub fn node_of(server_name: &str) -> Option<usize> {
    server_name
        .strip_prefix('n')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The comma-separated client URLs of every node, as `PONIX_NATS_URL` takes them.
pub fn urls(nodes: &[NodePorts]) -> String {
    nodes
        .iter()
        .map(NodePorts::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// The command line of node `index` of `nodes`.
pub fn node_argv(
    layout: &Layout,
    nodes: &[NodePorts],
    index: usize,
    store_dir: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let me = nodes.get(index).context("no such node")?;
    let mut argv = nats_argv(layout, me.client, store_dir)?;
    argv.extend(cluster_flags(nodes, index).into_iter().map(OsString::from));
    Ok(argv)
}

/// The flags that make node `index` a member of the cluster of `nodes`.
fn cluster_flags(nodes: &[NodePorts], index: usize) -> Vec<String> {
    let me = nodes[index];
    let routes: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(other, _)| *other != index)
        .map(|(_, node)| format!("nats://127.0.0.1:{}", node.cluster))
        .collect();
    vec![
        "--server_name".to_owned(),
        server_name(index),
        "--cluster_name".to_owned(),
        CLUSTER_NAME.to_owned(),
        "--cluster".to_owned(),
        format!("nats://127.0.0.1:{}", me.cluster),
        "--routes".to_owned(),
        routes.join(","),
        "--http_port".to_owned(),
        me.monitor.to_string(),
    ]
}

/// Waits until every running node in `nodes` answers (see the module docs). Nodes
/// whose process is `None` are down on purpose and not waited for, but the ones up
/// must still agree on a meta leader.
pub fn wait_ready(processes: &[Option<&Recorded>], nodes: &[NodePorts]) -> anyhow::Result<()> {
    wait_until(
        "the NATS cluster (JetStream on every node, one meta leader)",
        READY_TIMEOUT,
        || {
            let mut leaders = Vec::new();
            for (process, node) in processes.iter().zip(nodes) {
                let Some(process) = process else { continue };
                if !process.is_alive() {
                    bail!(
                        "{} exited; its log ends with:\n{}",
                        process.name,
                        process.log_tail(20)
                    );
                }
                net::nats_jetstream_ready(node.client)?;
                let health = http_get(node.monitor, "/healthz")?;
                if health.status != 200 {
                    bail!(
                        "{} /healthz: {} {}",
                        process.name,
                        health.status,
                        health.body
                    );
                }
                leaders.push(meta_leader(node.monitor)?);
            }
            match leaders.split_first() {
                Some((first, rest)) if rest.iter().all(|l| l == first) => Ok(()),
                Some(_) => bail!("the nodes disagree on the meta leader: {leaders:?}"),
                None => bail!("no node is running"),
            }
        },
    )
}

/// The meta leader a node names in `/jsz`; an error while there is none.
pub fn meta_leader(monitor_port: u16) -> anyhow::Result<String> {
    let jsz = http_get(monitor_port, "/jsz")?;
    let meta = jsz
        .body
        .split_once("\"meta_cluster\"")
        .map(|(_, rest)| rest)
        .context("/jsz has no meta_cluster: is the server clustered?")?;
    match json_string(meta, "leader") {
        Some(leader) if !leader.is_empty() => Ok(leader),
        _ => bail!("no meta leader elected yet"),
    }
}

/// The first string value of `"key"` in JSON text (nats-server's monitoring output
/// is flat enough for this; localenv stays without a JSON parser).
fn json_string(text: &str, key: &str) -> Option<String> {
    let (_, rest) = text.split_once(&format!("\"{key}\""))?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodePorts> {
        (0..3)
            .map(|i| NodePorts {
                client: 4000 + i,
                cluster: 5000 + i,
                monitor: 6000 + i,
            })
            .collect()
    }

    #[test]
    fn each_node_routes_to_the_others_and_names_itself() {
        let text = cluster_flags(&nodes(), 1);
        let flag = |name: &str| {
            let at = text.iter().position(|a| a == name).unwrap();
            text[at + 1].clone()
        };
        assert_eq!(flag("--server_name"), "n2");
        assert_eq!(flag("--cluster_name"), CLUSTER_NAME);
        assert_eq!(flag("--cluster"), "nats://127.0.0.1:5001");
        assert_eq!(
            flag("--routes"),
            "nats://127.0.0.1:5000,nats://127.0.0.1:5002"
        );
        assert_eq!(flag("--http_port"), "6001");
    }

    #[test]
    fn urls_name_every_node_and_names_map_back() {
        assert_eq!(
            urls(&nodes()),
            "nats://127.0.0.1:4000,nats://127.0.0.1:4001,nats://127.0.0.1:4002"
        );
        for index in 0..3 {
            assert_eq!(node_of(&server_name(index)), Some(index));
        }
        assert_eq!(node_of("other"), None);
        assert_eq!(node_of("n0"), None);
    }

    #[test]
    fn the_meta_leader_is_read_from_jsz() {
        let jsz = r#"{"server_id": "X", "meta_cluster": {"name": "ponix", "leader": "n2", "cluster_size": 3}}"#;
        let meta = jsz.split_once("\"meta_cluster\"").unwrap().1;
        assert_eq!(json_string(meta, "leader").as_deref(), Some("n2"));
        assert_eq!(
            json_string(r#"{"leader": ""}"#, "leader").as_deref(),
            Some("")
        );
        assert_eq!(json_string(r#"{"other": 1}"#, "leader"), None);
    }
}
