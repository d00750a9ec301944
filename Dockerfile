# syntax=docker/dockerfile:1
# Picket's two images, from one build:
#   docker build --target proxy    -t picket/proxy:0.1.0 .
#   docker build --target injector -t picket/injector:0.1.0 .
# The proxy image serves both the init container (`picket-proxy init`, which
# needs the iptables tools, nft and legacy) and the sidecar (`picket-proxy run`).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Only the sources: never the host's target/ directory.
COPY Cargo.toml Cargo.lock ./
COPY api api
COPY control control
COPY policy policy
COPY state state
COPY common common
COPY proxy proxy
COPY injector injector
COPY cli cli
COPY lab lab
COPY tests tests
COPY benches benches
COPY manifests/examples manifests/examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p picket-proxy -p picket-injector -p picket-control \
    && install -D -m 0755 target/release/picket-proxy /out/picket-proxy \
    && install -D -m 0755 target/release/picket-injector /out/picket-injector \
    && install -D -m 0755 target/release/picket-control /out/picket-control

FROM debian:bookworm-slim AS proxy
# Debian's iptables package ships both backends: iptables-nft-restore and
# iptables-legacy-restore (and the ip6tables ones); init picks one at run time.
# iproute2: the policy routing of tproxy interception; libcap2-bin: setcap.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables iproute2 libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/picket-proxy /usr/local/bin/picket-proxy
# Tproxy interception: NET_RAW permitted, not effective. The kernel grants it
# at exec only where the container adds NET_RAW (the injector does, for tproxy
# pods alone) and allows escalation; the proxy keeps it effective in tproxy
# mode and drops every capability otherwise.
RUN setcap cap_net_raw+p /usr/local/bin/picket-proxy
# The sidecar's UID (the injector sets it too); init runs as root by its
# container securityContext, with only NET_ADMIN and NET_RAW.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/picket-proxy"]
CMD ["run"]

FROM debian:bookworm-slim AS injector
COPY --from=build /out/picket-injector /usr/local/bin/picket-injector
COPY --from=build /out/picket-control /usr/local/bin/picket-control
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/picket-injector"]
