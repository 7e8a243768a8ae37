# Build stage: the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin durable-streams

# Runtime stage: small image, non-root user, data on a volume.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --no-create-home durable \
 && mkdir -p /data /etc/durable-streams && chown durable /data
COPY --from=build /src/target/release/durable-streams /usr/local/bin/durable-streams
COPY docker/config.toml /etc/durable-streams/config.toml
USER durable
VOLUME /data
EXPOSE 4437
# The server's own probe: slim images have no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["durable-streams", "health", "--url", "http://127.0.0.1:4437/readyz"]
ENTRYPOINT ["durable-streams"]
CMD ["serve", "--config", "/etc/durable-streams/config.toml"]
