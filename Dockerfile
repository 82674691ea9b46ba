# syntax=docker/dockerfile:1
# sp-broker: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t sp-broker .
#   docker run -p 8080:8080 -e DATABASE_URL=postgres://… sp-broker
# (docker compose up starts it with a PostgreSQL beside it: see docker-compose.yml.)

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY templates ./templates
# Migrations and templates are compiled into the binary. The cache mounts keep
# downloaded crates and build outputs between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/sp-broker /usr/local/bin/sp-broker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/sp-broker --create-home sp-broker
COPY --from=builder /usr/local/bin/sp-broker /usr/local/bin/sp-broker
# The working directory is where sandbox mode keeps its development key
# (.sp-broker/dev-keys) when SP_BROKER_ENCRYPTION_KEYS is unset: mount a volume
# here to keep it across containers.
WORKDIR /var/lib/sp-broker
USER sp-broker
ENV SP_BROKER_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["sp-broker"]
CMD ["serve"]
