//! The writer binary against the real nats-server and the chDB-backed ClickHouse:
//! what it stores is read back and compared field by field, invalid messages are
//! found on the dead-letter stream with their headers (one near `max_payload` too), a
//! ClickHouse outage is survived by holding the batch without spending deliveries,
//! and SIGTERM in the middle of a batch loses nothing.
//!
//! Every test has its own stream, consumer, dead-letter stream and database, so they
//! run in parallel. The tests that stop or freeze ClickHouse start a private one
//! ([`Managed::private_clickhouse`]) and never touch the shared endpoints' processes.
//! Waits are on conditions (`support::wait_for`), never sleeps.
//!
//! One module per concern: the tests by what they prove ([`batches`],
//! [`dead_letters`], [`outages`], [`shutdown`]), and what they share: a test's own
//! names and writer ([`names`]), the envelopes sent ([`envelopes`]), the rows read
//! back ([`rows`]) and `/metrics` ([`metrics`]). The list below names every test; the
//! harness takes each name as written, so the tests are imported, not named by path.
//!
//! [`Managed::private_clickhouse`]: testkit::infra::Managed::private_clickhouse

mod batches;
mod dead_letters;
mod envelopes;
use support::metrics;
mod names;
mod outages;
mod rows;
mod shutdown;
#[path = "../support/mod.rs"]
mod support;
// Shared with the drills, which use every cut; these tests use one.
#[allow(dead_code)]
#[path = "../drills/trap.rs"]
mod trap;

use std::time::Duration;

use batches::{
    a_batch_of_10000_is_stored_field_by_field, a_batch_of_one_is_stored_field_by_field,
    a_batch_waiting_for_an_earlier_one_keeps_its_messages_in_progress,
    concurrent_inserts_store_every_row_once_and_ack_every_message,
};
use dead_letters::{
    a_dead_letter_of_a_message_near_max_payload_lands,
    a_mixed_batch_stores_the_valid_and_dead_letters_the_invalid,
};
use outages::an_outage_holds_the_batch_without_spending_deliveries_and_it_lands_after;
use shutdown::{
    sigterm_during_a_hanging_insert_naks_the_batch_and_loses_nothing,
    sigterm_during_a_slow_insert_finishes_the_batch_and_leaves_nothing_unacked,
};

testkit::integration_tests!(
    a_batch_of_one_is_stored_field_by_field,
    a_batch_of_10000_is_stored_field_by_field,
    concurrent_inserts_store_every_row_once_and_ack_every_message,
    a_batch_waiting_for_an_earlier_one_keeps_its_messages_in_progress,
    a_mixed_batch_stores_the_valid_and_dead_letters_the_invalid,
    an_outage_holds_the_batch_without_spending_deliveries_and_it_lands_after,
    a_dead_letter_of_a_message_near_max_payload_lands,
    sigterm_during_a_hanging_insert_naks_the_batch_and_loses_nothing,
    sigterm_during_a_slow_insert_finishes_the_batch_and_leaves_nothing_unacked,
);

/// Generous bound for anything the writer should finish in a second or two.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// JetStream's default AckWait, which the writer keeps unless configured.
const ACK_WAIT: Duration = Duration::from_secs(30);
