# Build stage: a release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin durable-streams

# Runtime stage: a small image, non-root, data on a volume.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /data durable && mkdir -p /data && chown durable /data
COPY --from=build /src/target/release/durable-streams /usr/local/bin/durable-streams
USER durable
VOLUME /data
EXPOSE 4437
ENTRYPOINT ["durable-streams"]
CMD ["serve", "--bind", "0.0.0.0:4437", "--data-dir", "/data"]
