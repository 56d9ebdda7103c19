//! The local backend: nats-server and a ClickHouse HTTP endpoint as plain processes.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{self, NodePorts};
use crate::layout::Layout;
use crate::net::{self, free_port, http_get, http_post, wait_until};
use crate::process::{Recorded, log_tail};
use crate::text::shell_quote;

// Re-exported: testkit starts private servers from the same command line and deadline.
pub use crate::nats::nats_argv;
pub use crate::net::READY_TIMEOUT;

pub const NATS: &str = "nats";
pub const CLICKHOUSE: &str = "clickhouse";
pub const DATABASE: &str = "ponix";
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Which ClickHouse engine backs the HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The chDB-backed Python server under xtask/chdb_server (test and dev only).
    Chdb,
    /// A real `clickhouse server` binary found on PATH.
    Server,
}

/// `--clickhouse chdb` or `--clickhouse server`.
impl std::str::FromStr for Engine {
    type Err = anyhow::Error;

    fn from_str(choice: &str) -> anyhow::Result<Engine> {
        match choice {
            "chdb" => Ok(Engine::Chdb),
            "server" => Ok(Engine::Server),
            other => bail!("unknown ClickHouse engine {other:?}: expected `chdb` or `server`"),
        }
    }
}

impl Engine {
    /// The engine to run here: the one asked for, which must be available, or with
    /// none asked for, `server` where a `clickhouse` binary is on PATH, else chDB.
    pub fn choose(choice: Option<Engine>) -> anyhow::Result<Engine> {
        match choice {
            Some(Engine::Server) => {
                find_on_path("clickhouse").context(
                    "`--clickhouse server` needs a `clickhouse` binary on PATH; \
                     use `--clickhouse chdb` or install ClickHouse",
                )?;
                Ok(Engine::Server)
            }
            Some(Engine::Chdb) => Ok(Engine::Chdb),
            None if find_on_path("clickhouse").is_some() => Ok(Engine::Server),
            None => Ok(Engine::Chdb),
        }
    }
}

/// Addresses of a running local environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The client port of the only NATS server, or of the cluster's first node.
    pub nats_port: u16,
    pub clickhouse_port: u16,
    /// Every node when NATS runs as a cluster (`up --nats-cluster N`); empty otherwise.
    pub nats_cluster: Vec<NodePorts>,
}

/// The env-file line that records a cluster's ports, `client:cluster:monitor` per node,
/// so that a later `up` or a test finds every node.
const CLUSTER_VAR: &str = "PONIX_TEST_NATS_CLUSTER";

impl Endpoints {
    /// One URL, or every node's, comma-separated, as `PONIX_NATS_URL` takes them.
    pub fn nats_url(&self) -> String {
        if self.nats_cluster.is_empty() {
            format!("nats://127.0.0.1:{}", self.nats_port)
        } else {
            cluster::urls(&self.nats_cluster)
        }
    }

    pub fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.clickhouse_port)
    }

    /// The variables the writer, goose and the tests read.
    pub fn env_vars(&self, layout: &Layout) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("PONIX_NATS_URL", self.nats_url()),
            ("PONIX_CLICKHOUSE_URL", self.clickhouse_url()),
            ("PONIX_CLICKHOUSE_DATABASE", DATABASE.into()),
            ("PONIX_CLICKHOUSE_USERNAME", "default".into()),
            ("PONIX_CLICKHOUSE_PASSWORD", String::new()),
            (
                "PONIX_CLICKHOUSE_MIGRATIONS_DIR",
                layout.migrations_dir().display().to_string(),
            ),
            (
                "PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
                layout.goose().display().to_string(),
            ),
            ("PONIX_TEST_RUN_DIR", layout.run_dir().display().to_string()),
        ];
        if !self.nats_cluster.is_empty() {
            let nodes: Vec<String> = self
                .nats_cluster
                .iter()
                .map(|n| format!("{}:{}:{}", n.client, n.cluster, n.monitor))
                .collect();
            vars.push((CLUSTER_VAR, nodes.join(",")));
        }
        vars
    }

    /// `export KEY=value` lines for POSIX shells.
    pub fn exports(&self, layout: &Layout) -> String {
        self.env_vars(layout)
            .into_iter()
            .map(|(key, value)| format!("export {key}={}\n", shell_quote(&value)))
            .collect()
    }
}

