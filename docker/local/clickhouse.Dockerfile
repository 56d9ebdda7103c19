# Stand-in for clickhouse/clickhouse-server where no registry answers: the chDB HTTP
# endpoint (xtask/chdb_server, the ClickHouse engine in-process) on port 8123, on the
# local Debian base. It honours CLICKHOUSE_DB, CLICKHOUSE_USER and CLICKHOUSE_PASSWORD
# the way the official image does. Built by `cargo xtask docker` as
# ponix-local/clickhouse:chdb-<chdb-core version>; the build context holds the wheels
# downloaded on the host (containers cannot reach PyPI here), the chdb_server package
# and the entrypoint.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "errexit", "-o", "nounset", "-o", "pipefail", "-c"]
# Python 3.11 from Debian: the wheels were downloaded for the host's CPython 3.11.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/chdb \
    && /opt/chdb/bin/pip install --no-index --find-links /tmp/wheels --requirement /tmp/wheels/requirements.txt \
    && rm -rf /tmp/wheels /root/.cache
COPY chdb_server/ /opt/chdb-server/chdb_server/
COPY --chmod=0755 entrypoint.sh /usr/local/bin/clickhouse-stand-in
ENV PYTHONPATH=/opt/chdb-server PATH=/opt/chdb/bin:${PATH}
VOLUME /var/lib/clickhouse
EXPOSE 8123
HEALTHCHECK --interval=2s --timeout=3s --start-period=30s --retries=30 \
    CMD ["wget", "--quiet", "--tries=1", "--timeout=2", "--spider", "http://127.0.0.1:8123/ping"]
ENTRYPOINT ["/usr/local/bin/clickhouse-stand-in"]
