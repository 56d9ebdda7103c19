//! The running compose stack as `cargo xtask dev` and `cargo xtask e2e --backend
//! compose` use it: the writer image it runs, a drop guard that removes it, and the
//! stored-row count both watch.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::net::http_post_with_headers;
use xshell::{Shell, cmd};

use crate::compose::{self, ComposeBackend, Published};
use crate::image;

/// The writer image to run: `built` (e2e's image step built and checked it), else
/// `PONIX_IMAGE` where set, else a fresh `cargo xtask image` build, by its version
/// tag. Compose never builds it (`up --no-build`): offline there is no Rust image.
pub fn writer_image(sh: &Shell, layout: &Layout, built: Option<String>) -> anyhow::Result<String> {
    let image = match (built, std::env::var("PONIX_IMAGE")) {
        (Some(image), _) => image,
        (None, Ok(image)) if !image.trim().is_empty() => image,
        _ => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            cmd!(sh, "{cargo} xtask image")
                .run()
                .context("building the writer image with `cargo xtask image`")?;
            format!("ponix-writer:{}", image::workspace_version(layout)?)
        }
    };
    cmd!(sh, "docker image inspect {image}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| {
            format!("no local image {image}: build it with `cargo xtask image`, or pull it")
        })?;
    Ok(image)
}

/// One compose project, up and healthy; removed when dropped unless
/// [`Stack::down`] ran (a panic, an early return).
pub struct Stack {
    pub backend: ComposeBackend,
    pub published: Published,
    down: bool,
}

impl Stack {
    /// `up --wait` of the whole stack running `image`, the writer's demo producer
    /// publishing every `demo_interval_ms` (0: off). With `fresh`, a stack left by an
    /// interrupted run is removed first (e2e: stale data would skew it). A failed
    /// start saves the logs and removes what started.
    pub fn up(
        sh: &Shell,
        layout: &Layout,
        mut backend: ComposeBackend,
        image: String,
        demo_interval_ms: u64,
        fresh: bool,
    ) -> anyhow::Result<Stack> {
        backend.writer_image = image;
        if fresh {
            let _ = backend.down(sh);
        }
        let _demo = sh.push_env("PONIX_DEMO_INTERVAL_MS", demo_interval_ms.to_string());
        let mut stack = Stack {
            backend: backend.clone(),
            published: Published {
                nats: 0,
                nats_monitor: 0,
                clickhouse: 0,
                writer: 0,
            },
            down: false,
        };
        match backend.up(sh) {
            Ok(published) => {
                stack.published = published;
                Ok(stack)
            }
            Err(err) => {
                let _ = backend.save_logs(sh, layout);
                let _ = stack.down(sh);
                Err(err)
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "project {} healthy: nats {}, clickhouse {}, writer {} ({})",
            self.backend.project,
            self.published.nats_url(),
            self.published.clickhouse_url(),
            self.published.writer_url(),
            self.backend.writer_image
        )
    }

    /// Waits until the stack's writer has stored `rows` rows: the containers reach
    /// each other by name, and its migrations ran.
    pub fn wait_for_rows(
        &self,
        layout: &Layout,
        rows: u64,
        deadline: Duration,
    ) -> anyhow::Result<String> {
        let counter = RowCounter::for_compose(layout, self.published.clickhouse)?;
        let started = Instant::now();
        loop {
            let stored = counter.stored_rows().unwrap_or(0);
            if stored >= rows {
                return Ok(format!("{stored} rows in {:.1?}", started.elapsed()));
            }
            if started.elapsed() > deadline {
                bail!("only {stored} of {rows} rows stored after {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn down(&mut self, sh: &Shell) -> anyhow::Result<String> {
        self.down = true;
        self.backend.down(sh)?;
        Ok(format!(
            "project {} removed with its volumes",
            self.backend.project
        ))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down
            && let Ok(sh) = Shell::new()
        {
            let _ = self.backend.down(&sh);
        }
    }
}

/// Counts the stored rows over ClickHouse's HTTP interface.
pub struct RowCounter {
    pub port: u16,
    /// The compose stack's ClickHouse has a user of its own; the local one is open.
    pub credentials: Option<(String, String)>,
}

impl RowCounter {
    /// The compose stack's ClickHouse, with the user its settings create.
    pub fn for_compose(layout: &Layout, port: u16) -> anyhow::Result<RowCounter> {
        let settings = compose::load_settings(&layout.root)?;
        let get = |key: &str| {
            settings
                .get(key)
                .cloned()
                .with_context(|| format!("{} has no {key}", compose::SETTINGS_TEMPLATE))
        };
        Ok(RowCounter {
            port,
            credentials: Some((
                get("PONIX_CLICKHOUSE_USERNAME")?,
                get("PONIX_CLICKHOUSE_PASSWORD")?,
            )),
        })
    }

    pub fn stored_rows(&self) -> anyhow::Result<u64> {
        let headers: Vec<(&str, &str)> = match &self.credentials {
            Some((user, password)) => vec![
                ("X-ClickHouse-User", user.as_str()),
                ("X-ClickHouse-Key", password.as_str()),
            ],
            None => Vec::new(),
        };
        // FINAL: a redelivered message's second copy is not yet merged away.
        let response = http_post_with_headers(
            self.port,
            "/?database=ponix",
            &headers,
            "SELECT count() FROM processed_envelopes FINAL",
        )
        .context("counting the stored rows")?;
        if response.status != 200 {
            bail!("counting the stored rows: {}", response.body.trim());
        }
        response
            .body
            .trim()
            .parse()
            .context("parsing the row count")
    }
}
