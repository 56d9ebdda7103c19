//! The drill where NATS fails under the writer: the server restarts, gracefully and
//! as a crash, and the acks lost on the way must cost redeliveries, never
//! duplicates.

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::common::{FAULT_TIMEOUT, finish, thirds};
use crate::plan::Plan;
use crate::report::Report;
use crate::rig::{Rig, Schema, blocking};
use crate::support::wait_for;
use crate::writer::{Metrics, Writer};

/// nats-restart: nats-server is restarted mid-stream on the same store directory,
/// once gracefully (SIGTERM) and once as a crash (SIGKILL). The writer reconnects;
/// acks lost on the way cause redeliveries, which must not duplicate.
pub async fn nats_restart(messages: u64) -> anyhow::Result<Report> {
    let name = "nats-restart";
    let mut rig = Rig::new(name, &[], Schema::Current).await?;
    let plan = Plan::valid(name, messages);
    let [first, second, third] = thirds(messages);
    let writer = Writer::start(&rig.vars, &rig.log).await?;
    rig.start_monitor();
    rig.start_publishing(&plan, first, None).await??;

    let mut outages = Vec::new();
    let mut publishing = Vec::new();
    for (ids, crash) in [(second, false), (third, true)] {
        // Mid-stream: the writer is busy with what came before, and the publisher
        // (retrying until JetStream acknowledges) with the next part.
        rig.wait_rows(*ids.start() - 1, FAULT_TIMEOUT).await?;
        let old_pid = rig.nats.server().pid();
        let publisher = rig.publisher();
        publishing.push(publisher.start(&plan, ids, None));
        let since = Instant::now();
        let stopped = blocking(|| {
            if crash {
                rig.nats.server().kill()
            } else {
                rig.nats.server().stop()
            }
        })?;
        // The writer must notice: /readyz names the NATS connection while it is down.
        let noticed = wait_for(
            "the writer's /readyz reporting NATS down",
            Duration::from_secs(60),
            || {
                let ready = writer.readyz();
                async move {
                    Ok(match ready {
                        Some((503, body)) if body.contains("nats") => Ok(body),
                        other => Err(other),
                    })
                }
            },
        )
        .await;
        blocking(|| stopped.start())?;
        noticed?;
        ensure!(
            rig.nats.server().pid() != old_pid,
            "nats-server was not restarted"
        );
        outages.push(format!(
            "{} after {} rows, down {:.1}s",
            if crash { "SIGKILL" } else { "SIGTERM" },
            rig.progress.rows(),
            since.elapsed().as_secs_f64()
        ));
    }

    let fault_over = Instant::now();
    let mut report = finish(
        &mut rig,
        &plan,
        publishing,
        writer,
        Metrics::default(),
        fault_over,
    )
    .await?;
    report.note(format!(
        "nats-server restarted twice ({}); the writer reported each outage on /readyz; {} acks unconfirmed",
        outages.join(", "),
        report.ack_failures
    ));
    Ok(report)
}
