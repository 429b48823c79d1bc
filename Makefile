# udp-director developer targets. `make test` is the README's test command and what CI runs.
CARGO ?= cargo

.PHONY: test demo run lint fmt bench loadgen soak guess fuzz docker clean

test:            ## unit, property and loopback end-to-end tests
	$(CARGO) test --locked --all-targets

demo:            ## the whole client path on one machine, no Kubernetes
	$(CARGO) run --release --example demo

run:             ## the director on the example static config
	$(CARGO) run --release -- --config config.example.yaml

lint:            ## what CI checks besides tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:           ## criterion micro-benchmarks of the per-datagram decisions
	$(CARGO) bench --bench datapath

loadgen:         ## through-the-director vs direct, 64 clients x 512 B (see Docs/Benchmarks.md)
	$(CARGO) run --release -- loadgen --clients 64 --size 512

soak:            ## open and reap 1 000 000 sessions in waves; fds and RSS after vs before
	$(CARGO) run --release -- loadgen --soak-sessions 1000000 --wave 10000

guess:           ## 1 000 000 forged tokens: none may create a session
	$(CARGO) run --release -- loadgen --guess-tokens 1000000

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
