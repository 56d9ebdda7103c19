//! `cargo xtask down`: stops exactly what `cargo xtask up` started.

use xshell::Shell;

use crate::flags;
use localenv::Layout;
use localenv::local;

impl flags::Down {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let layout = Layout::new(&sh.current_dir());
        let stopped = local::down(&layout)?;
        if stopped.is_empty() {
            eprintln!("nothing was running");
        } else {
            eprintln!("stopped {}", stopped.join(" and "));
        }
        if self.keep {
            eprintln!("kept data in {}", layout.data_dir().display());
        } else {
            local::remove_data(&layout)?;
        }
        Ok(())
    }
}
