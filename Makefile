# udp-director developer targets. `make test` is the README's test command and what CI runs.
CARGO ?= cargo

.PHONY: test test-deps deny demo run lint fmt bench bench-fastpath release loadgen soak guess floods fuzz fuzz-check docker clean

test: test-deps  ## unit, property and loopback end-to-end tests (daemon, client library, testkit); the kernel fast path's (root: CAP_BPF, CAP_NET_ADMIN)
	$(CARGO) fetch --locked  # every platform's crates: the image tests read the whole graph with `cargo metadata --offline`
	$(CARGO) test --locked --workspace --all-targets
	$(CARGO) test --locked --features fast-path --lib --test fast_path_kernel --test fast_path

test-deps:       ## real Helm for the chart tests (PyPI); cbindgen, cc, c++, Mono, Node, Godot 3 for the client tests, chromium for the operator page test; clang and the BPF headers for the fast path, iproute2 and ethtool for its tests (Debian)
	@python3 -c 'import helm_python' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check helm-python-sdk \
	  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages helm-python-sdk
	@for tool in cbindgen cc c++ mcs mono node godot3-server chromium; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    cbindgen gcc g++ libc6-dev mono-mcs mono-runtime nodejs godot3-server chromium; }
	@for tool in clang llvm-objdump ip tc ethtool; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -f /usr/include/bpf/bpf_helpers.h ] && [ -f /usr/include/linux/bpf.h ] || missing=1; \
	  [ -z "$$missing" ] || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    clang llvm libbpf-dev linux-libc-dev iproute2 ethtool; }

deny:            ## cargo-deny: licenses, bans, sources of every crate in Cargo.lock (installs it if missing)
	.ci/deny

demo:            ## the whole client path on one machine, no Kubernetes
	$(CARGO) run --release --example demo

run:             ## the director on the example static config
	$(CARGO) run --release -- --config config.example.yaml

lint:            ## what CI checks besides tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:           ## criterion micro-benchmarks: per-datagram decisions, sealing and opening tokens
	$(CARGO) bench --bench datapath
	$(CARGO) bench --bench tokens

bench-fastpath:  ## as root: direct, forwarder, director without and with the kernel fast path, in network namespaces (Docs/Benchmarks.md)
	bash bench/fastpath/run.sh

release:         ## the director and the load tool, optimised (target/release/{udp-director,loadgen})
	$(CARGO) build --release --locked --bin udp-director -p udp-director
	$(CARGO) build --release --locked --bin loadgen -p udp-director-testkit

LOADGEN = target/release/loadgen

loadgen: release ## through-the-director vs direct, 64 clients x 512 B (see Docs/Benchmarks.md)
	$(LOADGEN) --clients 64 --size 512

soak: release    ## open and reap 1 000 000 sessions in waves; fds and RSS after vs before
	$(LOADGEN) --soak-sessions 1000000 --wave 10000

guess: release   ## 1 000 000 forged tokens: none may create a session
	$(LOADGEN) --guess-tokens 1000000

fuzz-check:      ## the fuzz targets still build (stable toolchain; what CI runs)
	$(CARGO) check --locked --manifest-path fuzz/Cargo.toml

FUZZ_SECONDS ?= 600
fuzz:            ## every fuzz target for FUZZ_SECONDS each (needs nightly + cargo-fuzz; see Docs/Testing.md)
	cd fuzz && for t in datagram query config session; do \
	  mkdir -p /tmp/udp-director-fuzz/$$t && \
	  cargo +nightly fuzz run $$t /tmp/udp-director-fuzz/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

docker:
	docker build -t udp-director:dev .

clean:
	$(CARGO) clean
