# keelson-cni: the CNI plugin binary, its node agent (`keelson-cni agent`) and the install
# step (`keelson-cni install`: copies the plugin into the host's CNI bin dir and chains it
# into the node's conflist; `keelson-cni uninstall` undoes both).
# Build from the repository root:
#   docker build -f deploy/images/keelson-cni.Dockerfile -t keelson-cni:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keelson-cni

# The agent writes each pod's redirection rules with the tools below, inside the pod's
# network namespace, so the image carries them: iptables (legacy and nft back ends),
# nftables, iproute2. It runs as root with NET_ADMIN (rules, routes), SYS_ADMIN (entering
# pod namespaces) and NET_RAW (iptables), as upstream's CNI agent does.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/keelson-cni /usr/local/bin/keelson-cni
ENTRYPOINT ["/usr/local/bin/keelson-cni"]
CMD ["agent"]