/// Starts both processes, waits until they answer, creates the database and writes
/// the env file. An environment that is already up is reused as it is. With
/// `nats_nodes` above 1, NATS runs as a JetStream cluster of that many nodes (see
/// [`crate::cluster`]).
pub fn up(layout: &Layout, engine: Engine, nats_nodes: usize) -> anyhow::Result<Endpoints> {
    if let Some(endpoints) = running(layout)? {
        eprintln!("the local environment is already running (stop it with `cargo xtask down`)");
        return Ok(endpoints);
    }
    // A half-started environment (one process died) is replaced as a whole,
    // and a fresh environment starts with fresh logs.
    down(layout)?;
    let logs = layout.logs_dir();
    if logs.exists() {
        fs::remove_dir_all(&logs).with_context(|| format!("clearing {}", logs.display()))?;
    }

    let nats_cluster = if nats_nodes > 1 {
        (0..nats_nodes)
            .map(|_| NodePorts::free())
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let endpoints = Endpoints {
        nats_port: match nats_cluster.first() {
            Some(node) => node.client,
            None => free_port()?,
        },
        clickhouse_port: free_port()?,
        nats_cluster,
    };
    if let Err(err) = start_and_wait(layout, engine, &endpoints) {
        dump_logs(layout);
        down(layout)?;
        return Err(err);
    }
    let env_file = layout.env_file();
    fs::write(&env_file, endpoints.exports(layout))
        .with_context(|| format!("writing {}", env_file.display()))?;
    Ok(endpoints)
}

fn start_and_wait(layout: &Layout, engine: Engine, endpoints: &Endpoints) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut nats = Vec::new();
    if endpoints.nats_cluster.is_empty() {
        eprintln!("starting nats-server on 127.0.0.1:{}", endpoints.nats_port);
        let nats_store = layout.data_dir().join(NATS);
        nats.push(Recorded::spawn(
            NATS,
            nats_argv(layout, endpoints.nats_port, &nats_store)?,
            &layout.run_dir(),
            &log_file(layout, NATS),
        )?);
    } else {
        for (index, node) in endpoints.nats_cluster.iter().enumerate() {
            let name = nats_node_name(index);
            eprintln!(
                "starting nats-server {} ({name}) on 127.0.0.1:{}, routes on {}, monitoring on {}",
                cluster::server_name(index),
                node.client,
                node.cluster,
                node.monitor
            );
            let store = layout.data_dir().join(&name);
            nats.push(Recorded::spawn(
                &name,
                cluster::node_argv(layout, &endpoints.nats_cluster, index, &store)?,
                &layout.run_dir(),
                &log_file(layout, &name),
            )?);
        }
    }

    eprintln!(
        "starting ClickHouse ({engine:?}) on 127.0.0.1:{}",
        endpoints.clickhouse_port
    );
    let clickhouse_data = layout.data_dir().join(CLICKHOUSE);
    let argv = match engine {
        Engine::Chdb => chdb_argv(layout, endpoints.clickhouse_port, &clickhouse_data)?,
        Engine::Server => {
            clickhouse_server_argv(layout, endpoints.clickhouse_port, &clickhouse_data)?
        }
    };
    let clickhouse = Recorded::spawn(
        CLICKHOUSE,
        argv,
        &layout.run_dir(),
        &log_file(layout, CLICKHOUSE),
    )?;

    if endpoints.nats_cluster.is_empty() {
        wait_nats_ready(&nats[0], endpoints.nats_port)?;
        eprintln!("nats-server ready after {:.1?}", started.elapsed());
    } else {
        let processes: Vec<Option<&Recorded>> = nats.iter().map(Some).collect();
        cluster::wait_ready(&processes, &endpoints.nats_cluster)?;
        eprintln!(
            "NATS cluster of {} ready (meta leader {}) after {:.1?}",
            nats.len(),
            cluster::meta_leader(endpoints.nats_cluster[0].monitor)?,
            started.elapsed()
        );
    }
    wait_clickhouse_ready(&clickhouse, endpoints.clickhouse_port)?;
    eprintln!("ClickHouse ready after {:.1?}", started.elapsed());
    create_database(endpoints.clickhouse_port, DATABASE)
}

