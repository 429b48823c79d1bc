# udp-director developer targets. `make test` is the README's test command and what CI runs.
CARGO ?= cargo

.PHONY: test demo run lint fmt bench loadgen docker clean

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

docker:
	docker build -t udp-director:dev .

clean:
	$(CARGO) clean
