//! nats-failover: the writer on a three-node JetStream cluster with R3 streams, while
//! publishing goes on, through four faults in turn:
//!
//! 1. **leader-kill**: SIGKILL the node leading the stream; wait until another node
//!    leads it; start the killed node again.
//! 2. **conn-kill**: SIGKILL the node the writer is connected to (found in each
//!    node's `/connz` by the writer's connection name); start it again.
//! 3. **freeze**: SIGSTOP the node the writer is connected to, and keep it frozen
//!    until the writer inserts again *and* AckWait has passed; then resume it. The
//!    writer must get going while the node still holds its socket and answers
//!    nothing, which only its own checks can notice.
//! 4. **rolling**: restart the three nodes one after the other (SIGTERM, start,
//!    healthy again), as a rolling upgrade does.
//!
//! For each step the detail column gives how long the writer took to resume: from
//! the fault until the table holds more rows than the writer could have had in hand
//! at the fault (the rows stored then, plus `(insert concurrency + 1)` batches), so
//! the rows counted came from a pull made after the fault. The drill passes on the
//! shared rules (nothing missing, nothing duplicated) plus the evidence that each
//! fault happened as described (a new stream leader, the writer on another node).

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, ensure};

use crate::common::{FAULT_TIMEOUT, finish_all};
use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{CONSUMER, Rig, STREAM, Schema, blocking};
use crate::support::wait_for;
use crate::writer::{Metrics, Writer};

/// The connection name the writer gives its NATS client (`run.rs`).
const WRITER_CONNECTION: &str = "ponix-writer";
const NODES: usize = 3;
/// Small batches, so that inserting resumes in small steps that the row count shows.
const BATCH_SIZE: u64 = 50;
/// Faults in the drill: leader-kill, conn-kill, freeze and one per node of the roll.
const FAULTS: u64 = 3 + NODES as u64;