/// Waits until NATS answers a JetStream account-info request, failing early if
/// the process has exited.
pub fn wait_nats_ready(process: &Recorded, port: u16) -> anyhow::Result<()> {
    wait_until(
        "nats-server (JetStream account info)",
        READY_TIMEOUT,
        || {
            ensure_alive(process)?;
            net::nats_jetstream_ready(port)
        },
    )
}

/// Waits until ClickHouse answers `/ping` and `SELECT 1`.
pub fn wait_clickhouse_ready(process: &Recorded, port: u16) -> anyhow::Result<()> {
    wait_until("ClickHouse (/ping and SELECT 1)", READY_TIMEOUT, || {
        ensure_alive(process)?;
        clickhouse_ready(port)
    })
}

fn ensure_alive(process: &Recorded) -> anyhow::Result<()> {
    if !process.is_alive() {
        bail!(
            "{} exited; its log ends with:\n{}",
            process.name,
            process.log_tail(20)
        );
    }
    Ok(())
}

pub fn clickhouse_ready(port: u16) -> anyhow::Result<()> {
    let ping = http_get(port, "/ping")?;
    if ping.status != 200 || ping.body.trim() != "Ok." {
        bail!("/ping answered {} {:?}", ping.status, ping.body);
    }
    let select = http_post(port, "/", "SELECT 1")?;
    if select.status != 200 || select.body.trim() != "1" {
        bail!("SELECT 1 answered {} {:?}", select.status, select.body);
    }
    Ok(())
}

pub fn create_database(port: u16, database: &str) -> anyhow::Result<()> {
    let response = http_post(
        port,
        "/",
        &format!("CREATE DATABASE IF NOT EXISTS {database}"),
    )
    .context("creating the database")?;
    if response.status != 200 {
        bail!(
            "creating database {database} failed: {}",
            response.body.trim()
        );
    }
    Ok(())
}

/// `server.py` is a shim over the `chdb_server` package beside it: Python puts the
/// script's directory on `sys.path`, so no working directory or `PYTHONPATH` is needed.
pub fn chdb_argv(layout: &Layout, port: u16, data_dir: &Path) -> anyhow::Result<Vec<OsString>> {
    let python = layout.venv_python();
    if !python.exists() {
        bail!(
            "the chDB virtualenv is missing at {}: run `cargo xtask tools`",
            python.display()
        );
    }
    Ok(vec![
        python.into(),
        layout.chdb_server_dir().join("server.py").into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string().into(),
        "--data-dir".into(),
        data_dir.into(),
    ])
}

