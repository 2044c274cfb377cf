# keelson: the control plane (`keelson controlplane --kubernetes`) and the CLI.
# Build from the repository root:
#   docker build -f deploy/images/keelson.Dockerfile -t keelson:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keelson

# No capabilities: it only serves xDS and the CA and talks to the API server.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keelson /usr/local/bin/keelson
USER 65532:65532
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/keelson"]
CMD ["controlplane", "--kubernetes"]
