# Stand-in for the official `nats` image where no registry answers: the pinned
# nats-server that `cargo xtask tools` built, on the local Debian base.
# Built by `cargo xtask docker` as ponix-local/nats:<NATS_SERVER_VERSION>; the build
# context is a directory holding only the nats-server binary.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY nats-server /usr/local/bin/nats-server
# Client, monitoring and cluster ports, as in the official image.
EXPOSE 4222 8222 6222
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["-js", "-m", "8222"]
