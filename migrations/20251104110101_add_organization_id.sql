-- Adds organization_id and makes it the leading sorting key column.
--
-- ClickHouse cannot change a table's primary key in place, so the table is
-- rebuilt: copy into processed_envelopes_new, atomically swap the two tables with
-- EXCHANGE TABLES (Atomic database engine, the default since ClickHouse 20.10),
-- drop the swapped-out copy.
--
-- ClickHouse has no transactions and goose records a version only after all of
-- its statements succeeded, so a failed run leaves some statements applied and
-- the next run starts again from the top. Every statement below is written so
-- that re-running the whole file from ANY intermediate state is correct and
-- never loses rows:
--
-- * The original table is never dropped: it is only ever replaced by EXCHANGE,
--   which is atomic. So processed_envelopes always holds all the rows, and
--   processed_envelopes_new is always disposable when the file starts.
-- * organization_id is first added to the source table (IF NOT EXISTS; a cheap
--   metadata-only change, existing rows read as ''). The copy can then name the
--   same five columns whether the source still has the old layout or the swap
--   already happened, so a re-run after the swap copies the migrated table onto
--   itself instead of blanking organization_id.
--
-- Operational note: stop every other writer of processed_envelopes while this
-- runs (ponix-writer itself migrates before it consumes anything); rows written
-- between the copy and the swap would end up in the dropped table.

-- +goose Up
-- +goose StatementBegin
ALTER TABLE processed_envelopes ADD COLUMN IF NOT EXISTS organization_id String FIRST;
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
    data            JSON
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (organization_id, occurred_at, end_device_id)
SETTINGS index_granularity = 8192;
-- +goose StatementEnd

-- +goose StatementBegin
INSERT INTO processed_envelopes_new (organization_id, end_device_id, occurred_at, processed_at, data)
SELECT organization_id, end_device_id, occurred_at, processed_at, data
FROM processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES processed_envelopes_new AND processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_new;
-- +goose StatementEnd

-- The reverse rebuild, with the same re-run guarantees: the copy names only the
-- four columns both layouts share, and the table is only replaced by EXCHANGE.
-- organization_id is lost, as it must be.

-- +goose Down
-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_old;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE processed_envelopes_old
(
    end_device_id String,
    occurred_at   DateTime('UTC'),
    processed_at  DateTime('UTC'),
    data          JSON
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (occurred_at, end_device_id)
SETTINGS index_granularity = 8192;
-- +goose StatementEnd

-- +goose StatementBegin
INSERT INTO processed_envelopes_old (end_device_id, occurred_at, processed_at, data)
SELECT end_device_id, occurred_at, processed_at, data
FROM processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES processed_envelopes_old AND processed_envelopes;
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS processed_envelopes_old;
-- +goose StatementEnd
