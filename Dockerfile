# whatsapp-voice-bridge container image.
# Build: docker build -t whatsapp-voice-bridge .
# Stage 1 compiles the dependencies in a layer of their own (from the manifests and Cargo.lock only),
# so a source change rebuilds just the workspace's crates; stage 2 is a slim runtime with the
# serving binary, run as non-root.
FROM rust:1.95-bookworm AS build
# cmake: the opus crate builds libopus 1.6 from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The workspace's manifests first, with placeholder sources for every target they name, so that
# the dependencies build in a layer of their own.
COPY Cargo.toml Cargo.lock ./
COPY crates/bridge/Cargo.toml crates/bridge/
COPY crates/sim/Cargo.toml crates/sim/
COPY crates/testkit/Cargo.toml crates/testkit/
RUN mkdir -p src tests/bridge crates/bridge/src crates/bridge/benches crates/sim/src crates/testkit/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > tests/bridge/main.rs \
 && echo 'fn main() {}' > crates/bridge/benches/hot_paths.rs \
 && touch crates/bridge/src/lib.rs crates/sim/src/lib.rs crates/testkit/src/lib.rs \
 && cargo build --release --locked -p whatsapp-voice-bridge --no-default-features \
 && rm -rf src crates/bridge/src crates/sim/src crates/testkit/src
# The serving binary only: the core, without the doubles, the demo, the load harness and the
# plotting crate (`--no-default-features` leaves out the `sim` feature).
COPY src ./src
COPY crates ./crates
RUN touch src/main.rs crates/bridge/src/lib.rs \
 && cargo build --release --locked -p whatsapp-voice-bridge --no-default-features \
 && cp target/release/whatsapp-voice-bridge /usr/local/bin/

FROM debian:bookworm-slim
# ca-certificates: TLS to the Graph API, the Realtime API and Supabase.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge \
 && mkdir -p /data \
 && chown bridge /data
COPY --from=build /usr/local/bin/whatsapp-voice-bridge /usr/local/bin/whatsapp-voice-bridge
USER 10001
ENV PORT=8080 \
    LOG_FORMAT=json \
    DATA_DIR=/data
# 8080: webhook, /health, /ready, /metrics (or METRICS_PORT, e.g. 9090).
# Media is WebRTC over UDP: one port per call from WEBRTC_UDP_PORTS (e.g. 40000-40999) when set,
# else ephemeral ports. The bridge dials out to Meta's relays, so outbound UDP is what it needs;
# no inbound UDP mapping is required.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/whatsapp-voice-bridge", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/whatsapp-voice-bridge"]
CMD ["serve"]