fn clickhouse_server_argv(
    layout: &Layout,
    http_port: u16,
    data: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let binary = find_on_path("clickhouse").context("no `clickhouse` binary on PATH")?;
    fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let config = layout.run_dir().join("clickhouse-server.xml");
    fs::write(
        &config,
        clickhouse_server_config(data, http_port, free_port()?),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    Ok(vec![
        binary.into(),
        "server".into(),
        format!("--config-file={}", config.display()).into(),
    ])
}

/// A minimal single-node config: loopback only, one passwordless `default` user.
fn clickhouse_server_config(data: &Path, http_port: u16, tcp_port: u16) -> String {
    let data = data.display();
    format!(
        r#"<clickhouse>
    <logger><level>information</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <path>{data}/</path>
    <tmp_path>{data}/tmp/</tmp_path>
    <user_files_path>{data}/user_files/</user_files_path>
    <format_schema_path>{data}/format_schemas/</format_schema_path>
    <mark_cache_size>268435456</mark_cache_size>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
        </default>
    </users>
    <profiles><default/></profiles>
    <quotas><default/></quotas>
</clickhouse>
"#
    )
}

/// The process name of cluster node `index`: the first is plain `nats`, so that the
/// tests that control the shared NATS find it as they do a single server.
pub fn nats_node_name(index: usize) -> String {
    match index {
        0 => NATS.to_owned(),
        n => format!("{NATS}-{}", n + 1),
    }
}

/// Most cluster nodes `down` looks for.
const MAX_NODES: usize = 9;

pub fn log_file(layout: &Layout, name: &str) -> PathBuf {
    layout.logs_dir().join(format!("{name}.log"))
}

pub fn find_process(layout: &Layout, name: &str) -> anyhow::Result<Option<Recorded>> {
    Recorded::find(name, &layout.run_dir(), &log_file(layout, name))
}

/// The endpoints of an environment whose processes are both still running.
pub fn running(layout: &Layout) -> anyhow::Result<Option<Endpoints>> {
    if find_process(layout, NATS)?.is_none() || find_process(layout, CLICKHOUSE)?.is_none() {
        return Ok(None);
    }
    let Ok(text) = fs::read_to_string(layout.env_file()) else {
        return Ok(None);
    };
    let value_of = |key: &str| -> Option<&str> {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("export {key}=")))
    };
    let port_of = |key: &str| -> Option<u16> {
        // The first server of a list.
        let first = value_of(key)?.split(',').next()?;
        first.rsplit(':').next()?.trim_matches('\'').parse().ok()
    };
    let nats_cluster: Vec<NodePorts> = value_of(CLUSTER_VAR)
        .map(|nodes| {
            nodes
                .trim_matches('\'')
                .split(',')
                .filter_map(|node| {
                    let mut ports = node.split(':').map(|p| p.parse::<u16>().ok());
                    Some(NodePorts {
                        client: ports.next()??,
                        cluster: ports.next()??,
                        monitor: ports.next()??,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    for index in 1..nats_cluster.len() {
        if find_process(layout, &nats_node_name(index))?.is_none() {
            return Ok(None);
        }
    }
    Ok(
        match (port_of("PONIX_NATS_URL"), port_of("PONIX_CLICKHOUSE_URL")) {
            (Some(nats_port), Some(clickhouse_port)) => Some(Endpoints {
                nats_port,
                clickhouse_port,
                nats_cluster,
            }),
            _ => None,
        },
    )
}

/// Stops every process `up` recorded and removes the env file. Returns the names
/// of the processes that were running.
pub fn down(layout: &Layout) -> anyhow::Result<Vec<String>> {
    let mut stopped = Vec::new();
    let names = [CLICKHOUSE.to_owned()]
        .into_iter()
        .chain((0..MAX_NODES).map(nats_node_name));
    for name in names {
        if let Some(process) = find_process(layout, &name)? {
            process.stop(STOP_TIMEOUT)?;
            process.forget();
            stopped.push(name);
        }
    }
    let _ = fs::remove_file(layout.env_file());
    Ok(stopped)
}

/// Prints the tail of every process log in `.tools/logs/` (NATS, ClickHouse and
/// any writer a test started): called whenever something fails.
pub fn dump_logs(layout: &Layout) {
    let Ok(entries) = fs::read_dir(layout.logs_dir()) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .collect();
    logs.retain(|path| path.extension().is_some_and(|ext| ext == "log"));
    logs.sort();
    for path in logs {
        eprintln!(
            "\n----- {} (last 60 lines) -----\n{}",
            path.display(),
            log_tail(&path, 60)
        );
    }
}

pub fn remove_data(layout: &Layout) -> anyhow::Result<()> {
    let data = layout.data_dir();
    if data.exists() {
        fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    Ok(())
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The environment `up` started, torn down (processes stopped, data removed
/// unless kept) when dropped, so that an error or panic leaves nothing behind.
#[must_use = "the environment is torn down when this guard drops"]
pub struct Running {
    pub layout: Layout,
    pub endpoints: Endpoints,
    keep_data: bool,
    torn_down: bool,
}

impl Running {
    pub fn start(layout: &Layout, engine: Engine, keep_data: bool) -> anyhow::Result<Running> {
        let endpoints = up(layout, engine, 1)?;
        Ok(Running {
            layout: layout.clone(),
            endpoints,
            keep_data,
            torn_down: false,
        })
    }

    pub fn teardown(&mut self) -> anyhow::Result<Vec<String>> {
        self.torn_down = true;
        let stopped = down(&self.layout)?;
        if !self.keep_data {
            remove_data(&self.layout)?;
        }
        Ok(stopped)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.torn_down
            && let Err(err) = self.teardown()
        {
            eprintln!("tearing down the local environment failed: {err:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_name_every_endpoint() {
        let layout = Layout::new(Path::new("/project"));
        let endpoints = Endpoints {
            nats_port: 4321,
            clickhouse_port: 8765,
            nats_cluster: Vec::new(),
        };
        let exports = endpoints.exports(&layout);
        assert!(
            exports.contains("export PONIX_NATS_URL=nats://127.0.0.1:4321\n"),
            "{exports}"
        );
        assert!(exports.contains("export PONIX_CLICKHOUSE_URL=http://127.0.0.1:8765\n"));
        assert!(exports.contains("export PONIX_CLICKHOUSE_PASSWORD=''\n"));
        assert!(exports.contains("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH=/project/.tools/bin/goose"));
        assert!(!exports.contains(CLUSTER_VAR));
    }

    #[test]
    fn a_cluster_exports_every_node() {
        let layout = Layout::new(Path::new("/project"));
        let node = |i: u16| NodePorts {
            client: 4000 + i,
            cluster: 5000 + i,
            monitor: 6000 + i,
        };
        let endpoints = Endpoints {
            nats_port: 4000,
            clickhouse_port: 8765,
            nats_cluster: vec![node(0), node(1), node(2)],
        };
        let exports = endpoints.exports(&layout);
        assert!(
            exports.contains(
                "export PONIX_NATS_URL=nats://127.0.0.1:4000,nats://127.0.0.1:4001,nats://127.0.0.1:4002\n"
            ),
            "{exports}"
        );
        assert!(exports.contains(
            "export PONIX_TEST_NATS_CLUSTER=4000:5000:6000,4001:5001:6001,4002:5002:6002\n"
        ));
        assert_eq!(nats_node_name(0), NATS);
        assert_eq!(nats_node_name(2), "nats-3");
    }

    #[test]
    fn clickhouse_server_config_binds_loopback_only() {
        let config = clickhouse_server_config(Path::new("/data"), 8123, 9000);
        assert!(config.contains("<listen_host>127.0.0.1</listen_host>"));
        assert!(config.contains("<http_port>8123</http_port>"));
        assert!(config.contains("<path>/data/</path>"));
    }

    #[test]
    fn engine_choice_is_validated() {
        assert_eq!("chdb".parse::<Engine>().unwrap(), Engine::Chdb);
        assert_eq!("server".parse::<Engine>().unwrap(), Engine::Server);
        assert!("postgres".parse::<Engine>().is_err());
        assert_eq!(Engine::choose(Some(Engine::Chdb)).unwrap(), Engine::Chdb);
    }
}
