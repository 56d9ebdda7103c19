-- Initial schema for processed envelopes (ported from the seed, corrected for
-- ClickHouse 25.3+ and goose).
--
-- * The JSON type is production-ready since ClickHouse 25.3: no
--   `allow_experimental_json_type` setting is needed.
-- * Columns are non-Nullable by default in ClickHouse, so the seed's redundant
--   `NOT NULL` modifiers are dropped.
-- * PRIMARY KEY defaults to ORDER BY; stating only ORDER BY keeps the two from
--   drifting apart.
-- * DateTime('UTC'): values are stored as Unix seconds either way; the explicit
--   zone makes text output independent of the server's timezone.
-- * IF [NOT] EXISTS everywhere: a re-run (or a run against a database where the
--   seed already created the table) is harmless.
--
-- Keep this file's version: deployments that ran the seed's migrations have it
-- recorded in goose_db_version.

-- The table is named by PONIX_CLICKHOUSE_TABLE (the writer passes its configured
-- name); run by hand without it, the default applies.
-- +goose ENVSUB ON
-- +goose Up
-- +goose StatementBegin
CREATE TABLE IF NOT EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}
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

-- +goose Down
-- +goose StatementBegin
DROP TABLE IF EXISTS ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};
-- +goose StatementEnd
