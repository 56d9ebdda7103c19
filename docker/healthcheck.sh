#!/bin/bash
# Container health probe for ponix-writer: GET /healthz on the writer's own HTTP
# endpoint (PONIX_HTTP_ADDR, default 0.0.0.0:8080). It uses bash's /dev/tcp, so the
# runtime image needs neither curl nor wget. Exit 0 on a 200 answer, 1 otherwise.
set -euo pipefail

addr="${PONIX_HTTP_ADDR:-0.0.0.0:8080}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in
    "" | 0.0.0.0 | ::) host=127.0.0.1 ;;
esac

if ! exec 3<>"/dev/tcp/${host}/${port}"; then
    echo "unhealthy: nothing listens on ${host}:${port}" >&2
    exit 1
fi
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
status_line=""
read -r -t 2 status_line <&3 || true
exec 3<&-

case "$status_line" in
    "HTTP/1."?" 200 "*) exit 0 ;;
    *)
        echo "unhealthy: /healthz answered ${status_line:-nothing}" >&2
        exit 1
        ;;
esac
