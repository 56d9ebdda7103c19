//! One pull request, read by the writer itself rather than through async-nats'
//! `Batch` stream, because of what a JetStream cluster sends back.
//!
//! On a clustered consumer the server may end a pull with the status `409 Batch
//! Completed` and then still deliver messages for that same request on its inbox (seen
//! in the `nats-failover` drill, most after a node restarted). async-nats' `Batch`
//! stops at the first status and drops its subscription, so those messages went to an
//! inbox nobody read: each waited out AckWait before it was redelivered, possibly into
//! the same trap again, and a drain that takes a second took a minute. Here:
//!
//! * messages count until the batch is full;
//! * `408 Request Timeout` and `404 No Messages` end the pull at once (nothing follows
//!   them);
//! * `409 Batch Completed` and `409 Leadership Change` end it after a short linger
//!   ([`LINGER`]), which keeps what follows on the inbox;
//! * idle heartbeats are skipped; any other status ends the pull as an error, as it did
//!   with `Batch` (the consumer loop backs off and re-ensures);
//! * the whole pull is bounded by the caller's deadline (see [`super::watchdog`]):
//!   a pull the server does not end by then is [`Unanswered`].

use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self};
use futures::StreamExt as _;
use tokio::time::Instant;

use super::watchdog::Unanswered;

/// How long a pull ended by a 409 keeps reading its inbox for messages that follow.
pub const LINGER: Duration = Duration::from_millis(100);

/// What one pull asks for.
pub struct Request {
    pub max_messages: usize,
    /// 0: no byte limit.
    pub max_bytes: usize,
    pub expires: Duration,
    /// The pull is [`Unanswered`] if the server has not ended it by then.
    pub deadline: Instant,
}

/// The messages of one pull, and the error that ended it early if any.
pub type Pulled = (Vec<jetstream::Message>, Option<async_nats::Error>);

/// Sends one pull request for `consumer` and reads its answer (see the module docs).
pub async fn pull(
    js: &jetstream::Context,
    consumer: &PullConsumer,
    request: Request,
) -> Result<Pulled, async_nats::Error> {
    let started = Instant::now();
    let unanswered = || -> async_nats::Error {
        Box::new(Unanswered {
            waited: started.elapsed(),
        })
    };
    let client = js.client();
    let inbox = client.new_inbox();
    let send = async {
        let subscriber = client.subscribe(inbox.clone()).await?;
        let config = BatchConfig {
            batch: request.max_messages,
            max_bytes: request.max_bytes,
            expires: Some(request.expires),
            ..Default::default()
        };
        consumer.request_batch(config, inbox.clone().into()).await?;
        Ok::<_, async_nats::Error>(subscriber)
    };
    let mut subscriber = match tokio::time::timeout_at(request.deadline, send).await {
        Ok(subscriber) => subscriber?,
        Err(_) => return Err(unanswered()),
    };
    let mut messages = Vec::new();
    let mut ended_by = None;
    let mut end = request.deadline;
    let mut lingering = false;
    tracing::trace!(%inbox, max_messages = request.max_messages, "pull sent");
    let mut how = "full";
    while messages.len() < request.max_messages {
        let message = match tokio::time::timeout_at(end, subscriber.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                how = "subscription closed";
                break;
            }
            Err(_) if lingering => {
                how = "linger over";
                break;
            }
            Err(_) => {
                how = "unanswered";
                ended_by = Some(unanswered());
                break;
            }
        };
        match message.status {
            None | Some(StatusCode::OK) => messages.push(jetstream::Message {
                message,
                context: js.clone(),
            }),
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(status @ (StatusCode::TIMEOUT | StatusCode::NOT_FOUND)) => {
                tracing::trace!(%inbox, %status, "pull ended by the server");
                how = "status";
                break;
            }
            Some(status) if is_pull_end(status, message.description.as_deref()) => {
                if !lingering {
                    lingering = true;
                    end = end.min(Instant::now() + LINGER);
                }
            }
            Some(status) => {
                ended_by = Some(Box::new(std::io::Error::other(format!(
                    "error while processing messages from the stream: {status}, {:?}",
                    message.description
                ))) as async_nats::Error);
                break;
            }
        }
    }
    // Dropping the subscriber unsubscribes the inbox.
    drop(subscriber);
    tracing::trace!(%inbox, messages = messages.len(), how, elapsed = ?started.elapsed(), "pull ended");
    Ok((messages, ended_by))
}

/// The 409s that only say the request is over (see the module docs).
fn is_pull_end(status: StatusCode, description: Option<&str>) -> bool {
    status == StatusCode::REQUEST_TERMINATED
        && matches!(
            description.map(str::trim),
            Some("Batch Completed" | "Leadership Change")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_409s_that_end_a_request_are_ends() {
        let ends = |d| is_pull_end(StatusCode::REQUEST_TERMINATED, Some(d));
        assert!(ends("Batch Completed"));
        assert!(ends("Leadership Change"));
        assert!(!ends("Consumer Deleted"));
        assert!(!ends("Message Size Exceeds MaxBytes"));
        assert!(!is_pull_end(StatusCode::REQUEST_TERMINATED, None));
        assert!(!is_pull_end(
            StatusCode::NO_RESPONDERS,
            Some("Batch Completed")
        ));
    }
}
