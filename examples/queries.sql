-- Queries for the table ponix-writer fills (default name processed_envelopes; replace
-- it with your PONIX_CLICKHOUSE_TABLE). The table is a ReplacingMergeTree keyed by
-- stream_sequence: a message delivered twice (a redelivery after a crash or a
-- timeout) is stored twice until a background merge keeps one copy. FINAL merges at
-- read time, so every count below is one per message. The `examples` test runs each
-- statement here against a migrated table; keep one statement per `;`.

-- Messages per organization and hour, for the last day.
SELECT
    organization_id,
    toStartOfHour(occurred_at) AS hour,
    count() AS messages
FROM processed_envelopes FINAL
WHERE occurred_at >= now() - INTERVAL 1 DAY
GROUP BY organization_id, hour
ORDER BY organization_id, hour;

-- The newest row of each device, with its payload.
SELECT
    organization_id,
    end_device_id,
    argMax(occurred_at, occurred_at) AS last_seen,
    argMax(data, occurred_at) AS last_data
FROM processed_envelopes FINAL
GROUP BY organization_id, end_device_id
ORDER BY last_seen DESC
LIMIT 100;

-- One JSON path as a typed column: rows whose payload has a numeric `temperature`.
SELECT
    end_device_id,
    occurred_at,
    data.temperature.:Float64 AS temperature
FROM processed_envelopes FINAL
WHERE temperature IS NOT NULL
ORDER BY occurred_at DESC
LIMIT 100;

-- Delay from processing upstream to the event time, per organization (p50, p99).
SELECT
    organization_id,
    quantiles(0.5, 0.99)(dateDiff('second', occurred_at, processed_at)) AS delay_p50_p99
FROM processed_envelopes FINAL
GROUP BY organization_id
ORDER BY organization_id;

-- Copies waiting for a merge (redeliveries stored twice). Without FINAL on purpose:
-- this counts what FINAL hides. Non-zero is normal after a crash or an outage.
SELECT count() - uniqExact(stream_sequence) AS copies_not_yet_merged
FROM processed_envelopes;

-- Rows that predate stream_sequence (stored before the migration that added it got
-- a stand-in from the top of the UInt64 range, counting down).
SELECT count() AS rows_from_before_stream_sequence
FROM processed_envelopes FINAL
WHERE stream_sequence >= 9223372036854775808;

-- The highest stream sequence stored: where a recreated stream must start.
SELECT max(stream_sequence) AS highest_stream_sequence
FROM processed_envelopes FINAL
WHERE stream_sequence < 9223372036854775808;

-- The schema migrations applied, newest first.
SELECT version_id, is_applied, tstamp
FROM goose_db_version
ORDER BY tstamp DESC, version_id DESC;
