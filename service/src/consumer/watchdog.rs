//! Noticing a NATS server that stopped answering, without waiting for an error.
//!
//! A pull asks the server for a batch that it must end by its expiry (`batch_wait`):
//! with messages, or with a `408 Request Timeout` status. A server that is gone
//! while the TCP connection looks open (frozen, partitioned away, a half-open socket)
//! sends neither; a pull stranded on a consumer leader that lost its leadership ends
//! the same way. async-nats ends such a pull by its own timer 5 s after the expiry,
//! *with no error*, and its ping check notices a dead connection only after three
//! unanswered pings. With the client's default 60 s ping interval, the writer went on
//! pulling into a frozen server's socket for more than 3 minutes without a word (the
//! `nats-failover` drill measured it). So:
//!
//! * a pull the server has not ended [`PULL_ANSWER_GRACE`] after its expiry is
//!   **unanswered** ([`Unanswered`], an error of the pull);
//! * after an unanswered pull the writer checks the connection with one round trip
//!   ([`connection_answers`]: a request to a subject nobody serves, which a live
//!   server answers at once with "no responders"); without an answer within
//!   [`PROBE_TIMEOUT`] it forces the client to reconnect, to another server of
//!   `PONIX_NATS_URL` or of the cluster the server announced;
//! * either way the stream and consumer are re-ensured and the consumer handle
//!   replaced before the next pull, as after any failed pull. That ensure is bounded
//!   by [`ENSURE_TIMEOUT`]: while a cluster elects a stream or consumer leader,
//!   JetStream's API requests wait out their 5 s timeout one after the other (the
//!   drill saw 10 s), and the loop must not sit in them; the next pull is the
//!   better check.
//! * A pull a clustered server ends with `409 Batch Completed` or `409 Leadership
//!   Change` ended like one with `408` (see [`super::pull`]): nothing is wrong, the
//!   next pull goes to whichever server leads the consumer now. Counting these as
//!   failures made an idle writer on a cluster back off and re-ensure every AckWait.
//!
//! The bound: an unresponsive server is noticed within `batch_wait` +
//! [`PULL_ANSWER_GRACE`] + [`PROBE_TIMEOUT`] of the pull it swallowed (6 s with the
//! default batch wait), and the reconnect then costs at most one connect attempt per
//! unresponsive server ([`CONNECT_ATTEMPT_TIMEOUT`]). [`PING_INTERVAL`] is the
//! backstop while no pull runs (a batch held through a ClickHouse outage): the client
//! gives up on a connection after three unanswered pings.

use std::time::Duration;

use async_nats::RequestErrorKind;

/// How long after its expiry a pull may stay without the server's end. The server
/// ends it at the expiry; this covers a loaded machine. Less than async-nats' own 5 s,
/// so the client's silent end of the pull never comes first.
pub const PULL_ANSWER_GRACE: Duration = Duration::from_secs(3);

/// How long the connection check waits for the server's "no responders".
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the re-ensure after a failed pull may hold up the next pull.
pub const ENSURE_TIMEOUT: Duration = Duration::from_secs(3);

/// The NATS client's ping interval (async-nats' default is 60 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// The longest one attempt to connect to one server may take, at start and on every
/// reconnect: a server that accepts TCP but says nothing (frozen) must not hold the
/// client for longer before it tries the next one.
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pull the server did not end within its expiry plus [`PULL_ANSWER_GRACE`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the NATS server did not answer the pull within {waited:?} (batch wait plus \
     {PULL_ANSWER_GRACE:?}): the server is unresponsive or the consumer's leader changed"
)]
pub struct Unanswered {
    pub waited: Duration,
}

/// Whether `error` says a pull went unanswered.
pub fn is_unanswered(error: &async_nats::Error) -> bool {
    error.downcast_ref::<Unanswered>().is_some()
}

/// One round trip through the server the client is connected to. `true` when the
/// server answered, whatever it said.
pub async fn connection_answers(client: &async_nats::Client) -> bool {
    // Nobody subscribes to this subject, so a live server answers "no responders"
    // at once; no JetStream leader is involved, only the connection.
    let subject = format!("_PONIX.PROBE.{}", client.new_inbox());
    let request = async_nats::Request::new().timeout(Some(PROBE_TIMEOUT));
    // Bounded as a whole: while a server swallows writes, even handing the request to
    // the client's connection task may wait.
    match tokio::time::timeout(PROBE_TIMEOUT, client.send_request(subject, request)).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => !matches!(error.kind(), RequestErrorKind::TimedOut),
        Err(_) => false,
    }
}

/// After an unanswered pull: checks the connection and, if the server does not
/// answer, makes the client reconnect.
pub async fn after_unanswered_pull(client: &async_nats::Client) {
    if connection_answers(client).await {
        tracing::info!(
            "the NATS server answers: the pull was lost with a consumer leader change; \
             re-ensuring the consumer"
        );
        return;
    }
    tracing::warn!(
        probe_timeout = ?PROBE_TIMEOUT,
        "the NATS server this writer is connected to does not answer; reconnecting to \
         another server"
    );
    match tokio::time::timeout(PROBE_TIMEOUT, client.force_reconnect()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "forcing the NATS client to reconnect failed"),
        Err(_) => tracing::warn!("forcing the NATS client to reconnect: no answer from the client"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_pull_is_told_from_other_errors() {
        let unanswered: async_nats::Error = Box::new(Unanswered {
            waited: Duration::from_secs(4),
        });
        assert!(is_unanswered(&unanswered));
        let status: async_nats::Error = Box::new(std::io::Error::other(
            "error while processing messages from the stream: 503, None",
        ));
        assert!(!is_unanswered(&status));
    }
}
