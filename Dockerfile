# Multi-stage build: compile in the Rust image, run in a slim Debian as a
# non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin intake

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/intake --create-home intake
COPY --from=build /src/target/release/intake /usr/local/bin/intake
USER intake
WORKDIR /var/lib/intake
ENV BIND_ADDR=0.0.0.0:8080 \
    STORAGE_BACKEND=fs \
    FS_ROOT=/var/lib/intake/objects
EXPOSE 8080
ENTRYPOINT ["intake"]
CMD ["serve"]
