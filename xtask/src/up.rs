//! `cargo xtask up`: NATS and a ClickHouse endpoint as local processes.

use xshell::Shell;

use crate::flags;
use localenv::Layout;
use localenv::local::{self, Engine};

impl flags::Up {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        let engine = Engine::choose(self.clickhouse)?;
        let nodes = self.nats_cluster.unwrap_or(1);
        // Two nodes cannot elect a leader once one is gone; more than 5 is more than a
        // JetStream stream can use (R5 at most).
        if nodes != 1 && !(3..=5).contains(&nodes) {
            anyhow::bail!("--nats-cluster {nodes}: a JetStream cluster here has 3 to 5 nodes");
        }
        let endpoints = local::up(&layout, engine, nodes)?;
        eprintln!(
            "\nNATS {}{} and ClickHouse {} are up. Logs: {}\n\
             These exports are also in {} (tests read it):\n",
            endpoints.nats_url(),
            if endpoints.nats_cluster.is_empty() {
                String::new()
            } else {
                format!(
                    " (a JetStream cluster of {}; streams may use up to that many replicas: \
                     PONIX_NATS_STREAM_REPLICAS)",
                    endpoints.nats_cluster.len()
                )
            },
            endpoints.clickhouse_url(),
            layout.logs_dir().display(),
            layout.env_file().display(),
        );
        // stdout carries only the exports, so `eval "$(cargo xtask up)"` works.
        print!("{}", endpoints.exports(&layout));
        Ok(())
    }
}