pub async fn nats_failover(messages: u64) -> anyhow::Result<Report> {
    let name = "nats-failover";
    let spacing = messages / (FAULTS + 2);
    let batch = BATCH_SIZE.to_string();
    let mut rig = Rig::with_cluster(
        name,
        &[
            ("PONIX_NATS_STREAM_REPLICAS", "3"),
            ("PONIX_NATS_BATCH_SIZE", &batch),
            (
                "PONIX_LOG_LEVEL",
                "info,ponix_writer=debug,async_nats=debug",
            ),
        ],
        Schema::Current,
        NODES,
    )
    .await?;
    let concurrency: u64 = rig
        .setting("PONIX_CLICKHOUSE_INSERT_CONCURRENCY")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Rows the writer may hold already fetched when a fault strikes.
    let in_hand = BATCH_SIZE * (concurrency + 1);
    ensure!(
        spacing > 2 * in_hand,
        "nats-failover needs at least {} messages",
        (2 * in_hand + 1) * (FAULTS + 2)
    );
    // How far publishing may run ahead of the rows stored, and up to which id it may
    // go before each fault (see `allow`): it goes on through every fault, far enough
    // ahead for the writer to show it resumed, and never finishes before the last.
    let lead = (spacing / 2).max(2 * in_hand);
    let allow = |rig: &Rig, upto: u64| {
        rig.progress
            .withheld
            .store(messages.saturating_sub(upto), Ordering::Relaxed);
    };
    allow(&rig, 2 * spacing);
    let ack_wait = rig.seconds("PONIX_NATS_ACK_WAIT_SECS");
    let plan = Plan::valid(name, messages);
    let writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    let publishing = rig.start_publishing(&plan, 1..=plan.total, Some(lead));
    let mut step = 0u64;
    let mut resumed = Vec::new();
    let mut evidence = Vec::new();

    // 1. The stream's leader dies.
    step += 1;
    rig.wait_rows(step * spacing, FAULT_TIMEOUT).await?;
    let leader = stream_leader(&rig).await?;
    // Pulls stall only if the consumer's leader goes with the stream's.
    let consumer_leader = rig
        .nats
        .cluster()
        .consumer_leader(&rig.js, STREAM, CONSUMER)
        .await?;
    let (fault, rows_then) = (Instant::now(), rig.progress.rows());
    allow(&rig, (step + 2) * spacing);
    blocking(|| rig.nats.cluster_mut().node_mut(leader).kill())?;
    let resume = watch_resume(&rig, rows_then + in_hand + 1);
    let new_leader = wait_for("another node leading the stream", FAULT_TIMEOUT, || async {
        Ok(match stream_leader(&rig).await {
            Ok(node) if node != leader => Ok(node),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    let elected = fault.elapsed();
    let took = resume.await.context("the resume watch")?? - fault;
    resumed.push(("leader-kill", took));
    eprintln!("leader-kill: resumed after {took:?}");
    blocking(|| rig.nats.cluster_mut().node_mut(leader).start())?;
    evidence.push(format!(
        "stream leader n{} killed (consumer leader n{}), n{} seen leading within {:.1}s",
        leader + 1,
        consumer_leader + 1,
        new_leader + 1,
        elected.as_secs_f64()
    ));

    // 2. The writer's server dies.
    step += 1;
    rig.wait_rows(step * spacing, FAULT_TIMEOUT).await?;
    let serving = writer_node(&rig).await?;
    let (fault, rows_then) = (Instant::now(), rig.progress.rows());
    allow(&rig, (step + 2) * spacing);
    blocking(|| rig.nats.cluster_mut().node_mut(serving).kill())?;
    let took = watch_resume(&rig, rows_then + in_hand + 1)
        .await
        .context("the resume watch")??
        - fault;
    resumed.push(("conn-kill", took));
    eprintln!("conn-kill: resumed after {took:?}");
    let moved_to = writer_node(&rig).await?;
    ensure!(
        moved_to != serving,
        "the writer is still on the killed node n{}",
        serving + 1
    );
    blocking(|| rig.nats.cluster_mut().node_mut(serving).start())?;
    evidence.push(format!(
        "writer's server n{} killed, it moved to n{}",
        serving + 1,
        moved_to + 1
    ));

    // 3. The writer's server freezes: its socket stays open and silent.
    step += 1;
    rig.wait_rows(step * spacing, FAULT_TIMEOUT).await?;
    let frozen = writer_node(&rig).await?;
    let (fault, rows_then) = (Instant::now(), rig.progress.rows());
    allow(&rig, (step + 2) * spacing);
    blocking(|| rig.nats.cluster().node(frozen).freeze())?;
    let waited = watch_resume(&rig, rows_then + in_hand + 1)
        .await
        .context("the resume watch")?;
    let resume_time = match &waited {
        Ok(at) => *at - fault,
        Err(_) => fault.elapsed(),
    };
    eprintln!("freeze: resumed after {resume_time:?} ({waited:?})");
    // Past AckWait, as the fault is defined, whenever the writer got going again.
    wait_for("the freeze past AckWait", ack_wait * 2, || async move {
        Ok(if fault.elapsed() >= ack_wait {
            Ok(())
        } else {
            Err(fault.elapsed())
        })
    })
    .await?;
    let frozen_for = fault.elapsed();
    blocking(|| {
        let node = rig.nats.cluster().node(frozen);
        node.resume()?;
        node.wait_ready()
    })?;
    waited.context("the writer resuming while its server was frozen")?;
    resumed.push(("freeze", resume_time));
    evidence.push(format!(
        "writer's server n{} frozen {:.1}s",
        frozen + 1,
        frozen_for.as_secs_f64()
    ));

    // 4. A rolling restart, one node at a time, each healthy before the next.
    let mut rolling = Vec::new();
    for node in 0..NODES {
        step += 1;
        rig.wait_rows(step * spacing, FAULT_TIMEOUT).await?;
        let (fault, rows_then) = (Instant::now(), rig.progress.rows());
        allow(&rig, (step + 2) * spacing);
        let resume = watch_resume(&rig, rows_then + in_hand + 1);
        blocking(|| rig.nats.cluster_mut().node_mut(node).restart())?;
        let took = resume.await.context("the resume watch")?? - fault;
        rolling.push(took);
        eprintln!("rolling n{}: resumed after {took:?}", node + 1);
    }
    let slowest = rolling.iter().max().copied().unwrap_or_default();
    resumed.push(("rolling", slowest));
    evidence.push(format!(
        "rolling restart n1..n{NODES} ({})",
        rolling
            .iter()
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    allow(&rig, messages);
    let fault_over = Instant::now();
    let mut report = finish_all(
        &mut rig,
        &plan,
        vec![publishing],
        vec![writer],
        Metrics::default(),
        fault_over,
    )
    .await?;
    report.note(format!(
        "resume: {}",
        resumed
            .iter()
            .map(|(step, took)| format!("{step} {:.1}s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.note(format!(
        "R3 streams on {NODES} nodes; {}",
        evidence.join("; ")
    ));
    report.require(
        frozen_for >= ack_wait,
        format!("the freeze lasted {frozen_for:?}, less than AckWait {ack_wait:?}"),
    );
    report.require(
        rig.progress.published.load(Ordering::Relaxed) == plan.total,
        "not everything was published",
    );
    Ok(report)
}

/// The moment the table first holds `target` rows, watched from now on in the
/// background: the drill may be busy meanwhile (waiting for a new leader, restarting
/// a node), and the time must be taken when the writer resumes, not when the drill
/// next looks.
fn watch_resume(rig: &Rig, target: u64) -> tokio::task::JoinHandle<anyhow::Result<Instant>> {
    let progress = std::sync::Arc::clone(&rig.progress);
    tokio::spawn(async move {
        wait_for(&format!("{target} rows stored"), FAULT_TIMEOUT, || {
            let seen = progress.rows();
            async move {
                Ok(if seen >= target {
                    Ok(Instant::now())
                } else {
                    Err(seen)
                })
            }
        })
        .await
    })
}

/// The node leading the drill's stream.
async fn stream_leader(rig: &Rig) -> anyhow::Result<usize> {
    rig.nats.cluster().stream_leader(&rig.js, STREAM).await
}

/// The one node the writer is connected to, once it is connected to exactly one.
async fn writer_node(rig: &Rig) -> anyhow::Result<usize> {
    let cluster = rig.nats.cluster();
    wait_for(
        "the writer connected to one node",
        FAULT_TIMEOUT,
        || async move {
            let consumer_leader = cluster.consumer_leader(&rig.js, STREAM, CONSUMER).await;
            Ok(
                match blocking(|| Ok(cluster.nodes_serving(WRITER_CONNECTION)))? {
                    nodes if nodes.len() == 1 => Ok(nodes[0]),
                    nodes => Err(format!(
                        "connected to {nodes:?} (consumer leader {:?})",
                        consumer_leader.ok()
                    )),
                },
            )
        },
    )
    .await
}
