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
-- and, like it, is re-runnable from any point: a run killed after any statement,
-- with writers inserting throughout, loses no row when `up` runs again. Rather
-- than detect how far a killed run got (ClickHouse DDL has no conditional form,
-- and an EXCHANGE that already happened cannot be skipped), the file repeats the
-- whole rebuild under a guard that makes every prefix safe:
--
-- * The guard: before anything is copied, stream_sequence in processed_envelopes
--   is MATERIALIZED. An INSERT may not name a MATERIALIZED column, so a running
--   ponix-writer (it sends stream_sequence) is refused with ILLEGAL_COLUMN, a
--   schema error it NAKs and retries, until the EXCHANGE puts the rebuilt table in
--   place. Without it, rows committed between the copy and the swap would be
--   dropped with the old table after their messages were acked (the schema-drift
--   drill saw it with a plain column).
--   The first statement adds the column that way (old rows read as 0); the second
--   makes it so when the column is already there: on a re-run after the swap,
--   processed_envelopes is the rebuilt table, writers have been inserting into it,
--   and without the guard the rows they commit during the re-run's copy would be
--   dropped with it. Stored values stay as they are: MATERIALIZED only applies to
--   rows that do not have the column.
-- * Then KILL QUERY ... SYNC waits for (or cancels) the INSERTs into the table that
--   began before the guard, which were checked against the old columns and could
--   otherwise commit after the copy read the table. A cancelled INSERT fails with
--   QUERY_WAS_CANCELLED, which the writer retries. The migrating user must be
--   allowed to kill the writer's queries: it is the same user unless
--   PONIX_CLICKHOUSE_GOOSE_DSN names another.
-- * processed_envelopes is never dropped, only replaced by EXCHANGE, which is
--   atomic. So it always holds every row, and processed_envelopes_new, whenever
--   the file drops it, is either an unfinished copy or the swapped-out table,
--   which refused every insert from the moment its rows were copied.
-- * The copy names the same six columns whether or not the swap already
--   happened, and rows that already have a sequence (or a stand-in) keep it, so a
--   re-run copies the rebuilt table onto itself unchanged.
-- * The rebuilt table is created with a plain stream_sequence: once it is swapped
--   in, writers insert again.
--
-- Operational note: writers that do not send stream_sequence (older versions)
-- are not refused; stop them while this runs. ponix-writer takes a lease before
-- it runs goose, so replicas starting together migrate one at a time.

-- The table is named by PONIX_CLICKHOUSE_TABLE (the writer passes its configured
-- name); run by hand without it, the default applies.
-- +goose ENVSUB ON
-- +goose Up
-- +goose StatementBegin
ALTER TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes} ADD COLUMN IF NOT EXISTS stream_sequence UInt64 MATERIALIZED 0;
-- +goose StatementEnd

-- +goose StatementBegin
ALTER TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes} MODIFY COLUMN stream_sequence UInt64 MATERIALIZED 0;
-- +goose StatementEnd

-- An INSERT that began before the guard was checked against the old columns and
-- may still be running: it would commit after the copy read the table. Wait for it
-- (or cancel it; the writer retries a cancelled INSERT) before copying.
-- +goose StatementBegin
KILL QUERY WHERE query_kind = 'Insert' AND current_database = currentDatabase()
    AND match(lower(query), lower('\\b${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}\\b')) SYNC;
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new
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
INSERT INTO ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new (organization_id, end_device_id, occurred_at, processed_at, data, stream_sequence)
SELECT
    organization_id, end_device_id, occurred_at, processed_at, data,
    if(stream_sequence = 0, 18446744073709551615 - rowNumberInAllBlocks(), stream_sequence)
FROM ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new AND ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new;
-- +goose StatementEnd

-- The reverse rebuild, with the same re-run guarantees. The copy reads with
-- `final = 1` (FINAL where the table supports it, a no-op once the swap made it a
-- plain MergeTree again), so re-inserted duplicates that were not merged yet do
-- not come back as rows. stream_sequence is lost, as it must be. Stop
-- ponix-writer first: nothing refuses its INSERTs here, and those committed
-- between the copy and the swap would be dropped.

-- +goose Down
-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old
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
INSERT INTO ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old (organization_id, end_device_id, occurred_at, processed_at, data)
SELECT organization_id, end_device_id, occurred_at, processed_at, data
FROM ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}
SETTINGS final = 1;
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old AND ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old;
-- +goose StatementEnd
