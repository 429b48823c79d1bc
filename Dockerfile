# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on a minimal non-root image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
# The workspace names the dev-only testkit crate: its manifest (and stub sources) must be
# there for the manifest to resolve, though the image never builds it.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/
RUN mkdir -p src benches testkit/src/bin && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/datapath.rs \
    && touch testkit/src/lib.rs && echo 'fn main() {}' > testkit/src/bin/loadgen.rs \
    && (cargo build --release --locked --bin udp-director || true)
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin udp-director

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/udp-director /usr/local/bin/udp-director
COPY config.example.yaml /etc/udp-director/config.yaml
# 65532:65532 is distroless' nonroot user; ports are unprivileged.
USER 65532:65532
EXPOSE 9000/tcp 7777/udp 8080/tcp
ENTRYPOINT ["/usr/local/bin/udp-director"]
CMD ["--config", "/etc/udp-director/config.yaml", "--log-format", "json"]
