# syntax=docker/dockerfile:1
# The udp-director image: compiled with the Rust toolchain and the kernel fast path (cargo
# feature `fast-path`, SPEC §8: clang compiles bpf/ to a BPF object the binary embeds), run
# as distroless' non-root user. The fast path stays off until the config enables it (the
# chart's `fastPath.enabled` also grants the two capabilities it needs).
# Built for linux/amd64 and linux/arm64 by .github/workflows/release.yml on every `v*` tag.
#   docker build -t udp-director:dev .          (make docker)
#   docker run --rm -p 9000:9000 -p 7777:7777/udp -p 8080:8080 udp-director:dev
# tests/packaging.rs replays this file's stub step in a temp dir and loads the workspace from
# it with `cargo metadata --offline`, so the dependency layer cannot silently stop working.

FROM rust:1.95-bookworm AS build
# What build.rs needs for `fast-path`: clang and llvm compile bpf/*.bpf.c for the BPF target,
# libbpf-dev has bpf_helpers.h, linux-libc-dev the kernel's UAPI headers (linux/bpf.h, ...).
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang llvm libbpf-dev linux-libc-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cargo features of the daemon to build in; `--build-arg CARGO_FEATURES=` builds without the
# fast path (then `fastPath.enabled: true` is refused at start).
ARG CARGO_FEATURES="fast-path"
# The git revision for udp_director_build_info{revision} (build.rs; .git is not in the context).
ARG REVISION=""

# Dependencies first, so a source edit does not rebuild them. Cargo needs every workspace
# member's manifest and a file for every target they name (the daemon, its benches, the
# client library and its bench, the C ABI, the testkit and its two tools, and the build
# script) before it resolves anything. The build script compiles the BPF program with the
# feature on, so a stand-in program (a license section, nothing else) keeps the real one out
# of this layer: an edit of bpf/ does not rebuild the dependencies.
COPY Cargo.toml Cargo.lock build.rs ./
COPY client/Cargo.toml client/
COPY capi/Cargo.toml capi/
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src benches client/src client/benches capi/src testkit/src/bin bpf \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/datapath.rs && echo 'fn main() {}' > benches/tokens.rs \
    && touch client/src/lib.rs capi/src/lib.rs testkit/src/lib.rs \
    && echo 'fn main() {}' > client/benches/core.rs \
    && echo 'fn main() {}' > testkit/src/bin/loadgen.rs \
    && echo 'fn main() {}' > testkit/src/bin/tcpbench.rs \
    && echo 'fn main() {}' > testkit/src/bin/nsbench.rs \
    && echo 'char _license[] __attribute__((section("license"), used)) = "GPL";' > bpf/fast_path.bpf.c
RUN cargo build --release --locked --bin udp-director --features "$CARGO_FEATURES"

COPY . .
# COPY keeps the context's timestamps: make sure cargo sees the real sources (and the real
# BPF program, which replaced the stand-in) as newer than the dependency layer's build.
RUN touch src/main.rs src/lib.rs && find bpf -type f -exec touch {} + \
    && UDP_DIRECTOR_REVISION="$REVISION" cargo build --release --locked --bin udp-director --features "$CARGO_FEATURES"

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="udp-director" \
      org.opencontainers.image.description="Kubernetes-native UDP session director for game servers: TCP query, token, proxied UDP session" \
      org.opencontainers.image.source="https://github.com/udp-director/udp-director" \
      org.opencontainers.image.url="https://github.com/udp-director/udp-director" \
      org.opencontainers.image.documentation="https://github.com/udp-director/udp-director/blob/main/Docs/Operations.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="udp-director" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /src/target/release/udp-director /usr/local/bin/udp-director
# Listens on all addresses (config.example.yaml binds 127.0.0.1 for local runs).
COPY docker/config.yaml /etc/udp-director/config.yaml
COPY LICENSE /usr/share/doc/udp-director/LICENSE
# 65532:65532 is distroless' nonroot user; ports are unprivileged.
USER 65532:65532
EXPOSE 9000/tcp 7777/udp 8080/tcp
ENTRYPOINT ["/usr/local/bin/udp-director"]
CMD ["--config", "/etc/udp-director/config.yaml", "--log-format", "json"]
