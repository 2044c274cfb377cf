# waypoint: the L7 proxy of a namespace (a Deployment per waypoint Gateway).
# Build from the repository root:
#   docker build -f deploy/images/waypoint.Dockerfile -t keelson-waypoint:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin waypoint

# No capabilities: it listens on 15008 and dials endpoints' ztunnels like any client.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/waypoint /usr/local/bin/waypoint
USER 65532:65532
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
