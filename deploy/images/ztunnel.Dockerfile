# ztunnel: the node proxy, one per node (DaemonSet), shared in-pod mode.
# Build from the repository root:
#   docker build -f deploy/images/ztunnel.Dockerfile -t keelson-ztunnel:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ztunnel

# Runs as root with only the capabilities the DaemonSet grants (docs/KUBERNETES.md):
# SYS_ADMIN to enter each pod's network namespace (setns) handed over by the node agent,
# NET_ADMIN for IP_TRANSPARENT and SO_MARK on its sockets, NET_RAW for the transparent
# sockets of the original-source path.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/ztunnel /usr/local/bin/ztunnel
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/ztunnel"]
CMD ["proxy", "ztunnel"]
