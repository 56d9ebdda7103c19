-- Makes re-inserted rows idempotent: every row carries the JetStream stream
-- sequence of the message it came from, and the table becomes a
-- ReplacingMergeTree whose sorting key ends with that sequence.
--
-- The writer acknowledges a message only after its INSERT committed, so a crash
-- (or a lost ack, or an INSERT that timed out on the client but committed on the
-- server) between the commit and the ack makes JetStream deliver the message
-- again, possibly in a batch of a different composition. Its row is then
-- inserted a second time, identical to the first and with the same sorting key
-- (organization_id, occurred_at, end_device_id, stream_sequence). Merges keep
-- one row per sorting key, and queries with FINAL (or SETTINGS final = 1) see
-- one row per message before the merge happened. Distinct messages always
-- differ in stream_sequence, so they are never merged into one another.
-- (insert_deduplication_token was the alternative; it only recognises a batch
-- redelivered with exactly the same messages. See the README, "Guarantees".)
--
-- Rows written before this migration have no sequence. They get distinct
-- stand-in values counted down from the top of the UInt64 range, far above any
-- sequence a stream will reach, so that two legitimately different old rows
-- with the same organization, device and second are never merged.
--
-- The rebuild follows the previous migration's pattern (copy, EXCHANGE, drop)
-- and is safe to re-run from any intermediate state: the column is first added
-- to the source (IF NOT EXISTS, reads as 0 for old rows), so the copy names the
-- same six columns whether or not the swap already happened, and rows that
-- already have a sequence (or a stand-in) keep it.
--
-- The source gets it as a MATERIALIZED column, which an INSERT may not name: a
-- ponix-writer still running while this migrates (it sends stream_sequence) is
-- refused with ILLEGAL_COLUMN, a schema error it NAKs and retries, until the
-- EXCHANGE puts the new table in place. With a plain column its INSERTs would
-- succeed, and the rows committed between the copy and the swap would be dropped
-- with the old table after their messages were acked (the schema-drift drill saw
-- it; migrations.rs replays this file statement by statement to prove it cannot
-- happen). After the swap the column is a plain one, and IF NOT EXISTS leaves it so.
--
-- Operational note: writers that do not send stream_sequence (older versions)
-- are not refused; stop them while this runs.

-- +goose Up
-- +goose StatementBegin
ALTER TABLE processed_envelopes ADD COLUMN IF NOT EXISTS stream_sequence UInt64 MATERIALIZED 0;
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_new;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE processed_envelopes_new
(
    organization_id String,
    end_device_id   String,
    occurred_at     DateTime('UTC'),
    processed_at    DateTime('UTC'),
    data            JSON,
    stream_sequence UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (organization_id, occurred_at, end_device_id, stream_sequence)
SETTINGS index_granularity = 8192;
-- +goose StatementEnd

-- +goose StatementBegin
INSERT INTO processed_envelopes_new (organization_id, end_device_id, occurred_at, processed_at, data, stream_sequence)
SELECT
    organization_id, end_device_id, occurred_at, processed_at, data,
    if(stream_sequence = 0, 18446744073709551615 - rowNumberInAllBlocks(), stream_sequence)
FROM processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES processed_envelopes_new AND processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_new;
-- +goose StatementEnd

-- The reverse rebuild, with the same re-run guarantees. The copy reads with
-- `final = 1` (FINAL where the table supports it, a no-op once the swap made it a
-- plain MergeTree again), so re-inserted duplicates that were not merged yet do
-- not come back as rows. stream_sequence is lost, as it must be. Stop
-- ponix-writer first: nothing refuses its INSERTs here, and those committed
-- between the copy and the swap would be dropped.

-- +goose Down
-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_old;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE processed_envelopes_old
(
    organization_id String,
    end_device_id   String,
    occurred_at     DateTime('UTC'),
    processed_at    DateTime('UTC'),
    data            JSON
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (organization_id, occurred_at, end_device_id)
SETTINGS index_granularity = 8192;
-- +goose StatementEnd

-- +goose StatementBegin
INSERT INTO processed_envelopes_old (organization_id, end_device_id, occurred_at, processed_at, data)
SELECT organization_id, end_device_id, occurred_at, processed_at, data
FROM processed_envelopes
SETTINGS final = 1;
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES processed_envelopes_old AND processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_old;
-- +goose StatementEnd
