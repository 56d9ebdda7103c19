//! `cargo xtask up`: NATS and a ClickHouse endpoint as local processes.

use xshell::Shell;

use crate::flags;
use localenv::Layout;
use localenv::local::{self, Engine};

impl flags::Up {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        let engine = Engine::choose(self.clickhouse)?;
        let endpoints = local::up(&layout, engine)?;
        eprintln!(
            "\nNATS {} and ClickHouse {} are up. Logs: {}\n\
             These exports are also in {} (tests read it):\n",
            endpoints.nats_url(),
            endpoints.clickhouse_url(),
            layout.logs_dir().display(),
            layout.env_file().display(),
        );
        // stdout carries only the exports, so `eval "$(cargo xtask up)"` works.
        print!("{}", endpoints.exports(&layout));
        Ok(())
    }
}
