//! `cargo xtask e2e --backend compose`: the compose pass, short enough for CI next
//! to the local pass (which runs everything else).
//!
//! The whole stack of docker/compose.yaml comes up with `--wait` on its
//! healthchecks (the writer in its container among them) and must store rows from
//! its demo producer. Then, against that stack's NATS and ClickHouse, the pipeline
//! fixtures and snapshots run with every writer the tests start in its container
//! (`PONIX_TEST_WRITER_IMAGE`), and the drills whose faults compose does
//! (`PONIX_TEST_BACKEND=compose`: stop and start, pause and unpause, kill, restart).
//! The stack is removed at the end, after a failure too (its logs saved first), on
//! Ctrl-C, and by a drop guard on a panic.

use std::time::Duration;

use anyhow::{Context, bail};
use localenv::Layout;
use localenv::writer::container;
use xshell::{Shell, cmd};

use crate::compose::{self, ComposeBackend};
use crate::drill;
use crate::stack::{Stack, writer_image};
use crate::steps::Steps;
use crate::tools;

use super::writer_test;

/// The drills whose faults the compose way covers, at a size that keeps the pass
/// within a few minutes.
const DRILLS: &[&str] = &[
    "clickhouse-down",
    "clickhouse-hang",
    "nats-restart",
    "writer-kill",
];
const DRILL_MESSAGES: u64 = 2_000;
/// The stack's own writer publishes a demo envelope this often ...
const DEMO_INTERVAL_MS: u64 = 20;
/// ... and must have stored this many rows within the deadline.
const DEMO_ROWS: u64 = 50;
const DEMO_DEADLINE: Duration = Duration::from_secs(90);
/// Tells testkit's Managed instances to run as compose services (dock-tc).
const TEST_BACKEND_VAR: &str = "PONIX_TEST_BACKEND";

/// Adds the compose pass's steps to `steps`. The writer image is `image`, else
/// `PONIX_IMAGE`, else one `cargo xtask image` builds.
pub fn add_steps(sh: &Shell, layout: &Layout, steps: &mut Steps, image: Option<String>) {
    let mut image = image;
    let run_id = format!("{}-{}", std::process::id(), unix_seconds());
    let mut stack: Option<Stack> = None;

    steps.run("tools", || {
        tools::install_runtime(sh, layout)?;
        Ok("goose, nats-server, chDB venv".into())
    });
    steps.run("writer image", || {
        let built = writer_image(sh, layout, image.take())?;
        let figure = built.clone();
        image = Some(built);
        Ok(figure)
    });
    steps.run("stack up (--wait)", || {
        let image = image.clone().context("no writer image")?;
        let backend = ComposeBackend::e2e(layout);
        let started = Stack::up(sh, layout, backend, image, DEMO_INTERVAL_MS, true)?;
        let figure = started.describe();
        stack = Some(started);
        Ok(figure)
    });
    let env = || -> anyhow::Result<Vec<(&'static str, String)>> {
        let stack = stack.as_ref().context("the stack is not up")?;
        let mut env = stack.backend.env_vars(layout, &stack.published)?;
        env.push((container::IMAGE_VAR, stack.backend.writer_image.clone()));
        env.push((container::RUN_VAR, run_id.clone()));
        Ok(env)
    };
    steps.run("stack writer stores demo rows", || {
        let stack = stack.as_ref().context("the stack is not up")?;
        stack.wait_for_rows(layout, DEMO_ROWS, DEMO_DEADLINE)
    });
    steps.run("pipeline, writer in its container", || {
        writer_test(layout, &env()?, "pipeline")
    });
    steps.run("struct-json round-trips", || {
        writer_test(layout, &env()?, "roundtrip")
    });
    steps.run("drills, compose faults", || {
        let mut env = env()?;
        env.push((TEST_BACKEND_VAR, "compose".into()));
        drill::run_some(layout, &env, DRILL_MESSAGES, DRILLS)
    });

    if let Some(mut stack) = stack.take() {
        if steps.failed() || localenv::interrupt::interrupted() {
            if let Err(err) = stack.backend.save_logs(sh, layout) {
                eprintln!("collecting the compose logs failed: {err:#}");
            }
            localenv::local::dump_logs(layout);
        }
        steps.run_always("teardown", || {
            let removed = remove_run_containers(sh, &run_id)?;
            let down = stack.down(sh)?;
            no_container_left(sh)?;
            Ok(format!(
                "{down}; {removed} stray test writer(s) removed; none left"
            ))
        });
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

/// Test writers of this run that an interrupt left behind (their test process was
/// killed before its handles dropped): removed; how many.
fn remove_run_containers(sh: &Shell, run_id: &str) -> anyhow::Result<usize> {
    let filter = format!("label={}={run_id}", container::RUN_LABEL);
    let ids = cmd!(sh, "docker ps --all --quiet --filter {filter}")
        .quiet()
        .read()
        .context("listing this run's test writer containers")?;
    let ids: Vec<&str> = ids.lines().collect();
    let count = ids.len();
    if count > 0 {
        cmd!(sh, "docker rm --force {ids...}")
            .quiet()
            .ignore_stdout()
            .run()
            .context("removing this run's test writer containers")?;
    }
    Ok(count)
}

/// Fails if a container of this pass is still present: the stack's, or a test writer's.
fn no_container_left(sh: &Shell) -> anyhow::Result<()> {
    let project = format!("label=com.docker.compose.project={}", compose::E2E_PROJECT);
    let writers = format!("label={}", container::LABEL);
    let mut left = Vec::new();
    for filter in [project, writers] {
        let names = cmd!(sh, "docker ps --all --quiet --filter {filter}")
            .quiet()
            .read()
            .context("listing containers with `docker ps`")?;
        left.extend(names.lines().map(str::to_owned));
    }
    if !left.is_empty() {
        bail!("containers left behind: {}", left.join(" "));
    }
    Ok(())
}
