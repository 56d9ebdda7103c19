-- Adds organization_id and makes it the leading sorting key column.
--
-- ClickHouse cannot change a table's primary key in place, so the table is
-- rebuilt: copy into processed_envelopes_new, atomically swap the two tables with
-- EXCHANGE TABLES (Atomic database engine, the default since ClickHouse 20.10),
-- drop the swapped-out copy.
--
-- Re-runnable from any point. ClickHouse has no transactions and goose records a
-- version only after all of its statements succeeded, so a run killed after any
-- statement leaves the ones before it applied and the next `up` starts again from
-- the top. ClickHouse DDL has no conditional form (an EXCHANGE cannot be skipped
-- when it already happened), so instead of detecting how far it got, the file
-- repeats the whole rebuild under a guard that makes every prefix safe:
--
-- * The guard: before anything is copied, organization_id in processed_envelopes
--   is MATERIALIZED. An INSERT may not name a MATERIALIZED column, so a writer that
--   sends organization_id (ponix-writer does) is refused with ILLEGAL_COLUMN, a
--   schema error it retries without using up deliveries, and nothing it sends can
--   land in the table after the copy started. The first statement adds the column
--   that way (existing rows read as ''); the second makes it so when the column is
--   already there, which is the case on a re-run after the swap, when
--   processed_envelopes is the rebuilt table and writers were inserting into it
--   again. Stored values stay as they are: MATERIALIZED only applies to rows that
--   do not have the column.
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
-- * The copy names the same five columns whether or not the swap already
--   happened, so a re-run copies the rebuilt table onto itself with its values.
-- * The rebuilt table is created with a plain organization_id: once it is swapped
--   in, writers insert again.
--
-- Operational note: writers that do not send organization_id (versions before it
-- existed) are not refused; stop them while this runs.

-- The table is named by PONIX_CLICKHOUSE_TABLE (the writer passes its configured
-- name); run by hand without it, the default applies.
-- +goose ENVSUB ON
-- +goose Up
-- +goose StatementBegin
ALTER TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes} ADD COLUMN IF NOT EXISTS organization_id String MATERIALIZED '' FIRST;
-- +goose StatementEnd

-- +goose StatementBegin
ALTER TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes} MODIFY COLUMN organization_id String MATERIALIZED '';
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
    data            JSON
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (organization_id, occurred_at, end_device_id)
SETTINGS index_granularity = 8192;
-- +goose StatementEnd

-- +goose StatementBegin
INSERT INTO ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new (organization_id, end_device_id, occurred_at, processed_at, data)
SELECT organization_id, end_device_id, occurred_at, processed_at, data
FROM ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new AND ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_new;
-- +goose StatementEnd

-- The reverse rebuild, with the same re-run guarantees: the copy names only the
-- four columns both layouts share, and the table is only replaced by EXCHANGE.
-- organization_id is lost, as it must be.

-- +goose Down
-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old
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
INSERT INTO ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old (end_device_id, occurred_at, processed_at, data)
SELECT end_device_id, occurred_at, processed_at, data
FROM ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
EXCHANGE TABLES ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old AND ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd

-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}_old;
-- +goose StatementEnd
