//! A private JetStream cluster for tests and drills that take NATS servers away one
//! at a time: [`NatsCluster::start`] runs `size` nodes (see [`localenv::cluster`]) in
//! a scratch directory of their own, deleted with them when the handle drops.
//!
//! Each [`Node`] can be SIGKILLed, stopped (SIGTERM), frozen (SIGSTOP) and resumed,
//! and started again on the same ports and store. Starting waits until the node is
//! back in the cluster: it answers JetStream, its `/healthz` is 200 (its streams
//! and consumers have caught up) and it names the meta leader. The handle also
//! answers which node leads a stream or a consumer (from JetStream's own cluster
//! info) and which node a client is connected to (from `/connz`). The calls that
//! wait block briefly; call them from `tokio::task::block_in_place` in async code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use localenv::Layout;
use localenv::cluster::{self, NodePorts};
use localenv::local::READY_TIMEOUT;
use localenv::net::{http_get, wait_until};
use localenv::process::Recorded;

const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NatsCluster {
    nodes: Vec<Node>,
    scratch: PathBuf,
}

/// One nats-server of the cluster.
pub struct Node {
    index: usize,
    ports: NodePorts,
    process: Recorded,
    /// Every node's ports: a node's readiness is judged against its peers.
    peers: Vec<NodePorts>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until they have elected a meta leader.
    pub fn start(size: usize) -> anyhow::Result<NatsCluster> {
        let layout = Layout::workspace();
        let scratch = crate::infra::scratch_dir("nats-cluster")?;
        let ports = (0..size)
            .map(|_| NodePorts::free())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut nodes = Vec::new();
        for index in 0..size {
            let name = format!("nats-{}", cluster::server_name(index));
            let argv =
                cluster::node_argv(&layout, &ports, index, &scratch.join(&name).join("store"))?;
            let log = scratch.join(format!("{name}.log"));
            let process = Recorded::spawn(&name, argv, &scratch, &log)?;
            nodes.push(Node {
                index,
                ports: ports[index],
                process,
                peers: ports.clone(),
            });
        }
        let cluster = NatsCluster { nodes, scratch };
        let processes: Vec<Option<&Recorded>> =
            cluster.nodes.iter().map(|n| Some(&n.process)).collect();
        cluster::wait_ready(&processes, &ports).with_context(|| {
            format!(
                "starting a NATS cluster of {size}:\n{}",
                cluster.log_tails(10)
            )
        })?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (`PONIX_NATS_URL`).
    pub fn url(&self) -> String {
        cluster::urls(&self.ports())
    }

    /// Every node's client URL, for a client's server list.
    pub fn urls(&self) -> Vec<String> {
        self.ports().iter().map(NodePorts::url).collect()
    }

    fn ports(&self) -> Vec<NodePorts> {
        self.nodes.iter().map(|n| n.ports).collect()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index]
    }

    /// The node leading `stream`'s replicas, from the stream's cluster info.
    pub async fn stream_leader(
        &self,
        js: &jetstream::Context,
        stream: &str,
    ) -> anyhow::Result<usize> {
        let mut handle = js
            .get_stream(stream)
            .await
            .with_context(|| format!("looking up stream {stream}"))?;
        let info = handle
            .info()
            .await
            .with_context(|| format!("stream {stream} info"))?;
        leader_node(info.cluster.as_ref(), &format!("stream {stream}"))
    }

    /// The node leading durable consumer `consumer` of `stream`.
    pub async fn consumer_leader(
        &self,
        js: &jetstream::Context,
        stream: &str,
        consumer: &str,
    ) -> anyhow::Result<usize> {
        let handle = js
            .get_stream(stream)
            .await
            .with_context(|| format!("looking up stream {stream}"))?;
        let info = handle
            .consumer_info(consumer)
            .await
            .with_context(|| format!("consumer {consumer} info"))?;
        leader_node(info.cluster.as_ref(), &format!("consumer {consumer}"))
    }

    /// The running nodes with a client connection named `name` (`/connz`); a frozen
    /// node does not answer and is left out.
    pub fn nodes_serving(&self, name: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|node| node.serves(name))
            .map(|node| node.index)
            .collect()
    }

    /// The end of every node's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|node| {
                format!(
                    "--- nats-server {} ---\n{}",
                    node.name(),
                    node.process.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn leader_node(info: Option<&jetstream::stream::ClusterInfo>, what: &str) -> anyhow::Result<usize> {
    let leader = info
        .and_then(|cluster| cluster.leader.clone())
        .with_context(|| format!("{what} has no leader right now"))?;
    cluster::node_of(&leader).with_context(|| {
        format!("{what} is led by {leader:?}, which is not a node of this cluster")
    })
}

impl Node {
    /// The server name, `n1`, `n2`, ...
    pub fn name(&self) -> String {
        cluster::server_name(self.index)
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    pub fn is_alive(&self) -> bool {
        self.process.is_alive()
    }

    /// SIGKILL, as a crash would. The node stays down until [`Node::start`].
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    /// SIGTERM (nats-server hands its leaderships over first), and wait for exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.process.stop(STOP_TIMEOUT)
    }

    /// SIGSTOP: the node keeps its sockets and answers nothing, to clients or peers.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.process.freeze()
    }

    pub fn resume(&self) -> anyhow::Result<()> {
        self.process.resume()
    }

    /// Starts a stopped or killed node again on its ports and store, and waits until
    /// it is back in the cluster (see the module docs).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.process.is_alive() {
            bail!("nats-server {} is already running", self.name());
        }
        self.process.restart()?;
        self.wait_ready()
    }

    /// [`Node::stop`], then [`Node::start`]: one step of a rolling restart.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start()
    }

    /// Waits until this node answers JetStream, is healthy and names a meta leader.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let me: Vec<Option<&Recorded>> = self
            .peers
            .iter()
            .enumerate()
            .map(|(index, _)| (index == self.index).then_some(&self.process))
            .collect();
        cluster::wait_ready(&me, &self.peers)
            .with_context(|| format!("nats-server {} rejoining the cluster", self.name()))
    }

    /// Whether a client connection named `name` is connected to this node.
    pub fn serves(&self, name: &str) -> bool {
        let Ok(response) = http_get(self.ports.monitor, "/connz?limit=1024") else {
            return false;
        };
        let Ok(connz) = serde_json::from_str::<serde_json::Value>(&response.body) else {
            return false;
        };
        connz["connections"].as_array().is_some_and(|connections| {
            connections
                .iter()
                .any(|connection| connection["name"].as_str() == Some(name))
        })
    }

    /// Waits until a client connection named `name` is on this node.
    pub fn wait_serving(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_until(
            &format!("a connection named {name} on nats-server {}", self.name()),
            timeout.min(READY_TIMEOUT),
            || {
                if self.serves(name) {
                    Ok(())
                } else {
                    bail!("not connected here")
                }
            },
        )
    }

    pub fn ports(&self) -> NodePorts {
        self.ports
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            // SIGKILL ends a frozen process too.
            let _ = node.process.kill();
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
