# Multi-stage build: dependencies are compiled in a layer of their own so source edits rebuild
# only the crate. The runtime image holds the binary and CA certificates, and runs as non-root.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home bridge
COPY --from=build /src/target/release/whatsapp-voice-bridge /usr/local/bin/whatsapp-voice-bridge
USER 10001
ENV PORT=8080 LOG_FORMAT=json
# HTTP: webhook, /health, /metrics. Media: UDP, one port per call from WEBRTC_UDP_PORTS
# (e.g. 40000-40999) when set, otherwise ephemeral ports; the bridge dials out to Meta's relays.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:${PORT}/health || exit 1
ENTRYPOINT ["/usr/local/bin/whatsapp-voice-bridge"]
CMD ["serve"]
