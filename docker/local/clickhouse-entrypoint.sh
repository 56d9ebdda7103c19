#!/bin/bash
# Entrypoint of the ClickHouse stand-in image (docker/local/clickhouse.Dockerfile).
# Like the official image's: CLICKHOUSE_USER (default `default`) with
# CLICKHOUSE_PASSWORD is the one user, and CLICKHOUSE_DB is created before the server
# answers, so a healthy container already has it. The password reaches the server
# through the environment of its process only, never its command line.
set -euo pipefail

data_dir=/var/lib/clickhouse
user="${CLICKHOUSE_USER:-default}"
database="${CLICKHOUSE_DB:-}"

if [ -n "$database" ]; then
    case "$database" in
        *[!A-Za-z0-9_]*)
            echo "CLICKHOUSE_DB=${database} is not a plain identifier (letters, digits, _)" >&2
            exit 1
            ;;
    esac
    # The backticks are SQL identifier quotes inside Python, not shell expansions.
    # shellcheck disable=SC2016
    python3 -c 'import chdb, sys; c = chdb.connect(sys.argv[1]); c.query("CREATE DATABASE IF NOT EXISTS `" + sys.argv[2] + "`"); c.close()' \
        "$data_dir" "$database"
fi

export CHDB_SERVER_PASSWORD="${CLICKHOUSE_PASSWORD:-}"
unset CLICKHOUSE_PASSWORD
exec python3 -m chdb_server --host 0.0.0.0 --port 8123 --data-dir "$data_dir" --user "$user" "$@"
